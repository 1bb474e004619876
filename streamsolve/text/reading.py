"""Reading shards: paths and fsspec URLs to a bounded-memory stream of documents.

A *shard* is one file. Plain UTF-8 text and ``.gz``, ``.bz2``, ``.xz``, ``.zst``
compressed text are read in blocks of whole lines, never whole; ``.jsonl`` files hold one
document per record (the text under a configurable field). Invalid UTF-8 is replaced by
U+FFFD and counted; a file whose first block contains NUL bytes is treated as binary.

Document boundaries (they reset the language model's context):

``blank-line`` (default)
    A run of blank lines ends a document; blank lines themselves are not tokenized.
``line``
    Every non-empty line is a document.
``file``
    The whole shard is one document (blank lines are kept as text).

Each line is tokenized on its own, newline included, so the counts do not depend on the
block size used to read it.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from collections.abc import Iterator, Sequence

import fsspec

logger = logging.getLogger(__name__)

DOCUMENT_MODES = ("blank-line", "line", "file")
BUILTIN_CORPUS = "builtin://pydoc-topics"
BINARY_SNIFF_BYTES = 8192
DEFAULT_BLOCK_BYTES = 8 << 20

_COMPRESSION_BY_SUFFIX = {
    ".gz": "gzip",
    ".bz2": "bz2",
    ".xz": "xz",
    ".zst": "zstd",
}


class CorpusError(ValueError):
    """A corpus path or shard cannot be used; the message names it and the fix."""


class BinaryShardError(CorpusError):
    """The shard looks like a binary file (NUL bytes in its first block)."""


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How shards are split into documents.

    Parameters
    ----------
    documents : {"blank-line", "line", "file"}
        Where a document (the unit that resets the context) ends.
    text_field : str
        Field holding the text in ``.jsonl`` records.
    block_bytes : int
        Bytes of (decompressed) text read at a time; memory per shard is bounded by it.
    storage_options : dict or None
        Passed to fsspec when opening URLs.
    """

    documents: str = "blank-line"
    text_field: str = "text"
    block_bytes: int = DEFAULT_BLOCK_BYTES
    storage_options: dict | None = None

    def __post_init__(self):
        if self.documents not in DOCUMENT_MODES:
            raise ValueError(
                f"documents must be one of {', '.join(DOCUMENT_MODES)}, got {self.documents!r}"
            )
        if self.block_bytes < 1:
            raise ValueError(f"block_bytes must be positive, got {self.block_bytes}")


@dataclasses.dataclass
class ReadStats:
    """What reading one shard saw: sizes, documents, and damage repaired on the way."""

    bytes: int = 0
    lines: int = 0
    documents: int = 0
    invalid_bytes: int = 0
    bad_records: int = 0

    def add(self, other: "ReadStats") -> "ReadStats":
        return ReadStats(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                            for f in dataclasses.fields(self)})


def compression_of(path: str) -> str | None:
    """The fsspec compression name implied by a path's suffix, or None."""
    for suffix, name in _COMPRESSION_BY_SUFFIX.items():
        if path.endswith(suffix):
            return name
    return None


def is_jsonl(path: str) -> bool:
    """Whether a path names JSON-lines records (possibly compressed)."""
    base = path
    suffix = compression_of(path)
    if suffix is not None:
        base = path.rsplit(".", 1)[0]
    return base.endswith(".jsonl") or base.endswith(".ndjson")


def expand_corpus(paths: Sequence[str], storage_options: dict | None = None) -> list[str]:
    """Expand files, directories, globs and fsspec URLs into a sorted list of shard URLs.

    Raises
    ------
    CorpusError
        If a path matches nothing; the message names every such path.
    """
    if isinstance(paths, str):
        paths = [paths]
    shards: list[str] = []
    missing: list[str] = []
    for path in paths:
        if path == BUILTIN_CORPUS:
            shards.append(path)
            continue
        found = _expand_one(str(path), storage_options or {})
        if not found:
            missing.append(str(path))
        shards.extend(found)
    if missing:
        raise CorpusError(
            "corpus path(s) not found or matching no files: " + ", ".join(missing)
        )
    # Deterministic order, duplicates removed (a shard listed twice is read twice only
    # when the user lists it twice on purpose, so keep the user's multiplicity).
    return shards


def _expand_one(path: str, storage_options: dict) -> list[str]:
    if "://" not in path:
        local = os.path.expanduser(path)
        if os.path.isdir(local):
            found = []
            for root, dirs, files in os.walk(local):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(os.path.join(root, f) for f in sorted(files)
                             if not f.startswith("."))
            return sorted(found)
        if os.path.isfile(local):
            return [local]
        if any(ch in local for ch in "*?["):
            return sorted(p for p in glob.glob(local, recursive=True) if os.path.isfile(p))
        return []
    fs, _, roots = fsspec.get_fs_token_paths(path, storage_options=storage_options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    found = []
    for root in roots:
        if fs.isdir(root):
            found.extend(sorted(p for p in fs.find(root)))
        elif fs.exists(root):
            found.append(root)
    return [p if "://" in p else f"{protocol}://{p}" for p in found]


def file_digest(path: str, storage_options: dict | None = None, chunk: int = 8 << 20) -> str:
    """SHA-256 of a shard's bytes as stored (compressed files are not decompressed).

    This is the shard's identity in a store's manifest: re-adding the same bytes is a no-op.
    """
    import hashlib

    hasher = hashlib.sha256()
    if path == BUILTIN_CORPUS:
        from pydoc_data.topics import topics

        for name in sorted(topics):
            hasher.update(topics[name].encode("utf-8"))
        return hasher.hexdigest()
    if "://" not in path and not os.path.exists(path):
        raise CorpusError(f"shard not found: {path}")
    try:
        with fsspec.open(path, "rb", **(storage_options or {})) as handle:
            while True:
                data = handle.read(chunk)
                if not data:
                    break
                hasher.update(data)
    except FileNotFoundError as exc:
        raise CorpusError(f"shard not found: {path}") from exc
    except OSError as exc:
        raise CorpusError(f"shard not readable: {path}: {exc}") from exc
    return hasher.hexdigest()


def open_binary(path: str, storage_options: dict | None = None):
    """Open a shard for reading decompressed bytes (a context manager)."""
    if "://" not in path and not os.path.exists(path):
        raise CorpusError(f"shard not found: {path}")
    try:
        return fsspec.open(path, mode="rb", compression=compression_of(path),
                           **(storage_options or {})).open()
    except FileNotFoundError as exc:
        raise CorpusError(f"shard not found: {path}") from exc
    except PermissionError as exc:
        raise CorpusError(f"shard not readable (permission denied): {path}") from exc


def decode_counting(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing invalid bytes by U+FFFD; return the text and the bad-byte count."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    pieces, bad, pos = [], 0, 0
    while True:
        try:
            pieces.append(data[pos:].decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            pieces.append(data[pos:pos + exc.start].decode("utf-8"))
            pieces.append("\ufffd")
            bad += exc.end - exc.start
            pos += exc.end
    return "".join(pieces), bad


def iter_line_blocks(path: str, options: ReadOptions, stats: ReadStats) -> Iterator[list[str]]:
    """Yield lists of decoded lines (newline-terminated), about ``block_bytes`` at a time.

    Raises
    ------
    BinaryShardError
        If the first block contains NUL bytes.
    """
    if path == BUILTIN_CORPUS:
        yield from _builtin_blocks(options, stats)
        return
    try:
        stream = open_binary(path, options.storage_options)
    except OSError as exc:
        raise CorpusError(f"shard not readable: {path}: {exc}") from exc
    with stream:
        carry = b""
        first = True
        while True:
            try:
                chunk = stream.read(options.block_bytes)
            except (OSError, EOFError, ValueError) as exc:
                raise CorpusError(f"shard not readable (corrupt or truncated?): {path}: {exc}") from exc
            if first:
                first = False
                if b"\x00" in chunk[:BINARY_SNIFF_BYTES]:
                    raise BinaryShardError(f"shard looks binary (NUL bytes), skipped: {path}")
            if not chunk:
                break
            stats.bytes += len(chunk)
            data = carry + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1:]
            yield _decode_lines(data[:cut + 1], stats)
        if carry:
            yield _decode_lines(carry + b"\n", stats)


def _decode_lines(data: bytes, stats: ReadStats) -> list[str]:
    text, bad = decode_counting(data)
    stats.invalid_bytes += bad
    lines = text.replace("\r\n", "\n").split("\n")
    lines.pop()  # data ends with a newline: the last piece is empty
    stats.lines += len(lines)
    return [line + "\n" for line in lines]


def _builtin_blocks(options: ReadOptions, stats: ReadStats) -> Iterator[list[str]]:
    """CPython's own pydoc topic texts (``pydoc_data.topics``): one document per topic."""
    from pydoc_data.topics import topics

    block: list[str] = []
    for name in sorted(topics):
        text = topics[name].strip("\n") + "\n\n"
        stats.bytes += len(text.encode("utf-8"))
        lines = [line + "\n" for line in text.split("\n")[:-1]]
        stats.lines += len(lines)
        block.extend(lines)
    yield block


def iter_document_pieces(path: str, options: ReadOptions,
                         stats: ReadStats) -> Iterator[list[tuple[list[str], bool]]]:
    """Yield blocks of ``(lines, starts_document)`` pieces.

    ``starts_document`` is False when the piece continues the last piece of the previous
    block (a document split by the block size); the counter then carries the context over.
    """
    if is_jsonl(path):
        yield from _jsonl_pieces(path, options, stats)
        return
    mode = options.documents
    open_doc = False  # whether the last piece of the previous block is an unfinished document
    for lines in iter_line_blocks(path, options, stats):
        pieces: list[tuple[list[str], bool]] = []
        if mode == "file":
            if lines:
                pieces.append((lines, not open_doc))
                if not open_doc:
                    stats.documents += 1
                open_doc = True
        elif mode == "line":
            for line in lines:
                if line.strip():
                    pieces.append(([line], True))
                    stats.documents += 1
            open_doc = False
        else:  # blank-line
            current: list[str] = []
            starts = not open_doc
            for line in lines:
                if line.strip():
                    current.append(line)
                elif current:
                    pieces.append((current, starts))
                    if starts:
                        stats.documents += 1
                    current, starts = [], True
                else:
                    starts = True  # blank line after a piece that ended at the block edge
            if current:
                pieces.append((current, starts))
                if starts:
                    stats.documents += 1
                open_doc = True
            else:
                open_doc = False
        if pieces:
            yield pieces


def _jsonl_pieces(path: str, options: ReadOptions,
                  stats: ReadStats) -> Iterator[list[tuple[list[str], bool]]]:
    field = options.text_field
    for lines in iter_line_blocks(path, options, stats):
        pieces = []
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record[field]
                if not isinstance(text, str):
                    raise TypeError(f"field {field!r} is not a string")
            except (ValueError, KeyError, TypeError) as exc:
                stats.bad_records += 1
                if stats.bad_records <= 3:
                    logger.warning("%s: skipping record without a text field %r (%s)",
                                   path, field, exc)
                continue
            text_lines = [part + "\n" for part in text.replace("\r\n", "\n").split("\n")
                          if part.strip()]
            if text_lines:
                pieces.append((text_lines, True))
                stats.documents += 1
        if pieces:
            yield pieces


def read_sample(paths: Sequence[str], total_bytes: int, options: ReadOptions) -> Iterator[str]:
    """Yield lines from the start of each shard, about ``total_bytes / len(paths)`` each.

    Used to train a tokenizer on a bounded, deterministic sample of the corpus.
    Binary shards are skipped.
    """
    per_shard = max(1, total_bytes // max(1, len(paths)))
    small = dataclasses.replace(options, block_bytes=min(options.block_bytes, per_shard))
    for path in paths:
        stats = ReadStats()
        try:
            for block in iter_document_pieces(path, small, stats):
                for lines, _ in block:
                    yield from lines
                if stats.bytes >= per_shard:
                    break
        except BinaryShardError:
            continue
