"""A store's manifest of shards: which paths hold which content. The one place that knows
where the manifest lives in the store's attributes (`manifest_entries`,
`with_manifest_entries`), and what an ingest makes of it (`plan_ingest`).

An entry is either a shard an ingest read (counted, or skipped as binary or empty)::

    {"path", "sha256", "bytes", "tokens", "documents", ..., "skipped"}

or an *alias*: a path whose bytes are those of a shard already counted (content is counted
once), recorded so that a later change to that path is seen as a change::

    {"path", "sha256", "alias_of": PATH}

A path may have several entries (its content changed and was added with
``--allow-changed``); the last one is the path's current content. Stores written before
aliases existed have none and read the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from .history import with_event
from .layout import StoreError, utc_now
from .locking import StoreLock

logger = logging.getLogger(__name__)

#: The attribute holding the manifest (a list of entries, oldest first).
MANIFEST_KEY = "shards"


def manifest_entries(meta: dict) -> list[dict]:
    """Every manifest entry of a store's attributes, oldest first (aliases included)."""
    return list(meta.get(MANIFEST_KEY, []))


def with_manifest_entries(meta: dict, added: list[dict]) -> dict:
    """A copy of ``meta`` whose manifest ends with the entries ``added``."""
    return {**meta, MANIFEST_KEY: manifest_entries(meta) + list(added)}


def alias_entry(path: str, sha256: str, alias_of: str) -> dict:
    """The manifest entry of ``path``, whose bytes are those of the counted ``alias_of``."""
    return {"path": path, "sha256": sha256, "alias_of": alias_of}


def is_alias(entry: dict) -> bool:
    """Whether a manifest entry is an alias (its content was counted under another path)."""
    return entry.get("alias_of") is not None


class IngestPlan(NamedTuple):
    """What stage 2 decides (`plan_ingest`)."""

    to_count: list  # paths to read and count
    already: list  # {"path", "sha256", "same_as"}: content already counted
    changed: list  # {"path", "old_sha256", "sha256"}: a known path with other bytes now
    aliases: list  # manifest entries of new paths whose content is already counted


def plan_ingest(paths: Sequence[str], digests: Sequence[str], manifest: list[dict],
                allow_changed: bool = False) -> IngestPlan:
    """Decide which shards to count (an `IngestPlan`).

    A path whose bytes (SHA-256) are those it had in the manifest is skipped. A path in the
    manifest with other bytes is "changed": refused unless ``allow_changed``, then added
    as new content (the old content's counts stay). New content already counted under
    another path (in the manifest or earlier in this run) is not counted again: the path
    is recorded as an alias of that shard, so a later change to it is seen.
    """
    known = {}  # sha256 -> the path its content was counted under
    for entry in manifest:
        if entry.get("sha256"):
            known.setdefault(entry["sha256"], entry.get("alias_of") or entry["path"])
    by_path = {entry["path"]: entry.get("sha256") for entry in manifest}
    plan = IngestPlan([], [], [], [])
    for path, digest in zip(paths, digests):
        if path in by_path and by_path[path] == digest:
            plan.already.append({"path": path, "sha256": digest,
                                 "same_as": known.get(digest, path)})
            continue
        if path in by_path:
            plan.changed.append({"path": path, "old_sha256": by_path[path], "sha256": digest})
            if not allow_changed:
                continue
        by_path[path] = digest
        if digest in known:
            plan.already.append({"path": path, "sha256": digest, "same_as": known[digest]})
            plan.aliases.append(alias_entry(path, digest, known[digest]))
            continue
        known[digest] = path
        plan.to_count.append(path)
    return plan


def record_aliases(store, aliases: list[dict], lock: StoreLock | None) -> None:
    """Add alias entries to the manifest of ``store`` (a `ModelStore`, not a snapshot) in one
    attribute write, with an ``aliased`` history event; the counts are not touched.

    Raises
    ------
    StoreError
        Without the store's held writer lock ``lock``; nothing is changed.
    """
    if not isinstance(lock, StoreLock) or not lock.covers(store.url, store.storage_options):
        raise StoreError(f"refusing to write the manifest of {store.url} without holding its "
                         "writer lock: take `StoreLock(store)` first")
    event = {"event": "aliased", "time": utc_now(),
             "shards": [{key: entry[key] for key in ("path", "sha256", "alias_of")}
                        for entry in aliases]}
    store.commit_attributes(with_event(with_manifest_entries(store.meta, aliases), event))
    logger.info("recorded %d path(s) with the content of shards already counted in %s",
                len(aliases), store.url)
