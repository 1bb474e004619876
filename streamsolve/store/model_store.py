"""Storage: counts and explicit weights in a Zarr v3 group (local path or fsspec URL).

Layout (``g`` = counts generation, ``w`` = weights id)::

    STORE/zarr.json                      attrs["streamsolve"]: format, config, tokenizer hash,
                                         versions, manifest of shards, totals, pointers
    STORE/tokenizer                      uint8: the tokenizer JSON
    STORE/counts/g{g}/unigram            int64 [V]
    STORE/counts/g{g}/r{r}/b{k}/indptr   int64 [rows in block + 1]   (CSR of row block k
    STORE/counts/g{g}/r{r}/b{k}/indices  int32 [nnz]                  of count block r;
    STORE/counts/g{g}/r{r}/b{k}/data     int64 [nnz]                  never dense V x V)
    STORE/weights/w{w}/...               the same CSR layout (float64 sparse part S) plus
                                         row_terms, col_terms [blocks, V], bias, log_unigram [V]

Each row block is written by exactly one writer. New counts go to a new generation; the
attributes are switched to it only once every array is written, so a reader never sees
half-written counts.

Integrity. Every array is written with a checksummed codec pipeline (zstd with its content
checksum, then a CRC32C of the stored bytes), so a damaged chunk fails to decode instead of
reading back as other numbers. A *missing* chunk would still read back as the fill value, so
every block also records a digest of its content: a counts or weights row block in its group's
attributes (``digest``, over all its arrays), every other array in its own attributes. Reads
verify them: a mismatch raises `StoreCorruptError` naming the block (``counts/g3/r2/b0:
digest mismatch ...``). Merging (``count`` on an existing store), ``finalize``, ``eval``,
``export`` and ``streamsolve verify`` all read through these checks, so nothing is built on
damaged counts. Stores written before digests existed still open: their blocks are checked
structurally only (CSR shapes), and new writes add digests.

Snapshot reads. A reader resolves the store's attributes once (`ModelStore.snapshot`) and reads
only the counts generation and the weights version they name; every ``read_*`` method does so
for its own call, and a caller that needs several reads to agree (``export``: the unigram and
the pair counts; ``eval``: the weights and the tokenizer) holds one snapshot for all of them.

Retirement (a grace period, not reader leases: readers need no write access). A commit never
deletes what it replaces: the previous counts generation, weights version and unreferenced
weight blocks are recorded in ``attrs["retired"]`` with the time of that commit, and deleted by
a later commit once they have been retired for longer than the grace period
(`retire_seconds`: ``STREAMSOLVE_RETIRE_SECONDS``, default 600). A reader that resolves its
snapshot and finishes within the grace period can therefore never lose its data; one that takes
longer gets a clear error asking it to run again, never other data. Uncommitted generations
(debris of a crashed writer) were never visible to readers and are removed at once.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import uuid
from collections.abc import Iterator

import numpy as np

from ..core.counting import CountConfig, Counts, merge_sorted

logger = logging.getLogger(__name__)

FORMAT = "streamsolve"
FORMAT_VERSION = 1
DEFAULT_ROWS_PER_BLOCK = 4096
_CHUNK = 1 << 22
#: The top-level entries of a store directory: the only names a store creates or removes.
STORE_ENTRIES = ("zarr.json", "tokenizer", "counts", "weights")
#: Largest radius a store may record (R count blocks of V x V each).
MAX_RADIUS = 1024
#: Seconds a replaced counts generation / weights version stays readable (see the docstring).
DEFAULT_RETIRE_SECONDS = 600.0
RETIRE_SECONDS_VARIABLE = "STREAMSOLVE_RETIRE_SECONDS"
#: What a damaged block's error message tells the user to do.
_DAMAGE_FIX = ("the store is damaged and nothing was committed; restore it from a backup, or "
               "rebuild it from the corpus with `streamsolve count` into a new store")


class StoreError(ValueError):
    """A store cannot be opened or used as asked; the message names the store and the fix."""


class StoreMismatchError(StoreError):
    """An existing store was built with another tokenizer, radius, aggregation, ..."""


class StoreConfigError(StoreError):
    """A store's recorded attributes are malformed, out of range or from a newer format."""


class StoreCorruptError(StoreError):
    """Stored data fails its checksum, digest or shape check: the store is damaged."""


def retire_seconds() -> float:
    """The grace period (seconds) before a retired generation or weights version is deleted.

    Read from ``STREAMSOLVE_RETIRE_SECONDS`` (default `DEFAULT_RETIRE_SECONDS`).
    """
    text = os.environ.get(RETIRE_SECONDS_VARIABLE)
    if text is None or not text.strip():
        return DEFAULT_RETIRE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{RETIRE_SECONDS_VARIABLE} must be a number of seconds >= 0, got {text!r}")
    return value


def library_versions() -> dict:
    """Versions of the libraries that produced a store (provenance)."""
    import dask
    import scipy
    import tokenizers
    import zarr

    from .. import __version__

    return {"streamsolve": __version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "dask": dask.__version__, "zarr": zarr.__version__,
            "tokenizers": tokenizers.__version__}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _age_seconds(stamp: str) -> float:
    then = datetime.datetime.fromisoformat(stamp)
    return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()


def checksummed_codecs() -> list:
    """The bytes-to-bytes codecs of every array: zstd with its content checksum, then CRC32C."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=0, checksum=True), Crc32cCodec()]


def array_digest(*arrays) -> str:
    """Content digest of arrays (dtype, shape and bytes of each, in order)."""
    hasher = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def _write_array(group, name: str, data: np.ndarray):
    rows_per_chunk = max(1, _CHUNK // max(1, int(np.prod(data.shape[1:]))))
    chunks = (max(1, min(len(data), rows_per_chunk)),) + tuple(data.shape[1:])
    array = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                               compressors=checksummed_codecs(),
                               attributes={"digest": array_digest(data)}, overwrite=True)
    if data.size:
        array[:] = data
    return array


def row_blocks(vocab_size: int, rows_per_block: int) -> list[tuple[int, int]]:
    """The (start, stop) row ranges of the store's row blocks."""
    return [(start, min(start + rows_per_block, vocab_size))
            for start in range(0, vocab_size, rows_per_block)]


def merge_csr_block(a: tuple, b: tuple) -> tuple:
    """Add two CSR row blocks of the same shape: ``(indptr, indices, data)`` each."""
    n_rows = a[0].size - 1
    width = 1 << 32
    rows_a = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(a[0]))
    rows_b = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(b[0]))
    keys, values = merge_sorted(rows_a * width + a[1], np.asarray(a[2], dtype=np.int64),
                                rows_b * width + b[1], np.asarray(b[2], dtype=np.int64))
    rows = keys // width
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, (keys % width).astype(np.int32), values


def csr_of_rows(keys: np.ndarray, values: np.ndarray, vocab_size: int, start: int, stop: int):
    """CSR arrays (indptr, indices, data) of rows start..stop from sorted pair keys."""
    lo, hi = np.searchsorted(keys, [start * vocab_size, stop * vocab_size])
    k = keys[lo:hi]
    rows = k // vocab_size - start
    indptr = np.zeros(stop - start + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=stop - start), out=indptr[1:])
    return indptr, (k % vocab_size).astype(np.int32), values[lo:hi]


# -- what is at a store's location -----------------------------------------------------------

def zarr_location(url: str) -> str:
    """The location to hand to Zarr: a plain path for ``file://`` URLs.

    Zarr opens ``file://`` URLs through fsspec's local filesystem, which does not create
    parent directories, so the first nested write of a new store fails; a plain path uses
    Zarr's own local store, which does.
    """
    url = str(url)
    if url.startswith("file://"):
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem._strip_protocol(url)
    return url


@dataclasses.dataclass
class Location:
    """What is at a store URL: ``kind`` is "absent", "empty", "store" (a streamsolve store)
    or "other"; ``description`` says what in words; ``entries`` are a directory's names."""

    kind: str
    description: str
    entries: tuple = ()


def _filesystem(url: str, storage_options: dict | None):
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
    return fs, root.rstrip("/") or root


def _describe_directory(fs, root: str, entries: tuple) -> Location:
    if "zarr.json" not in entries:
        if ".zgroup" in entries or ".zarray" in entries:
            return Location("other", "a Zarr v2 dataset", entries)
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
        return Location("other", f"a directory holding {count} ({shown})", entries)
    try:
        node = json.loads(fs.cat_file(f"{root}/zarr.json"))
        node_type, attrs = node.get("node_type"), node.get("attributes") or {}
        if not isinstance(attrs, dict):
            raise ValueError("attributes are not an object")
    except (OSError, ValueError, AttributeError):
        return Location("other", "a directory with an unreadable zarr.json", entries)
    if node_type != "group":
        return Location("other", f"a Zarr {node_type or 'node'} of another tool", entries)
    if attrs.get("format") == FORMAT:
        return Location("store", "a streamsolve store", entries)
    if "format" in attrs:
        return Location("other", f"a Zarr group with format {attrs['format']!r} (not "
                                 f"{FORMAT!r}, so not a streamsolve store)", entries)
    return Location("other", "a Zarr group of another tool", entries)


def _is_local(url: str) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def _inspect_local(path: str) -> Location | None:
    """What a local path is when it is not a directory (None for a directory)."""
    if not os.path.lexists(path):
        return Location("absent", "nothing")
    if not os.path.exists(path):
        return Location("other", "a dangling symbolic link")
    if os.path.isdir(path):
        return None
    if os.path.isfile(path):
        return Location("other", "a regular file")
    return Location("other", "a special file (neither a regular file nor a directory)")


def inspect_location(url: str, storage_options: dict | None = None) -> Location:
    """Find out what is at a store URL without changing anything."""
    fs, root = _filesystem(zarr_location(url), storage_options)
    if _is_local(url):
        location = _inspect_local(root)
        if location is not None:
            return location
    elif not fs.exists(root):
        return Location("absent", "nothing")
    elif fs.isfile(root):
        return Location("other", "an existing object (a file, not a directory)")
    entries = tuple(sorted(name.rstrip("/").rsplit("/", 1)[-1]
                           for name in fs.ls(root, detail=False)
                           if name.rstrip("/") != root))
    if not entries:
        return Location("empty", "an empty directory")
    return _describe_directory(fs, root, entries)


def creatable_location(url: str, storage_options: dict | None = None) -> Location:
    """What is at ``url``, if a new store may be created there (absent, an empty directory,
    or the debris of an interrupted creation).

    Raises
    ------
    StoreError
        Naming what is there otherwise; nothing is changed.
    """
    location = inspect_location(url, storage_options)
    if location.kind == "other":
        raise StoreError(f"refusing to create a store at {url}: it is {location.description};"
                         " nothing was changed. Choose a new path or an empty directory.")
    return location


def is_inside_store(path: str, store_url: str, storage_options: dict | None = None) -> bool:
    """Whether ``path`` is the store's location or anything inside it (symlinks resolved)."""
    if _is_local(path) and _is_local(store_url):
        inner = os.path.realpath(zarr_location(path))
        root = os.path.realpath(zarr_location(store_url))
        return os.path.commonpath([inner, root]) == root
    if _is_local(path) != _is_local(store_url):
        return False
    fs_path, inner = _filesystem(path, storage_options)
    fs_store, root = _filesystem(store_url, storage_options)
    return (fs_path.protocol == fs_store.protocol
            and (inner.rstrip("/") + "/").startswith(root.rstrip("/") + "/"))


def remove_store(url: str, storage_options: dict | None = None):
    """Delete the streamsolve store at ``url`` (for ``solve --overwrite``); hold its lock.

    Only a streamsolve store holding nothing but its own entries is removed (the directory
    itself stays); anything else is refused and left untouched.

    Raises
    ------
    StoreError
        Naming what is at ``url`` when it is not a streamsolve store, or the foreign entries.
    """
    location = inspect_location(url, storage_options)
    if location.kind in ("absent", "empty"):
        return
    if location.kind != "store":
        raise StoreError(f"refusing to overwrite {url}: it is {location.description}, not a "
                         "streamsolve store; nothing was deleted. Choose a new store path.")
    foreign = [name for name in location.entries if name not in STORE_ENTRIES]
    if foreign:
        raise StoreError(f"refusing to overwrite {url}: besides the store it holds "
                         f"{', '.join(foreign)}; nothing was deleted. Move those out first.")
    _remove_entries(url, storage_options)
    logger.info("removed the streamsolve store %s (--overwrite)", url)


def _remove_entries(url: str, storage_options: dict | None):
    """Remove a store's own top-level entries (`STORE_ENTRIES`), nothing else."""
    fs, root = _filesystem(zarr_location(url), storage_options)
    for name in STORE_ENTRIES:
        path = f"{root}/{name}"
        if fs.exists(path):
            fs.rm(path, recursive=fs.isdir(path))


# -- validation of a store's attributes ------------------------------------------------------

def _is_int(value, low: int, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def _config_problems(meta: dict) -> list[str]:
    config = meta.get("config")
    if not isinstance(config, dict):
        return ["config is missing or not an object"]
    problems = []
    vocab_size = config.get("vocab_size")
    if not _is_int(vocab_size, 2, 3_000_000_000):
        problems.append(f"config.vocab_size {vocab_size!r} is not an integer in 2..3e9")
    if not _is_int(config.get("radius"), 1, MAX_RADIUS):
        problems.append(f"config.radius {config.get('radius')!r} is not an integer in "
                        f"1..{MAX_RADIUS}")
    if config.get("aggregation") not in ("cat", "sum"):
        problems.append(f"config.aggregation {config.get('aggregation')!r} is not 'cat' or 'sum'")
    if _is_int(vocab_size, 2) and not _is_int(config.get("bos_id"), 0, vocab_size - 1):
        problems.append(f"config.bos_id {config.get('bos_id')!r} is outside 0..{vocab_size - 1}")
    tokenizer = meta.get("tokenizer")
    if not isinstance(tokenizer, dict) or tokenizer.get("vocab_size") != vocab_size:
        problems.append("tokenizer.vocab_size does not match config.vocab_size")
    if not _is_int(meta.get("rows_per_block"), 1):
        problems.append(f"rows_per_block {meta.get('rows_per_block')!r} is not an integer >= 1")
    return problems


def _counts_problems(meta: dict) -> list[str]:
    counts = meta.get("counts")
    if counts is None:
        return []
    if not isinstance(counts, dict):
        return ["counts is not an object"]
    problems = []
    if not _is_int(counts.get("generation"), 1):
        problems.append(f"counts.generation {counts.get('generation')!r} is not an integer >= 1")
    if not _is_int(counts.get("tokens"), 0):
        problems.append(f"counts.tokens {counts.get('tokens')!r} is not an integer >= 0")
    nnz = counts.get("nnz")
    config = meta["config"]
    n_blocks = config["radius"] if config["aggregation"] == "cat" else 1
    if not (isinstance(nnz, list) and len(nnz) == n_blocks and all(_is_int(n, 0) for n in nnz)):
        problems.append(f"counts.nnz {str(nnz)[:40]} is not {n_blocks} non-negative integers "
                        f"(one per count block of radius {config['radius']}, aggregation "
                        f"{config['aggregation']})")
    return problems


def _weights_problems(meta: dict) -> list[str]:
    weights = meta.get("weights")
    if weights is None:
        return []
    names = [weights.get("id")] if isinstance(weights, dict) else [None]
    blocks = weights.get("blocks") if isinstance(weights, dict) else None
    if isinstance(blocks, list) and all(isinstance(keys, list) for keys in blocks):
        names += [key for keys in blocks for key in keys]
    else:
        names.append(None)
    if not all(isinstance(name, str) and name.isalnum() for name in names):
        return ["weights.id / weights.blocks are not alphanumeric names"]
    return []


def validate_meta(meta: dict, url: str):
    """Check a store's attributes for type and range before anything is read by them.

    Raises
    ------
    StoreConfigError
        One line naming the store, every bad attribute, and the fix.
    """
    version = meta.get("format_version")
    if not _is_int(version, 1):
        problems = [f"format_version {version!r} is not an integer >= 1"]
    elif version > FORMAT_VERSION:
        raise StoreConfigError(f"store {url} has format_version {version}, newer than this "
                               f"streamsolve reads (up to {FORMAT_VERSION}): upgrade streamsolve")
    else:
        problems = _config_problems(meta)
        if not problems:
            problems = _counts_problems(meta) + _weights_problems(meta)
    if problems:
        raise StoreConfigError(f"store {url} has invalid attributes (hand-edited or damaged "
                               f"zarr.json): {'; '.join(problems)}. Restore zarr.json or "
                               "rebuild the store.")


class ModelStore:
    """A streamsolve store: counts, tokenizer, provenance and explicit weights.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the Zarr group.
    storage_options : dict, optional
        Passed to fsspec / Zarr.
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = str(url)
        self.storage_options = storage_options or None
        self._group = None
        self._created_here = False  # set by `create`: this object wrote the store's entries
        self._created_root = False  # ... and made its directory (nothing was there)
        self._pinned_meta = None  # set on a snapshot: the attributes it reads by

    # -- opening ---------------------------------------------------------------------------
    def _open(self, mode: str, **kwargs):
        import zarr

        location = zarr_location(self.url)
        if self.storage_options and "://" in location:
            kwargs["storage_options"] = self.storage_options
        return zarr.open_group(location, mode=mode, **kwargs)

    @property
    def group(self):
        if self._group is None:
            try:
                self._group = self._open("r+")
            except Exception as exc:
                error = self._open_error(exc)
                if error is exc:
                    raise
                raise error from exc
        return self._group

    def _open_error(self, exc: Exception) -> Exception:
        """The error to raise for a failure to open the group (``exc`` itself if unknown)."""
        missing = (FileNotFoundError, FileExistsError, NotADirectoryError, KeyError)
        if isinstance(exc, missing) or type(exc).__name__ in (
                "GroupNotFoundError", "NodeNotFoundError", "ContainsArrayError"):
            return StoreError(f"no streamsolve store at {self.url}")
        if isinstance(exc, (ValueError, TypeError)):  # zarr.json is not JSON / not metadata
            return StoreConfigError(f"{self.url}/zarr.json is unreadable ({exc}): restore it "
                                    "or rebuild the store")
        return exc

    def exists(self) -> bool:
        """Whether a streamsolve store with committed counts is at this URL.

        Raises
        ------
        StoreConfigError
            If a streamsolve store is there but its attributes are invalid.
        """
        try:
            return "counts" in self.meta
        except StoreConfigError:
            raise
        except StoreError:
            return False

    @property
    def meta(self) -> dict:
        """The store's attributes (``attrs["streamsolve"]``); a snapshot's are fixed."""
        if self._pinned_meta is not None:
            return self._pinned_meta
        self._group = None  # re-read: another process may have committed since
        attrs = dict(self.group.attrs)
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{self.url} is a Zarr group but not a streamsolve store")
        validate_meta(attrs, self.url)
        return attrs

    def _set_meta(self, meta: dict):
        """Replace the attributes in one write (zarr writes zarr.json atomically)."""
        if self._pinned_meta is not None:
            raise StoreError(f"a snapshot of {self.url} is read-only; write through a ModelStore")
        self.group.attrs.put(meta)

    def snapshot(self) -> "ModelStore":
        """A read-only view of the store as it is now: its attributes are read once.

        Every read through the view uses the counts generation and weights version current
        when it was taken, even if a writer commits meanwhile (the replaced data stays for
        `retire_seconds`). A snapshot's snapshot is itself.
        """
        if self._pinned_meta is not None:
            return self
        view = ModelStore(self.url, self.storage_options)
        view._pinned_meta = self.meta
        view._group = self._group
        return view

    # -- creation and compatibility ----------------------------------------------------------
    @classmethod
    def create(cls, url: str, config: CountConfig, tokenizer_text: str, tokenizer_sha256: str,
               bos_token: str, read_options: dict, storage_options: dict | None = None,
               rows_per_block: int = DEFAULT_ROWS_PER_BLOCK) -> "ModelStore":
        """Create an empty store where nothing exists, or in an empty directory.

        Call it holding the store's writer lock. The debris of a creation that was
        interrupted (a streamsolve store without committed counts) is reused.

        Raises
        ------
        StoreError
            If anything else is at ``url`` (files, another Zarr dataset, a streamsolve store
            with counts): it is named, and nothing is changed.
        """
        store = cls(url, storage_options)
        location = creatable_location(url, storage_options)
        if location.kind == "store" and store.exists():
            raise StoreError(f"a streamsolve store already exists at {url}")
        attrs = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _now(),
            "config": config.to_dict(),
            "read_options": read_options,
            "tokenizer": {"sha256": tokenizer_sha256, "bos_token": bos_token,
                          "vocab_size": config.vocab_size},
            "rows_per_block": int(rows_per_block),
            "versions": library_versions(),
            "shards": [],
            "totals": {},
        }
        validate_meta(attrs, url)
        store._created_here, store._created_root = True, location.kind == "absent"
        try:
            if location.kind == "store":  # debris of an interrupted creation
                store._group = store._open("r+")
                store._group.attrs.put(attrs)
            else:  # "w-" never clears anything: the location was proven absent or empty
                store._group = store._open("w-", attributes=attrs)
            _write_array(store._group, "tokenizer",
                         np.frombuffer(tokenizer_text.encode("utf-8"), dtype=np.uint8))
        except BaseException:
            store.discard_uncommitted()
            raise
        return store

    @property
    def config(self) -> CountConfig:
        return CountConfig(**self.meta["config"])

    def tokenizer_text(self) -> str:
        """The tokenizer JSON stored with the counts (verified against its recorded sha256)."""
        raw = self._read_single("tokenizer")
        text = bytes(raw).decode("utf-8", errors="replace")
        recorded = self.meta.get("tokenizer", {}).get("sha256")
        self._check_digest("tokenizer", recorded,
                           lambda: hashlib.sha256(bytes(raw)).hexdigest())
        return text

    def check_compatible(self, config: CountConfig, tokenizer_sha256: str,
                         read_options: dict | None = None):
        """Refuse to add counts made with another tokenizer, radius or aggregation.

        Raises
        ------
        StoreMismatchError
            Naming the store's value and the requested one.
        """
        meta = self.meta
        stored = meta["config"]
        problems = []
        if meta["tokenizer"]["sha256"] != tokenizer_sha256:
            problems.append(f"tokenizer: store has sha256 {meta['tokenizer']['sha256'][:12]}..., "
                            f"this run has {tokenizer_sha256[:12]}...")
        for name in ("radius", "aggregation", "vocab_size", "bos_id"):
            if stored[name] != getattr(config, name):
                problems.append(f"{name}: store has {stored[name]!r}, this run has "
                                f"{getattr(config, name)!r}")
        if read_options:
            for name in ("documents", "text_field"):
                if name in meta.get("read_options", {}) and meta["read_options"][name] != read_options.get(name):
                    problems.append(f"{name}: store has {meta['read_options'][name]!r}, this run has "
                                    f"{read_options.get(name)!r}")
        if problems:
            raise StoreMismatchError(f"store {self.url} was built differently; refusing to mix "
                                     "counts:\n  " + "\n  ".join(problems))

    # -- counts ----------------------------------------------------------------------------
    def begin_counts_generation(self) -> int:
        """Create an empty, uncommitted counts generation; returns its number.

        Row blocks are then written by `write_count_block` (one writer per block, from any
        process) and made visible by `commit_counts_generation`. An uncommitted generation
        left by a crash is never read, and is removed by the next one.
        """
        meta = self.meta
        previous = meta.get("counts")
        current = previous["generation"] if previous else 0
        existing = [int(name[1:]) for name in self._group_names("counts") if name[1:].isdigit()]
        generation = max([current, *existing]) + 1
        retired = meta.get("retired", {})
        for name in existing:
            if name != current and f"counts/g{name}" not in retired:
                del self.group[f"counts/g{name}"]  # debris of an interrupted ingest
        config = CountConfig(**meta["config"])
        gen_group = self.group.require_group(f"counts/g{generation}")
        for r in range(config.n_blocks):
            for k, _ in enumerate(row_blocks(config.vocab_size, meta["rows_per_block"])):
                gen_group.require_group(f"r{r + 1}/b{k}")
        return generation

    def discard_uncommitted(self):
        """Remove counts generations that are not committed (after a failed write).

        A store without committed counts is removed only if this object created it
        (`create`), and then only its own entries (and its directory, if `create` made it
        and it is left empty); anything else at the path is never touched.
        """
        try:
            meta = self.meta
            previous = meta.get("counts")
        except StoreError:
            if self._created_here:
                self._discard_created_store()
            return
        if previous is None:
            self._discard_created_store()
            return
        retired = meta.get("retired", {})
        for name in self._group_names("counts"):
            if name != f"g{previous['generation']}" and f"counts/{name}" not in retired:
                try:
                    del self.group[f"counts/{name}"]
                except Exception:
                    logger.warning("could not remove uncommitted %s/counts/%s", self.url, name)

    def _discard_created_store(self):
        if not self._created_here:
            logger.warning("leaving the unfinished store %s in place: this run did not create "
                           "it (the next count reuses it)", self.url)
            return
        self._group = None
        try:
            _remove_entries(self.url, self.storage_options)
            if self._created_root and _is_local(self.url):
                os.rmdir(zarr_location(self.url))  # only succeeds when it is empty
        except Exception:  # best effort: an uncommitted store is never read anyway
            logger.warning("could not remove the unfinished store %s", self.url)

    def _group_names(self, path: str) -> list[str]:
        if path not in self.group:
            return []
        return [name for name, _ in self.group[path].groups()]

    def write_count_block(self, generation: int, r: int, k: int, indptr: np.ndarray,
                          indices: np.ndarray, data: np.ndarray):
        """Write row block ``k`` of count block ``r`` (0-based) into an uncommitted generation."""
        block = self.group[f"counts/g{generation}/r{r + 1}/b{k}"]
        _write_array(block, "indptr", np.asarray(indptr, dtype=np.int64))
        _write_array(block, "indices", np.asarray(indices, dtype=np.int32))
        _write_array(block, "data", np.asarray(data, dtype=np.int64))
        block.attrs.put({"digest": block_digest(indptr, indices, data)})

    def read_count_block_csr(self, generation: int, r: int, k: int):
        """Raw CSR arrays ``(indptr, indices, data)`` of one row block of a generation, verified.

        Raises
        ------
        StoreCorruptError
            If the block is missing, fails its checksum, or its digest differs from the one
            recorded when it was written.
        """
        path = f"counts/g{generation}/r{r + 1}/b{k}"
        node, (indptr, indices, data) = self._read_arrays(path, ("indptr", "indices", "data"))
        self._check_csr(path, indptr, indices, data)
        self._check_digest(path, node.attrs.get("digest"), lambda: block_digest(indptr, indices, data))
        return indptr, indices, data

    # -- verified reading ------------------------------------------------------------------
    def _read_arrays(self, path: str, names: tuple) -> tuple:
        """``(node, [arrays])``: the named arrays of the node at ``path``, decoded (checksums)."""
        try:
            node = self.group[path] if path else self.group
            return node, [node[name][:] for name in names]
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise self._unreadable(path, exc) from exc

    def _read_single(self, path: str) -> np.ndarray:
        """One array, verified against the digest in its own attributes (when recorded)."""
        try:
            array = self.group[path]
            values = array[:]
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise self._unreadable(path, exc) from exc
        self._check_digest(path, array.attrs.get("digest"), lambda: array_digest(values))
        return values

    def _unreadable(self, path: str, exc: Exception) -> StoreError:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        missing = isinstance(exc, KeyError)
        return self._damaged(path, "missing" if missing else
                             f"cannot be decoded ({type(exc).__name__}: {reason})")

    def _damaged(self, path: str, problem: str) -> StoreError:
        """The error for a block that fails a check: damage, or (for a snapshot that outlived
        the grace period) data a later commit has removed."""
        if self._pinned_meta is not None and self._was_retired(path):
            return StoreError(
                f"{path} of store {self.url} was replaced by a newer commit and removed while "
                f"this reader still used it (readers must finish within {RETIRE_SECONDS_VARIABLE}"
                f"={retire_seconds():g} s of starting); run the command again")
        return StoreCorruptError(f"{path}: {problem} in store {self.url}: {_DAMAGE_FIX}")

    def _was_retired(self, path: str) -> bool:
        """Whether ``path`` is no longer part of the store's current state."""
        try:
            current = ModelStore(self.url, self.storage_options).meta
        except StoreError:
            return False
        return not any(path.startswith(live + "/") or path == live
                       for live in _live_paths(current))

    def _check_digest(self, path: str, recorded: str | None, compute):
        if recorded is None:  # written before digests were recorded
            return
        actual = compute()
        if actual != recorded:
            raise self._damaged(path, f"digest mismatch (recorded {recorded[:12]}..., read "
                                      f"{actual[:12]}...)")

    def _check_csr(self, path: str, indptr, indices, data, n_values: int | None = None):
        """Shape checks that catch a lost chunk even in stores without digests."""
        ok = (indptr.ndim == 1 and indptr.size >= 1 and indptr[0] == 0
              and int(indptr[-1]) == indices.size == data.size
              and bool(np.all(np.diff(indptr) >= 0)))
        if not ok:
            end = int(indptr[-1]) if indptr.size else None
            raise self._damaged(path, f"inconsistent CSR arrays (indptr ends at {end}, "
                                      f"{indices.size} indices, {data.size} values)")

    def commit_counts_generation(self, generation: int, unigram: np.ndarray, nnz: list[int],
                                 new_shards: list[dict], totals: dict):
        """Make a fully written generation the store's counts (one atomic metadata write).

        The replaced generation is retired, not deleted (see the module docstring).
        """
        gen_group = self.group[f"counts/g{generation}"]
        _write_array(gen_group, "unigram", np.asarray(unigram, dtype=np.int64))
        meta = dict(self.meta)
        meta["counts"] = {"generation": generation, "id": uuid.uuid4().hex,
                          "nnz": [int(n) for n in nnz], "tokens": int(np.sum(unigram)),
                          "committed": _now()}
        meta["shards"] = list(meta.get("shards", [])) + list(new_shards)
        meta["totals"] = totals
        meta["versions"] = library_versions()
        self._commit_and_collect(meta)
        logger.info("committed counts generation %d to %s (%d tokens, nnz %s)",
                    generation, self.url, meta["counts"]["tokens"], meta["counts"]["nnz"])

    def commit_counts(self, counts: Counts, new_shards: list[dict], totals: dict):
        """Write ``counts`` (the store's complete new counts) as a new generation and switch to it."""
        generation = self.begin_counts_generation()
        config = counts.config
        V = config.vocab_size
        for r in range(config.n_blocks):
            for k, (start, stop) in enumerate(row_blocks(V, self.meta["rows_per_block"])):
                self.write_count_block(generation, r, k,
                                       *csr_of_rows(counts.keys[r], counts.values[r], V, start, stop))
        self.commit_counts_generation(generation, counts.unigram, counts.nnz, new_shards, totals)

    def committed_generation(self) -> int:
        """The committed counts generation (of this snapshot, if it is one)."""
        meta = self.meta
        if "counts" not in meta:
            raise StoreError(f"store {self.url} has no counts yet: run `streamsolve count` first")
        return int(meta["counts"]["generation"])

    def read_unigram(self, generation: int | None = None) -> np.ndarray:
        """The unigram counts of the committed generation (or of ``generation``), verified."""
        if generation is None:
            generation = self.snapshot().committed_generation()
        return self._read_single(f"counts/g{generation}/unigram")

    def iter_count_blocks(self, r: int) -> Iterator[tuple[int, int, tuple]]:
        """Yield ``(start, stop, (indptr, indices, data))`` row blocks of count block ``r`` (0-based).

        All blocks come from the generation committed when the iteration starts (verified).
        """
        view = self.snapshot()
        generation = view.committed_generation()
        V = view.config.vocab_size
        for k, (start, stop) in enumerate(row_blocks(V, view.meta["rows_per_block"])):
            yield start, stop, view.read_count_block_csr(generation, r, k)

    def read_count_block(self, r: int):
        """Count block ``r`` (0-based) as a ``scipy.sparse.csr_array`` (V x V, int64)."""
        view = self.snapshot()
        V = view.config.vocab_size
        return stack_row_blocks([csr for _, _, csr in view.iter_count_blocks(r)], V, np.int64)

    def read_counts(self) -> Counts:
        """All counts of the store as a `Counts` (sorted keys), with the manifest (one snapshot)."""
        view = self.snapshot()
        config = view.config
        V = config.vocab_size
        keys, values = [], []
        for r in range(config.n_blocks):
            csr = view.read_count_block(r)
            rows = np.repeat(np.arange(V, dtype=np.int64), np.diff(csr.indptr))
            keys.append(rows * V + csr.indices.astype(np.int64))
            values.append(csr.data.astype(np.int64))
        meta = view.meta
        return Counts(config, keys, values, view.read_unigram(), dict(meta.get("totals", {})),
                      list(meta.get("shards", [])))

    # -- weights ---------------------------------------------------------------------------
    # Weight row blocks are content-addressed: a block's key hashes the digest of the count
    # block it came from and every global input of its formula (see weights.finalize_store),
    # so re-finalizing after an update recomputes only blocks whose inputs changed.
    def count_block_digest(self, r: int, k: int) -> str:
        """Digest of row block ``k`` of count block ``r`` in the committed generation."""
        generation = self.committed_generation()
        block = self.group[f"counts/g{generation}/r{r + 1}/b{k}"]
        digest = block.attrs.get("digest")
        if digest is None:  # stores written before digests were recorded
            digest = block_digest(*self.read_count_block_csr(generation, r, k))
        return digest

    def has_weight_block(self, key: str) -> bool:
        path = f"weights/blocks/{key}"
        return path in self.group and bool(self.group[path].attrs.get("complete"))

    def write_weight_block(self, key: str, indptr, indices, data, row_terms):
        """Write one weight row block (marked complete only after all its arrays)."""
        group = self.group.require_group(f"weights/blocks/{key}")
        arrays = {"indptr": np.asarray(indptr, dtype=np.int64),
                  "indices": np.asarray(indices, dtype=np.int32),
                  "data": np.asarray(data, dtype=np.float64),
                  "row_terms": np.asarray(row_terms, dtype=np.float64)}
        for name, values in arrays.items():
            _write_array(group, name, values)
        group.attrs.put({"complete": True, "digest": array_digest(*arrays.values())})

    def read_weight_block(self, key: str):
        """``(indptr, indices, data, row_terms)`` of a weight row block, verified."""
        path = f"weights/blocks/{key}"
        node, arrays = self._read_arrays(path, ("indptr", "indices", "data", "row_terms"))
        indptr, indices, data, row_terms = arrays
        self._check_csr(path, indptr, indices, data)
        self._check_digest(path, node.attrs.get("digest"),
                           lambda: array_digest(indptr, indices, data, row_terms))
        return indptr, indices, data, row_terms

    def commit_weights(self, params: dict, block_keys: list[list[str]], col_terms: np.ndarray,
                       bias: np.ndarray, log_unigram: np.ndarray,
                       counts_id: str | None = None) -> str:
        """Make written weight blocks plus the rank-one vectors the store's weights.

        One attribute write switches to them (``params`` includes any calibration); the
        replaced version is retired, not deleted (see the module docstring). ``counts_id``
        names the counts they were computed from (default: the committed ones).
        """
        weights_id = uuid.uuid4().hex[:12]
        root = self.group.require_group(f"weights/v{weights_id}")
        _write_array(root, "col_terms", np.asarray(col_terms, dtype=np.float64))
        _write_array(root, "bias", np.asarray(bias, dtype=np.float64))
        _write_array(root, "log_unigram", np.asarray(log_unigram, dtype=np.float64))
        meta = dict(self.meta)
        meta["weights"] = {"id": weights_id, "counts_id": counts_id or meta["counts"]["id"],
                           "written": _now(), "blocks": block_keys, **params}
        self._commit_and_collect(meta)
        return weights_id

    def _commit_and_collect(self, meta: dict):
        """Write ``meta`` (one atomic write), retiring what it no longer uses; then delete
        what has been retired for longer than the grace period."""
        live = _live_paths(meta)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        retired = {path: stamp for path, stamp in meta.get("retired", {}).items()
                   if path not in live}
        for path in self._node_paths():
            if path not in live:
                retired.setdefault(path, now)
        grace = retire_seconds()
        expired = sorted(path for path, stamp in retired.items() if _age_seconds(stamp) >= grace)
        meta["retired"] = {path: stamp for path, stamp in retired.items() if path not in expired}
        self._set_meta(meta)
        for path in expired:
            try:
                if path in self.group:
                    del self.group[path]
            except Exception:  # best effort: the next commit retires and removes it again
                logger.warning("could not remove retired %s/%s", self.url, path)

    def _node_paths(self) -> list[str]:
        """Every counts generation, weights version and weight block present in the store."""
        paths = [f"counts/{name}" for name in self._group_names("counts")]
        paths += [f"weights/{name}" for name in self._group_names("weights") if name != "blocks"]
        paths += [f"weights/blocks/{name}" for name in self._group_names("weights/blocks")]
        return paths

    def set_calibration(self, calibration: dict | None):
        """Record calibration scalars on the current weights."""
        meta = dict(self.meta)
        if "weights" not in meta:
            raise StoreError(f"store {self.url} has no weights to calibrate")
        meta["weights"] = {**meta["weights"], "calibration": calibration}
        self._set_meta(meta)

    def read_weights(self, allow_stale: bool = False):
        """The store's explicit weights as an `ExplicitWeights`.

        Raises
        ------
        StoreError
            If there are no weights, or they were computed from older counts (stale).
        """

        from ..core.weights import ExplicitWeights, SparseRankOne

        view = self.snapshot()
        meta = view.meta
        info = meta.get("weights")
        if not info:
            raise StoreError(f"store {self.url} has no weights: run `streamsolve finalize {self.url}`")
        if info["counts_id"] != meta.get("counts", {}).get("id") and not allow_stale:
            raise StoreError(f"the weights in {self.url} are stale (counts changed since they were "
                             f"computed): run `streamsolve finalize {self.url}` again")
        root = f"weights/v{info['id']}"
        V = view.config.vocab_size
        col_terms = view._read_single(f"{root}/col_terms")
        blocks = []
        for r, keys in enumerate(info["blocks"]):
            pieces = [view.read_weight_block(key) for key in keys]
            sparse = stack_row_blocks([p[:3] for p in pieces], V, np.float64)
            row_terms = [p[3] for p in pieces]
            blocks.append(SparseRankOne(sparse, np.concatenate(row_terms), col_terms[r]))
        params = {k: v for k, v in info.items()
                  if k not in ("id", "counts_id", "written", "blocks", "reused_blocks")}
        return ExplicitWeights.from_params(blocks, view._read_single(f"{root}/bias"),
                                           view._read_single(f"{root}/log_unigram"),
                                           view.config, params)


    # -- verification ----------------------------------------------------------------------
    def verify(self) -> dict:
        """Read and check every committed count block, the unigram, the tokenizer and the
        current weights (one snapshot), collecting all damage instead of stopping at the first.

        Returns
        -------
        dict
            ``ok`` (bool), ``checked`` (blocks and arrays read), ``damaged`` (list of
            ``{"path", "problem"}``), ``without_digest`` (paths written before digests were
            recorded: checked for shape only), ``counts_generation`` and ``weights_id``.
        """
        view = self.snapshot()
        meta = view.meta
        generation = view.committed_generation()
        report = {"store": self.url, "ok": True, "checked": 0, "damaged": [],
                  "without_digest": [], "counts_generation": generation,
                  "weights_id": (meta.get("weights") or {}).get("id")}
        view._verify_counts(generation, report)
        if meta.get("weights"):
            view._verify_weights(meta["weights"], report)
        report["ok"] = not report["damaged"]
        return report

    def _verify_one(self, report: dict, path: str, read):
        """Run ``read`` (a verified read of ``path``); record damage; return its result."""
        report["checked"] += 1
        try:
            result = read()
        except StoreError as exc:
            report["damaged"].append({"path": path, "problem": str(exc)})
            return None
        if path != "tokenizer" and "digest" not in self.group[path].attrs:
            report["without_digest"].append(path)
        return result

    def _verify_counts(self, generation: int, report: dict):
        counts = self.meta["counts"]
        self._verify_one(report, "tokenizer", self.tokenizer_text)
        unigram_path = f"counts/g{generation}/unigram"
        unigram = self._verify_one(report, unigram_path, lambda: self.read_unigram(generation))
        if unigram is not None and int(unigram.sum()) != int(counts["tokens"]):
            report["damaged"].append({"path": unigram_path, "problem": (
                f"{unigram_path}: holds {int(unigram.sum())} tokens but the commit recorded "
                f"{counts['tokens']} in store {self.url}: {_DAMAGE_FIX}")})
        config = self.config
        for r in range(config.n_blocks):
            stored, complete = 0, True
            for k, _ in enumerate(row_blocks(config.vocab_size, self.meta["rows_per_block"])):
                path = f"counts/g{generation}/r{r + 1}/b{k}"
                csr = self._verify_one(report, path,
                                       lambda: self.read_count_block_csr(generation, r, k))
                complete = complete and csr is not None
                stored += csr[1].size if csr is not None else 0
            expected = counts.get("nnz", [None] * config.n_blocks)[r]
            if complete and expected is not None and stored != int(expected):
                path = f"counts/g{generation}/r{r + 1}"
                report["damaged"].append({"path": path, "problem": (
                    f"{path}: holds {stored} pairs but the commit recorded {expected} in store "
                    f"{self.url}: {_DAMAGE_FIX}")})

    def _verify_weights(self, weights: dict, report: dict):
        root = f"weights/v{weights['id']}"
        for name in ("col_terms", "bias", "log_unigram"):
            path = f"{root}/{name}"
            self._verify_one(report, path, lambda: self._read_single(path))
        for keys in weights["blocks"]:
            for key in keys:
                path = f"weights/blocks/{key}"
                self._verify_one(report, path, lambda: self.read_weight_block(key))


def _live_paths(meta: dict) -> set[str]:
    """The nodes the state described by ``meta`` reads: its generation, weights and blocks."""
    live = set()
    if meta.get("counts"):
        live.add(f"counts/g{meta['counts']['generation']}")
    weights = meta.get("weights")
    if weights:
        live.add(f"weights/v{weights['id']}")
        live.update(f"weights/blocks/{key}" for keys in weights["blocks"] for key in keys)
    return live


def stack_row_blocks(blocks: list[tuple], n_cols: int, dtype):
    """One ``csr_array`` from consecutive CSR row blocks ``(indptr, indices, data)``."""
    import scipy.sparse as sp

    indptrs, offset = [np.zeros(1, np.int64)], 0
    for indptr, _, _ in blocks:
        indptrs.append(np.asarray(indptr[1:], dtype=np.int64) + offset)
        offset = int(indptrs[-1][-1]) if indptrs[-1].size else offset
    indptr = np.concatenate(indptrs)
    indices = (np.concatenate([b[1] for b in blocks]) if blocks else np.zeros(0, np.int32))
    data = (np.concatenate([b[2] for b in blocks]) if blocks else np.zeros(0, dtype))
    return sp.csr_array((data, indices, indptr), shape=(indptr.size - 1, n_cols))


def block_digest(indptr, indices, data) -> str:
    """Content digest of a CSR row block."""
    import hashlib

    hasher = hashlib.blake2b(digest_size=16)
    for array, dtype in ((indptr, np.int64), (indices, np.int32), (data, np.int64)):
        hasher.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return hasher.hexdigest()
