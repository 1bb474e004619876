"""Text-likeness: whether a shard's bytes are text to count, judged window by window.

Shards are read as UTF-8. Random bytes, compressed or image data without NUL bytes, and
text in a legacy encoding (GB2312, Shift-JIS, KOI8-R, ...) decode mostly to U+FFFD and
control characters: counting them only adds noise, and reading them cost minutes. Such a
shard is skipped as a whole, like a binary file (reason ``"not text"``, reported in
``skipped_shards``).

The rule
    A byte is *non-text* when it is part of invalid UTF-8 (decoding replaces it by U+FFFD)
    or a control byte (0x00-0x08, 0x0E-0x1F, 0x7F: tab, newline, vertical tab, form feed
    and carriage return are text). A shard is not text when more than `MAX_NONTEXT_SHARE`
    (30%) of the bytes of any of its windows are non-text. The windows are the aligned
    `TEXT_WINDOW_BYTES` (64 KiB) of the decompressed bytes, ``[0, W), [W, 2W), ...``, and,
    when the size is not a multiple of W, the last W bytes (the whole shard when it is
    shorter): the verdict depends on the bytes only, never on the read block size. A NUL
    byte in the first `NUL_SNIFF_BYTES` is binary at once (reason ``"binary"``).

Why 30%: random bytes are about 54% non-text; real text is far below it: the shared
corpora, source code and CJK or mixed-script UTF-8 have none, and French in Latin-1 inside
a UTF-8 corpus (each accented letter one invalid byte) about 6% (16% in a line made of
accented words). Text in a legacy 8-bit CJK encoding is 34-62% invalid UTF-8 (CPython's
test texts in Big5, GB2312, Shift-JIS, EUC-KR), Cyrillic in cp1251 or KOI8-R 84%: skipped,
with a message to convert it. A junk stretch shorter than about two windows inside text may
stay below the threshold: its bytes are replaced and counted as ``invalid_bytes``.

Later in a shard
    The first window is judged before any of the shard's text is used. A window past it
    is judged once read: a shard that turns into junk later is skipped whole too — the
    counts of its text part already made are dropped (`streamsolve.engine.tasks`), and the
    tokenizer's sample takes nothing of it (`streamsolve.text.reading.read_sample`). A
    shard is therefore counted entirely or not at all, and its manifest entry stays true.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .shards import BinaryShardError

#: Bytes of every window judged.
TEXT_WINDOW_BYTES = 1 << 16
#: Largest share of non-text bytes in a window of text.
MAX_NONTEXT_SHARE = 0.30
#: A NUL byte this early makes the shard binary.
NUL_SNIFF_BYTES = 8192
#: Control bytes that are not text (tab, newline, VT, FF and CR are).
CONTROL_BYTES = bytes([*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F])
_REPLACEMENT = "\ufffd"
_REPLACEMENT_UTF8 = _REPLACEMENT.encode("utf-8")


class NotTextShardError(BinaryShardError):
    """The shard is mostly invalid UTF-8 or control bytes (see the module docstring)."""

    reason = "not text"


def invalid_utf8_bytes(data: bytes, text: str | None = None) -> int:
    """Bytes of ``data`` that are not valid UTF-8, in linear time.

    ``text`` is ``data.decode("utf-8", "replace")`` when the caller has it. Each maximal
    invalid sequence became one U+FFFD (3 bytes in UTF-8); a U+FFFD in ``data`` itself is
    always its 3 valid bytes ``EF BF BD``.
    """
    if text is None:
        text = data.decode("utf-8", "replace")
    replaced = text.count(_REPLACEMENT) - data.count(_REPLACEMENT_UTF8)
    if replaced == 0:
        return 0
    valid = len(text.encode("utf-8")) - len(_REPLACEMENT_UTF8) * replaced
    return len(data) - valid


def nontext_bytes(data: bytes) -> int:
    """Non-text bytes of ``data``: invalid UTF-8 plus control bytes."""
    controls = len(data) - len(data.translate(None, CONTROL_BYTES))
    return controls + (0 if data.isascii() else invalid_utf8_bytes(data))


def nontext_share(data: bytes) -> float:
    """Share of ``data``'s bytes that are non-text (0 for no bytes)."""
    return nontext_bytes(data) / len(data) if data else 0.0


class TextSniffer:
    """Judges a shard's decompressed bytes as they are read (see the module docstring).

    Feed it every chunk in order (`feed`), then call `finish`; either raises
    `BinaryShardError` (NUL bytes) or `NotTextShardError`. `chunks` does both for a stream
    of chunks and holds them back until the first window is judged.
    """

    def __init__(self, path: str, window: int = TEXT_WINDOW_BYTES,
                 threshold: float = MAX_NONTEXT_SHARE):
        self.path = path
        self.window = int(window)
        self.threshold = threshold
        self.seen = 0  # bytes fed
        self.judged = 0  # bytes judged in whole aligned windows
        self.pending = b""  # bytes fed after the last judged window
        self.last = b""  # the last `window` bytes fed

    @property
    def first_window_judged(self) -> bool:
        return self.judged > 0

    def feed(self, chunk: bytes) -> None:
        if self.seen < NUL_SNIFF_BYTES and b"\0" in chunk[:NUL_SNIFF_BYTES - self.seen]:
            raise BinaryShardError(f"shard looks binary (NUL bytes), skipped: {self.path}")
        self.seen += len(chunk)
        self.last = chunk[-self.window:] if len(chunk) >= self.window else \
            (self.last + chunk)[-self.window:]
        data = self.pending + chunk if self.pending else chunk
        whole = len(data) - len(data) % self.window
        for start in range(0, whole, self.window):
            self._judge(data[start:start + self.window], self.judged)
            self.judged += self.window
        self.pending = data[whole:]

    def finish(self) -> None:
        """Judge the last window (the shard's last `window` bytes) if not judged yet."""
        if self.pending:
            self._judge(self.last, self.seen - len(self.last))
            self.pending = b""

    def chunks(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks``, each judged before it is passed on (the first held back until the
        first window is judged, or the stream ends)."""
        held: list[bytes] = []
        for chunk in chunks:
            self.feed(chunk)
            held.append(chunk)
            if self.first_window_judged:
                yield from held
                held = []
        self.finish()
        yield from held

    def _judge(self, window: bytes, start: int) -> None:
        share = nontext_share(window)
        if share > self.threshold:
            where = "" if start == 0 else f" from byte {start:,} on"
            raise NotTextShardError(
                f"shard does not look like text{where} ({share:.0%} of bytes {start:,}-"
                f"{start + len(window):,} are invalid UTF-8 or control bytes, more than "
                f"{self.threshold:.0%}), skipped whole: {self.path}; if it is text in another "
                "encoding, convert it to UTF-8 (e.g. with iconv)")
