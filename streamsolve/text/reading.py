"""Reading shards: paths and fsspec URLs to a bounded-memory stream of documents.

A *shard* is one file. Plain UTF-8 text and ``.gz``, ``.bz2``, ``.xz``, ``.zst``
compressed text are read in blocks of whole lines, never whole; ``.jsonl`` files hold one
document per record (the text under a configurable field). Invalid UTF-8 is replaced by
U+FFFD and counted; a shard with NUL bytes near its start, or mostly invalid UTF-8 or control
bytes anywhere, is skipped whole (`streamsolve.text.text_likeness`).

Document boundaries (they reset the language model's context):

``blank-line`` (default)
    A run of blank lines ends a document; blank lines themselves are not tokenized.
``line``
    Every non-empty line is a document.
``file``
    The whole shard is one document (blank lines are kept as text).

Each line is tokenized on its own, newline included, so the counts do not depend on the
block size used to read it.

Long lines: a line longer than ``max_line_bytes`` (newline included; set from the memory
budget, see `streamsolve.engine.memory.line_bytes_for`) is never held whole. It is cut into pieces
of at most that many bytes, each cut placed before the last whitespace byte (space, tab, CR,
VT, FF) of the piece's window, or, when the window has none, at the last UTF-8 character
boundary. Each piece is then a line of its own (tokenized on its own; only the last piece
carries the newline; a piece that is only whitespace is a blank line) and the cut line is
counted once in ``split_lines``. The cuts depend only on the line's bytes and the bound, never
on the read block size. With a byte-level BPE a cut before a space falls where the
pre-tokenizer splits anyway, so the ids are those of the uncut line unless the cut falls in a
run of whitespace or inside a word longer than the bound.

Only regular files are shards: a directory or glob yields its regular files (FIFOs, sockets,
devices and symlinks to them are skipped, logged and reported), and a special file named
explicitly is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence

import numpy as np

from .shards import (BUILTIN_CORPUS, BinaryShardError, CorpusError,  # noqa: F401 (re-exported)
                     _hash_builtin, is_jsonl, open_binary)
from .text_likeness import TextSniffer, invalid_utf8_bytes

logger = logging.getLogger(__name__)

DOCUMENT_MODES = ("blank-line", "line", "file")
DEFAULT_BLOCK_BYTES = 8 << 20
#: Longest line (bytes, newline included) read whole when no memory budget sets it.
DEFAULT_MAX_LINE_BYTES = 1 << 20
#: Smallest accepted line bound (room for any UTF-8 character).
MIN_MAX_LINE_BYTES = 4
_WHITESPACE_BYTES = b" \t\r\x0b\x0c"

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
    max_line_bytes : int
        Longest line held whole (newline included); longer lines are cut into pieces (see
        the module docstring). Reading holds at most this plus one block.
    """

    documents: str = "blank-line"
    text_field: str = "text"
    block_bytes: int = DEFAULT_BLOCK_BYTES
    storage_options: dict | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

    def __post_init__(self):
        if self.documents not in DOCUMENT_MODES:
            raise ValueError(
                f"documents must be one of {', '.join(DOCUMENT_MODES)}, got {self.documents!r}"
            )
        if self.block_bytes < 1:
            raise ValueError(f"block_bytes must be positive, got {self.block_bytes}")
        if self.max_line_bytes < MIN_MAX_LINE_BYTES:
            raise ValueError(f"max_line_bytes must be at least {MIN_MAX_LINE_BYTES}, "
                             f"got {self.max_line_bytes}")


@dataclasses.dataclass
class ReadStats:
    """What reading one shard saw: sizes, documents, and damage repaired on the way."""

    bytes: int = 0
    lines: int = 0
    documents: int = 0
    invalid_bytes: int = 0
    bad_records: int = 0
    split_lines: int = 0

    def add(self, other: "ReadStats") -> "ReadStats":
        return ReadStats(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                            for f in dataclasses.fields(self)})


def decode_counting(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing each invalid sequence by U+FFFD; return the text and the
    number of invalid bytes (linear time, whatever the number of errors)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", "replace")
    return text, invalid_utf8_bytes(data, text)


def cut_point(data: bytes, start: int, bound: int) -> int:
    """Where the piece of a line starting at ``data[start]`` ends (the line is longer than
    ``bound``; ``data`` holds at least ``bound + 1`` bytes from ``start``).

    Before the last whitespace byte among ``data[start + 1:start + bound + 1]`` (so the
    piece has 1 to ``bound`` bytes and the next one starts with that whitespace), else at the
    last UTF-8 character boundary at most ``bound`` bytes in.
    """
    end = start + bound
    cut = max(data.rfind(byte, start + 1, end + 1) for byte in _WHITESPACE_BYTES)
    if cut > start:
        return cut
    for back in range(4):  # a UTF-8 character has at most 3 continuation bytes
        pos = end - back
        if pos <= start:
            break
        if data[pos] & 0xC0 != 0x80:
            return pos
    return end  # not UTF-8 here anyway: cut at the bound


class LineCutter:
    """Turns a stream of byte blocks into segments no line of which exceeds ``bound`` bytes.

    Each segment is either a run of whole newline-terminated lines or one piece of a longer
    line (see the module docstring). At most ``bound`` bytes of an unfinished line are kept
    between blocks.
    """

    def __init__(self, bound: int, stats: ReadStats):
        self.bound = int(bound)
        self.stats = stats
        self.carry = b""
        self.continued = False  # the carry starts inside a line already cut

    def feed(self, chunk: bytes) -> list[bytes]:
        """Segments completed by ``chunk``."""
        data = self.carry + chunk if self.carry else chunk
        end = data.rfind(b"\n") + 1
        tail_continued = self.continued and not end  # no newline: the tail is the same line
        segments = self._complete(data, end) if end else []
        self.carry = self._tail(data, end, tail_continued, segments)
        return segments

    def finish(self) -> list[bytes]:
        """Segments of the last line, when the shard does not end with a newline."""
        if not self.carry:
            return []
        data, self.carry = self.carry + b"\n", b""
        return self._complete(data, len(data))

    def _complete(self, data: bytes, end: int) -> list[bytes]:
        segments: list[bytes] = []
        first_continued, self.continued = self.continued, False
        if end <= self.bound:
            return [data[:end]]
        stops = np.flatnonzero(np.frombuffer(data, np.uint8, count=end) == 10) + 1
        starts = np.concatenate(([0], stops[:-1]))
        pos = 0
        for i in np.flatnonzero(stops - starts > self.bound):
            start, stop = int(starts[i]), int(stops[i])
            if start > pos:
                segments.append(data[pos:start])
            if not (i == 0 and first_continued):
                self.stats.split_lines += 1
            start = self._cut(data, start, stop, segments)
            segments.append(data[start:stop])
            pos = stop
        if pos < end:
            segments.append(data[pos:end])
        return segments

    def _tail(self, data: bytes, start: int, continued: bool, segments: list[bytes]) -> bytes:
        """Cut pieces off an unfinished line while it is longer than the bound; keep the rest."""
        if len(data) - start > self.bound:
            if not continued:
                self.stats.split_lines += 1
            start = self._cut(data, start, len(data), segments)
            continued = True
        self.continued = continued
        return data[start:]

    def _cut(self, data: bytes, start: int, stop: int, segments: list[bytes]) -> int:
        while stop - start > self.bound:
            cut = cut_point(data, start, self.bound)
            segments.append(data[start:cut])
            start = cut
        return start


def iter_line_blocks(path: str, options: ReadOptions, stats: ReadStats,
                     hasher=None) -> Iterator[list[str]]:
    """Yield lists of decoded lines (newline-terminated), about ``block_bytes`` at a time.

    A line longer than ``options.max_line_bytes`` comes as several pieces (only the last ends
    with a newline). With ``hasher``, the shard's stored bytes update it as they are read;
    once the generator is exhausted it holds the hash of every stored byte.

    Raises
    ------
    BinaryShardError
        If the shard starts with NUL bytes, or is not text (`NotTextShardError`, also
        after some blocks were yielded: see `streamsolve.text.text_likeness`).
    """
    if path == BUILTIN_CORPUS:
        if hasher is not None:
            _hash_builtin(hasher)
        yield from _builtin_blocks(options, stats)
        return
    cutter = LineCutter(options.max_line_bytes, stats)
    with open_binary(path, options.storage_options, hasher) as stream:
        for chunk in TextSniffer(path).chunks(_read_chunks(stream, options.block_bytes, path)):
            stats.bytes += len(chunk)
            lines = _decode_segments(cutter.feed(chunk), stats)
            if lines:
                yield lines
        lines = _decode_segments(cutter.finish(), stats)
        try:
            stream.finish()
        except OSError as exc:
            raise CorpusError(f"shard not readable: {path}: {exc}") from exc
    if lines:
        yield lines


def _read_chunks(stream, block_bytes: int, path: str) -> Iterator[bytes]:
    """The stream's decompressed bytes, ``block_bytes`` at a time."""
    while True:
        try:
            chunk = stream.read(block_bytes)
        except (OSError, EOFError, ValueError) as exc:
            raise CorpusError(f"shard not readable (corrupt or truncated?): {path}: {exc}") from exc
        if not chunk:
            return
        yield chunk


def _decode_segments(segments: list[bytes], stats: ReadStats) -> list[str]:
    lines: list[str] = []
    for segment in segments:
        lines.extend(_decode_lines(segment, stats))
    return lines


def _decode_lines(data: bytes, stats: ReadStats) -> list[str]:
    """Lines of newline-terminated data, or the one piece of a cut line (no newline)."""
    text, bad = decode_counting(data)
    stats.invalid_bytes += bad
    if not data.endswith(b"\n"):
        stats.lines += 1
        return [text]
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


def iter_document_pieces(path: str, options: ReadOptions, stats: ReadStats,
                         hasher=None) -> Iterator[list[tuple[list[str], bool]]]:
    """Yield blocks of ``(lines, starts_document)`` pieces.

    ``starts_document`` is False when the piece continues the last piece of the previous
    block (a document split by the block size); the counter then carries the context over.
    ``hasher`` is updated with the shard's stored bytes (see `iter_line_blocks`).
    """
    if is_jsonl(path):
        yield from _jsonl_pieces(path, options, stats, hasher)
        return
    mode = options.documents
    open_doc = False  # whether the last piece of the previous block is an unfinished document
    for lines in iter_line_blocks(path, options, stats, hasher):
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


def _jsonl_pieces(path: str, options: ReadOptions, stats: ReadStats,
                  hasher=None) -> Iterator[list[tuple[list[str], bool]]]:
    """Documents of JSON-lines records. A record longer than ``max_line_bytes`` cannot be
    parsed without holding it whole: it is skipped as one bad record."""
    field = options.text_field
    in_long_record = False
    for lines in iter_line_blocks(path, options, stats, hasher):
        pieces = []
        for line in lines:
            if in_long_record or not line.endswith("\n"):
                if not in_long_record:
                    stats.bad_records += 1
                    logger.warning("%s: skipping a record longer than %d bytes", path,
                                   options.max_line_bytes)
                in_long_record = not line.endswith("\n")
                continue
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

    Used to train a tokenizer on a bounded, deterministic sample of the corpus. A shard
    found binary or not text within its sample gives none of its lines (each shard's
    sample is held until it is read: at most ``total_bytes / len(paths)`` plus one block).
    """
    per_shard = max(1, total_bytes // max(1, len(paths)))
    small = dataclasses.replace(options, block_bytes=min(options.block_bytes, per_shard))
    for path in paths:
        stats = ReadStats()
        sample: list[str] = []
        try:
            for block in iter_document_pieces(path, small, stats):
                for lines, _ in block:
                    sample.extend(lines)
                if stats.bytes >= per_shard:
                    break
        except BinaryShardError as exc:
            logger.info("tokenizer sample: %s", exc)
            continue
        yield from sample
