"""Listing a corpus folder or glob safely: loop-free walks, and streamsolve's own files left out.

`walk_files` lists the entries under a directory (hidden names skipped). It follows a
directory symlink at most once per real directory, so a symlink loop ends at once (it is
reported, not walked ~40 levels deep), and it reports a directory it cannot read instead of
passing over it in silence. `glob_files` expands a local glob the same way when it has a
``**`` (a plain glob never recurses). Both leave out streamsolve's own files (`own_file`,
`own_directory`): a store (recognised by the format marker in its ``zarr.json``, whatever
its name, so also the temporary store ``solve --overwrite`` builds beside its store), a
store's lock file (``STORE.lock``), a spill directory, and the store being written with its
lock (``exclude``). Everything left out goes to ``skipped`` as ``{"path", "skipped": reason}``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Iterable

logger = logging.getLogger(__name__)

#: The format marker of a streamsolve store's ``zarr.json`` (``streamsolve.store.layout.FORMAT``;
#: ``text/`` may not import ``store/``, a test pins the two equal).
STORE_FORMAT = "streamsolve"
#: Name prefix of spill directories (``streamsolve.engine.spill.SPILL_PREFIX``, pinned alike).
SPILL_PREFIX = "streamsolve-spill-"
#: A store's writer lock is ``STORE`` + this (``streamsolve.store.locking.lock_url``).
LOCK_SUFFIX = ".lock"
#: Keys of the record a writer leaves in a store's lock file (`streamsolve.store.locking`).
LOCK_RECORD_KEYS = frozenset({"host", "pid", "token"})
_LOCK_RECORD_MAX_BYTES = 1 << 16


def is_store_metadata(data: bytes) -> bool:
    """Whether ``data`` (a ``zarr.json``) is the metadata of a streamsolve store."""
    try:
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    attributes = meta.get("attributes") if isinstance(meta, dict) else None
    return isinstance(attributes, dict) and attributes.get("format") == STORE_FORMAT


def is_lock_record(data: bytes) -> bool:
    """Whether ``data`` is what a streamsolve writer leaves in a store's lock file."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and LOCK_RECORD_KEYS <= set(record)


def is_store_directory(path: str) -> bool:
    """Whether the local directory ``path`` is a streamsolve store (its ``zarr.json`` says so)."""
    try:
        with open(os.path.join(path, "zarr.json"), "rb") as handle:
            return is_store_metadata(handle.read())
    except OSError:
        return False


def own_directory(path: str, exclude: frozenset[str] = frozenset()) -> str | None:
    """Why the local directory ``path`` is streamsolve's own (not corpus), or None.

    ``exclude`` holds the real paths of stores being written (they may not exist yet).
    """
    if os.path.realpath(path) in exclude:
        return "the store being written"
    if os.path.basename(path).startswith(SPILL_PREFIX):
        return "a streamsolve spill directory"
    if is_store_directory(path):
        return "a streamsolve store"
    return None


def own_file(path: str, exclude: frozenset[str] = frozenset()) -> str | None:
    """Why the local file ``path`` is streamsolve's own (a store's lock file), or None."""
    if not path.endswith(LOCK_SUFFIX):
        return None
    store = os.path.realpath(path)[:-len(LOCK_SUFFIX)]
    if store in exclude:
        return "the lock of the store being written"
    if is_store_directory(store):
        return "the lock of a streamsolve store"
    try:
        if os.path.getsize(path) > _LOCK_RECORD_MAX_BYTES:
            return None
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None  # reported when it is read as a shard
    return "a streamsolve lock file" if not data.strip() or is_lock_record(data) else None


def _skip(skipped: list[dict], path: str, reason: str) -> None:
    logger.warning("skipping %s: %s", path, reason)
    skipped.append({"path": path, "skipped": reason})


def _is_directory(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _revisit_reason(directory: str, real: str, walked: dict[str, str]) -> str:
    """Why a directory whose real path was already walked is not walked again."""
    parent = os.path.realpath(os.path.dirname(directory))
    if parent == real or parent.startswith(real.rstrip(os.sep) + os.sep):
        return f"symlink loop (a link to {walked[real]}, which contains it)"
    return f"already listed as {walked[real]} (a symlink to the same directory)"


def _list_directory(directory: str, skipped: list[dict]) -> list[os.DirEntry] | None:
    try:
        with os.scandir(directory) as entries:
            return sorted((e for e in entries if not e.name.startswith(".")),
                          key=lambda e: e.name)
    except OSError as exc:
        _skip(skipped, directory, f"unreadable directory ({exc.strerror or exc})")
        return None


def walk_files(root: str, skipped: list[dict], exclude: frozenset[str] = frozenset()) -> list[str]:
    """Every entry under the local directory ``root`` that is not a directory (a regular file,
    FIFO, dangling symlink, ...), hidden names skipped, in walking order.

    Directory symlinks are followed at most once per real directory, after the directories
    that are not symlinks (so a directory is listed under its own name when the walk meets
    it); streamsolve's own directories and files (`own_directory`, `own_file`; ``exclude``:
    real paths of stores being written), unreadable directories and symlink loops go to
    ``skipped``.
    """
    found: list[str] = []
    walked: dict[str, str] = {}  # real path -> the path it was listed as
    stack, links = [root], []
    while stack or links:
        directory = stack.pop() if stack else links.pop(0)
        real = os.path.realpath(directory)
        if real in walked:
            _skip(skipped, directory, _revisit_reason(directory, real, walked))
            continue
        reason = own_directory(directory, exclude)
        if reason is not None:
            _skip(skipped, directory, reason)
            continue
        walked[real] = directory
        subdirectories = []
        for entry in _list_directory(directory, skipped) or ():
            if _is_directory(entry):
                (links if entry.is_symlink() else subdirectories).append(entry.path)
            elif (reason := own_file(entry.path, exclude)) is not None:
                _skip(skipped, entry.path, reason)
            else:
                found.append(entry.path)
        stack.extend(reversed(subdirectories))
    return found


def _component_regex(part: str) -> str:
    """A regular expression for one glob path component (``*`` and ``?`` stay in it)."""
    out, i = [], 0
    while i < len(part):
        char = part[i]
        i += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := part.find("]", i + (part[i:i + 1] in ("!", "]")))) > 0:
            body = part[i:end].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(char))
    return "".join(out)


def glob_regex(parts: list[str]) -> re.Pattern:
    """A regular expression for a path (``/``-separated) below a glob's fixed root: ``**``
    is any number of directories, ``*`` and ``?`` stay in one component."""
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append("(?:[^/]+/)*" + ("[^/]+" if last else ""))
        else:
            out.append(_component_regex(part) + ("" if last else "/"))
    return re.compile("".join(out))


def _fixed_root(pattern: str) -> tuple[str, list[str]]:
    """The leading components of a glob without wildcards, and the rest."""
    parts = pattern.split(os.sep)
    fixed = 0
    while fixed < len(parts) - 1 and not glob.has_magic(parts[fixed]):
        fixed += 1
    root = os.sep.join(parts[:fixed])
    return (root or (os.sep if pattern.startswith(os.sep) else "")), parts[fixed:]


def glob_files(pattern: str, skipped: list[dict],
               exclude: frozenset[str] = frozenset()) -> list[str]:
    """The entries a local glob matches that are not directories (see `walk_files`).

    A ``**`` pattern is matched on a loop-safe walk of its fixed root (hidden names are not
    matched, as `glob.glob` does not); others by `glob.glob`, leaving out what lies inside
    streamsolve's own directories and streamsolve's own files.
    """
    root, rest = _fixed_root(pattern)
    if "**" not in rest:
        matches = [p for p in sorted(glob.glob(pattern)) if not os.path.isdir(p)]
        return _outside_own(matches, root, skipped, exclude)
    start = root or os.curdir
    if not os.path.isdir(start):
        return []
    regex = glob_regex(rest)
    prefix = len(start) + (0 if start.endswith(os.sep) else 1)
    before = len(skipped)
    files = walk_files(start, skipped, exclude)
    if not root:  # "**/x" lists "a/x" as glob.glob does, not "./a/x"
        files = [f[prefix:] for f in files]
        for entry in skipped[before:]:
            if entry["path"].startswith(start + os.sep):
                entry["path"] = entry["path"][prefix:]
        prefix = 0
    return [f for f in files if regex.fullmatch(f[prefix:].replace(os.sep, "/"))]


def _outside_own(matches: Iterable[str], root: str, skipped: list[dict],
                 exclude: frozenset[str]) -> list[str]:
    """The glob matches that are not streamsolve's own files nor inside its directories
    (the directories between the glob's fixed ``root`` and each match are checked once)."""
    verdicts: dict[str, str | None] = {}

    def inside_own(path: str) -> bool:
        directory = os.path.dirname(path)
        while directory and len(directory) > len(root):
            if directory not in verdicts:
                verdicts[directory] = own_directory(directory, exclude)
                if verdicts[directory] is not None:
                    _skip(skipped, directory, verdicts[directory])
            if verdicts[directory] is not None:
                return True
            directory = os.path.dirname(directory)
        return False

    kept = []
    for match in matches:
        if inside_own(match):
            continue
        reason = own_file(match, exclude)
        if reason is not None:
            _skip(skipped, match, reason)
        else:
            kept.append(match)
    return kept
