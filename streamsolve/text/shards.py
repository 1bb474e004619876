"""Shards: which files a corpus names, and their bytes (opened, hashed, decompressed).

A corpus is a list of files, directories (recursively, hidden files skipped), globs and fsspec
URLs; each regular file is a shard. FIFOs, sockets, devices and symlinks to them are skipped
(logged and reported) inside directories and globs, and refused when named explicitly, so a
corpus can never hang the run. Directories and ``**`` globs are walked loop-free, and
streamsolve's own files met there (stores, their locks, spill directories) are skipped and
reported too (`streamsolve.text.corpus_listing`). A shard is identified by the SHA-256 of its
stored bytes, taken while they are read for counting (`open_binary` with a hasher), so the
recorded hash is that of exactly the bytes counted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from collections.abc import Sequence

import fsspec

from .corpus_listing import (LOCK_SUFFIX, glob_files, is_lock_record, is_store_metadata,
                             walk_files)

logger = logging.getLogger(__name__)

BUILTIN_CORPUS = "builtin://pydoc-topics"

#: Compressions a shard may have (fsspec's names), read as a stream: not ``zip`` (an
#: archive of files, read by seeking).
STREAM_COMPRESSIONS = ("gzip", "bz2", "xz", "zstd", "lz4", "snappy")
#: Shards one hashing task takes at most (`hash_batches`).
HASH_BATCH_SHARDS = 512


class CorpusError(ValueError):
    """A corpus path or shard cannot be used; the message names it and the fix."""


class BinaryShardError(CorpusError):
    """The shard looks like a binary file (NUL bytes in its first block); `reason` is what
    its manifest entry and ``skipped_reasons`` say."""

    reason = "binary"


def compression_of(path: str) -> str | None:
    """The fsspec compression name implied by a path's suffix (`fsspec.utils.infer_compression`,
    any case), or None: also for a compression not read as a stream (``.zip``), whose shard
    is then read as raw bytes (and skipped as binary)."""
    from fsspec.compression import compr
    from fsspec.utils import infer_compression

    name = infer_compression(path)
    return name if name in STREAM_COMPRESSIONS and name in compr else None


def is_jsonl(path: str) -> bool:
    """Whether a path names JSON-lines records (possibly compressed)."""
    base = path
    suffix = compression_of(path)
    if suffix is not None:
        base = path.rsplit(".", 1)[0]
    return base.endswith(".jsonl") or base.endswith(".ndjson")


def expand_corpus(paths: Sequence[str], storage_options: dict | None = None) -> list[str]:
    """Expand files, directories, globs and fsspec URLs into a sorted list of shard URLs.

    Non-regular files found in directories or globs, and streamsolve's own files, are
    skipped (and logged); see `expand_shards` to get them with the reason.

    Raises
    ------
    CorpusError
        If a path matches nothing, or names a special file; the message names it.
    """
    return expand_shards(paths, storage_options)[0]


def expand_shards(paths: Sequence[str], storage_options: dict | None = None,
                  exclude: Sequence[str] = ()) -> tuple[list[str], list[dict]]:
    """`expand_corpus`, plus the entries it skipped: ``(shards, skipped)``.

    ``skipped`` holds ``{"path": ..., "skipped": reason}`` for every FIFO, socket, device,
    dangling symlink or symlink to one of those found in a directory or glob; every
    unreadable directory and directory symlink not followed (a loop, or a directory already
    listed); and every streamsolve store, store lock file and spill directory met there
    (a store is known by its ``zarr.json``, whatever its name). ``exclude`` names stores
    being written (they and their ``.lock`` are skipped even before they exist).

    Raises
    ------
    CorpusError
        If a path matches nothing, or names a special file explicitly.
    """
    if isinstance(paths, str):
        paths = [paths]
    shards: list[str] = []
    skipped: list[dict] = []
    missing: list[str] = []
    being_written = _being_written(exclude)
    for path in paths:
        if path == BUILTIN_CORPUS:
            shards.append(path)
            continue
        found = _expand_one(str(path), storage_options or {}, skipped, being_written)
        if not found:
            missing.append(str(path))
        shards.extend(found)
    if missing:
        raise CorpusError(
            "corpus path(s) not found or matching no regular files: " + ", ".join(missing)
        )
    # The user's multiplicity is kept (a shard listed twice is de-duplicated by its hash).
    return shards, skipped


def special_file_kind(path: str) -> str | None:
    """What a local path is when it is not a regular file (or a symlink to one), else None.

    E.g. ``"FIFO"``, ``"symlink to a character device"``, ``"dangling symlink"``.
    """
    link = os.path.islink(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "dangling symlink" if link else "missing file"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kind = ("directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode)
            else "socket" if stat.S_ISSOCK(mode) else "character device" if stat.S_ISCHR(mode)
            else "block device" if stat.S_ISBLK(mode) else "special file")
    if link:
        return f"symlink to a {kind}" if kind[0] not in "AEIOU" else f"symlink to an {kind}"
    return kind


def _keep_regular(candidates: Sequence[str], skipped: list[dict]) -> list[str]:
    """The regular files among ``candidates``; the others are logged and added to ``skipped``."""
    found = []
    for candidate in candidates:
        kind = special_file_kind(candidate)
        if kind is None:
            found.append(candidate)
            continue
        logger.warning("skipping %s: not a regular file (%s)", candidate, kind)
        skipped.append({"path": candidate, "skipped": kind})
    return found


def _local_path(path: str) -> str | None:
    """The local filesystem path of a plain path or ``file://`` URL, else None."""
    if path.startswith("file://"):
        return path[len("file://"):]
    return None if "://" in path else os.path.expanduser(path)


def _being_written(stores: Sequence[str]) -> frozenset[str]:
    """The real local paths of local stores a run writes, and the URLs of remote ones."""
    out = set()
    for store in stores:
        local = _local_path(str(store))
        out.add(os.path.realpath(local) if local is not None else str(store))
    return frozenset(out)


def _expand_one(path: str, storage_options: dict, skipped: list[dict],
                exclude: frozenset[str]) -> list[str]:
    local = _local_path(path)
    if local is not None:
        found = _expand_local(local, skipped, exclude)
        return [f"file://{p}" for p in found] if path.startswith("file://") else found
    fs, _, roots = fsspec.get_fs_token_paths(path, storage_options=storage_options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    def url(p: str) -> str:
        return p if "://" in p else f"{protocol}://{p}"

    found = []
    for root in roots:
        if fs.isdir(root):
            found.extend(_outside_remote_stores(fs, sorted(fs.find(root)), skipped, exclude, url))
        elif fs.exists(root):
            found.append(root)
    return [url(p) for p in found]


def _outside_remote_stores(fs, files: list[str], skipped: list[dict], exclude: frozenset[str],
                           url) -> list[str]:
    """The files of a remote folder outside streamsolve stores (known by their
    ``zarr.json``) and the stores being written (``exclude``), store lock files left out."""
    from fsspec.core import strip_protocol

    stores = {strip_protocol(s).rstrip("/") for s in exclude if "://" in s}
    before = len(skipped)
    for folder in sorted({f.rsplit("/", 1)[0] for f in files if f.endswith("/zarr.json")},
                         key=len):
        if not any(folder.startswith(s + "/") for s in stores) and \
                is_store_metadata(fs.cat_file(folder + "/zarr.json")):
            stores.add(folder)
            skipped.append({"path": url(folder), "skipped": "a streamsolve store"})
    kept = []
    for path in files:
        if any(path.startswith(s + "/") for s in stores):
            continue
        if path.endswith(LOCK_SUFFIX) and (path[:-len(LOCK_SUFFIX)] in stores or (
                fs.size(path) < 1 << 16 and is_lock_record(fs.cat_file(path)))):
            skipped.append({"path": url(path), "skipped": "a streamsolve lock file"})
            continue
        kept.append(path)
    for entry in skipped[before:]:
        logger.warning("skipping %s: %s", entry["path"], entry["skipped"])
    return kept


def _expand_local(local: str, skipped: list[dict], exclude: frozenset[str]) -> list[str]:
    if os.path.isdir(local):
        return _keep_regular(sorted(walk_files(local, skipped, exclude)), skipped)
    if os.path.lexists(local):
        _require_regular(local)
        return [local]
    if any(ch in local for ch in "*?["):
        return _keep_regular(sorted(glob_files(local, skipped, exclude)), skipped)
    return []


def _require_regular(local: str) -> None:
    """Refuse a local path that is not a regular file (a FIFO would block, a device never end)."""
    kind = special_file_kind(local)
    if kind == "missing file":
        raise CorpusError(f"shard not found: {local}")
    if kind is not None:
        raise CorpusError(f"not a regular file: {local} is a {kind}; name regular files, "
                          "or directories and globs of them")


def shard_sizes(paths: Sequence[str], storage_options: dict | None = None,
                unknown: int = 0) -> list[int]:
    """Stored bytes of each shard (``unknown`` where they cannot be known from here: the
    built-in corpus, a missing file, a remote file system without sizes); reads nothing.

    Local files are stat-ed; remote ones asked in one `fsspec` ``sizes`` call per file
    system (concurrent on object stores).
    """
    sizes = [unknown] * len(paths)
    remote: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        local = _local_path(path)
        if path == BUILTIN_CORPUS:
            continue
        if local is None:
            remote.setdefault(path.split("://", 1)[0], []).append(i)
            continue
        try:
            sizes[i] = os.stat(local).st_size
        except OSError:
            pass
    for indices in remote.values():
        try:
            fs, _ = fsspec.core.url_to_fs(paths[indices[0]], **(storage_options or {}))
            found = fs.sizes([paths[i] for i in indices])
        except Exception:  # noqa: BLE001 - sizes only balance the hashing work
            continue
        for i, size in zip(indices, found):
            sizes[i] = unknown if size is None else int(size)
    return sizes


def file_digest(path: str, storage_options: dict | None = None, chunk: int = 8 << 20) -> str:
    """SHA-256 of a shard's bytes as stored (compressed files are not decompressed).

    This is the shard's identity in a store's manifest: re-adding the same bytes is a no-op.
    """
    hasher = hashlib.sha256()
    if path == BUILTIN_CORPUS:
        _hash_builtin(hasher)
        return hasher.hexdigest()
    with _HashingReader(_open_raw(path, storage_options), hasher) as reader:
        try:
            reader.drain(chunk)
        except OSError as exc:
            raise CorpusError(f"shard not readable: {path}: {exc}") from exc
    return hasher.hexdigest()


def file_digests(paths: Sequence[str], storage_options: dict | None = None) -> list[str]:
    """`file_digest` of each shard of a batch (one hashing task: see `hash_batches`)."""
    return [file_digest(path, storage_options) for path in paths]


def hash_batches(sizes: Sequence[int], max_bytes: int,
                 max_shards: int = HASH_BATCH_SHARDS) -> list[list[int]]:
    """Consecutive shard indices in batches of at most ``max_bytes`` (a larger shard is a
    batch of its own) and at most ``max_shards`` shards: one task hashes a batch, since a
    task per small file costs more than hashing it (100,000 tasks took over 600 s)."""
    batches: list[list[int]] = []
    batch: list[int] = []
    held = 0
    for i, size in enumerate(sizes):
        if batch and (held + size > max_bytes or len(batch) >= max_shards):
            batches.append(batch)
            batch, held = [], 0
        batch.append(i)
        held += size
    if batch:
        batches.append(batch)
    return batches


def _hash_builtin(hasher) -> None:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        hasher.update(topics[name].encode("utf-8"))


def _open_raw(path: str, storage_options: dict | None):
    """Open a shard's stored bytes (a regular file; not decompressed)."""
    local = _local_path(path)
    if local is not None:
        _require_regular(local)
    try:
        if local is not None:  # directly: fsspec's per-call URL parsing costs more than
            return open(local, "rb")  # hashing a small file
        return fsspec.open(path, "rb", **(storage_options or {})).open()
    except FileNotFoundError as exc:
        raise CorpusError(f"shard not found: {path}") from exc
    except PermissionError as exc:
        raise CorpusError(f"shard not readable (permission denied): {path}") from exc
    except OSError as exc:
        raise CorpusError(f"shard not readable: {path}: {exc}") from exc


class _HashingReader(io.RawIOBase):
    """A read-only file that feeds every byte read through it to a hash (or None)."""

    def __init__(self, raw, hasher=None):
        super().__init__()
        self._raw = raw
        self._hasher = hasher

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read() if size is None or size < 0 else self._raw.read(size)
        if self._hasher is not None and data:
            self._hasher.update(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def drain(self, chunk: int = 64 << 10) -> None:
        """Read (and hash) everything left."""
        while self.read(chunk):
            pass

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class ShardStream:
    """A shard's decompressed bytes; its stored bytes are hashed into ``hasher`` as they are read.

    Call `finish` after the last read: it hashes stored bytes the decompressor left unread
    (trailing bytes), so ``hasher`` ends with the SHA-256 of exactly the bytes read.
    """

    def __init__(self, path: str, storage_options: dict | None = None, hasher=None):
        self._raw = _HashingReader(_open_raw(path, storage_options), hasher)
        name = compression_of(path)
        if name is None:
            self._text = self._raw
        else:
            from fsspec.compression import compr

            self._text = compr[name](self._raw, mode="rb")

    def read(self, size: int) -> bytes:
        return self._text.read(size)

    def finish(self) -> None:
        self._raw.drain()

    def close(self) -> None:
        try:
            if self._text is not self._raw:
                self._text.close()
        finally:
            self._raw.close()

    def __enter__(self) -> "ShardStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_binary(path: str, storage_options: dict | None = None, hasher=None) -> ShardStream:
    """Open a shard for reading decompressed bytes (a context manager).

    With ``hasher`` (a ``hashlib`` object), the shard's stored bytes update it as they are read.
    """
    return ShardStream(path, storage_options, hasher)


