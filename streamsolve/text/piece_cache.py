"""An exact piece -> ids cache for byte-level BPE: frequent pieces cost one dict lookup.

A byte-level BPE tokenizer (GPT-2 style: ``ByteLevel`` pre-tokenizer with its regex, no
prefix space) cuts a line into pieces with one regex and encodes each piece on its own, so
the ids of a line are the concatenation of the ids of its pieces, and a piece seen before
needs no BPE at all. `PieceCache` does exactly that for ASCII text, where the regex's
classes (``\\p{L}``, ``\\p{N}``, ``\\s``) have one unambiguous meaning that Python's `re`
can reproduce; a line with any non-ASCII character, or with the text of an added token in
it, is left to the tokenizer itself (the caller's fallback). Misses are encoded by the
tokenizer's own model (``Tokenizer.model.tokenize`` of the byte-mapped piece), so the ids
are the tokenizer's by construction, and the tests compare them with ``Tokenizer.encode``
line by line on real and adversarial text.

Supported (`PieceCache.for_tokenizer` returns None otherwise, and callers use the plain
path): model ``BPE`` without dropout; pre-tokenizer ``ByteLevel`` with ``use_regex`` and
without ``add_prefix_space`` (alone or as the only step of a ``Sequence``); normalizer
none or Unicode normalization (``NFC``/``NFD``/``NFKC``/``NFKD``, identity on ASCII, alone or
in a ``Sequence``); no truncation or padding. Not supported (plain path): WordPiece,
Unigram/SentencePiece (``Metaspace``), custom ``Split`` regexes, lowercasing normalizers.
"""

from __future__ import annotations

import array
import functools
import itertools
import json
import re
import threading
from collections.abc import Callable

import numpy as np

#: Distinct pieces kept; the cache is emptied when a batch starts above it (bounded memory:
#: about 120 bytes a piece, so about 32 MB with one batch's new pieces; 10 MB of English
#: dictionary text has about 120k distinct pieces).
MAX_PIECES = 1 << 18

_W = "\\t\\x0b\\x0c\\r "  # ASCII whitespace as the tokenizer's regex engine sees it (no \x1c-\x1f)
#: The GPT-2 split regex of ``ByteLevel`` restricted to ASCII, made newline-aware: a
#: whitespace run never crosses a ``\n`` (it ends with it), so pieces of several joined
#: lines are the pieces of each line on its own.
ASCII_PIECES = re.compile(
    "'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+"
    f"| ?[^\\n{_W}A-Za-z0-9]+|[{_W}]*\\n|[{_W}]+(?![^\\n{_W}])|[{_W}]+")
_UNICODE_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD"}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map that ``ByteLevel`` applies before the model."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD))
                 + list(range(0xAE, 0x100)))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_BYTE_LEVEL = _bytes_to_unicode()
_ASCII_TO_BYTE_LEVEL = {b: c for b, c in _BYTE_LEVEL.items() if b < 128}
_LATIN1_TO_BYTE_LEVEL = dict(_BYTE_LEVEL)
#: ASCII stand-ins of the regex's classes: a non-ASCII character is replaced by the one of
#: its class before splitting (the split depends only on classes, ``' '``, ``'\n'`` and
#: the ASCII letters of the contractions, none of which stands in for anything).
_STAND_IN = {"L": "a", "N": "0", "O": "!", "S": "\t"}


def _normalizer_is_identity_on_ascii(node) -> bool:
    if node is None:
        return True
    if node.get("type") == "Sequence":
        return all(_normalizer_is_identity_on_ascii(n) for n in node.get("normalizers", []))
    return node.get("type") in _UNICODE_NORMALIZERS


def _is_gpt2_byte_level(node) -> bool:
    if node is None:
        return False
    if node.get("type") == "Sequence":
        steps = node.get("pretokenizers", [])
        return len(steps) == 1 and _is_gpt2_byte_level(steps[0])
    return (node.get("type") == "ByteLevel" and node.get("use_regex", True)
            and not node.get("add_prefix_space", False))


def cache_supported(spec: dict) -> bool:
    """Whether a tokenizer.json (parsed) can be encoded exactly through `PieceCache`."""
    model = spec.get("model") or {}
    return (model.get("type") == "BPE" and not model.get("dropout")
            and _normalizer_is_identity_on_ascii(spec.get("normalizer"))
            and _is_gpt2_byte_level(spec.get("pre_tokenizer"))
            and spec.get("truncation") is None and spec.get("padding") is None)


class PieceCache:
    """Ids of ASCII lines through a bounded piece -> ids cache (see the module docstring).

    Parameters
    ----------
    model : tokenizers.models.Model
        The tokenizer's model; encodes each piece missing from the cache.
    added_tokens : list of str
        Texts of the tokenizer's added tokens: a line holding one goes to the fallback.
    max_pieces : int
        Distinct pieces kept at most (the cache is emptied when a batch starts above it).
    """

    def __init__(self, model, added_tokens: list[str], max_pieces: int = MAX_PIECES,
                 pre_tokenizer=None, normalizer=None):
        self.model = model
        self.pre_tokenizer = pre_tokenizer
        self.normalizer = normalizer
        self._stand_ins: dict[int, str | None] = {}
        contents = sorted({t for t in added_tokens if t}, key=len, reverse=True)
        self._added = re.compile("|".join(map(re.escape, contents))) if contents else None
        self.max_pieces = max_pieces
        self._lock = threading.Lock()  # one writer of the tables at a time (threads scheduler)
        self._clear()

    def _clear(self) -> None:
        self._codes: dict[str, int] = {}
        self._starts = array.array("q", [0])
        self._ids = array.array("q")
        self._tables = None

    @classmethod
    def for_tokenizer(cls, tokenizer_text: str, max_pieces: int = MAX_PIECES):
        """A cache for this tokenizer JSON, or None when exactness cannot be guaranteed."""
        spec = json.loads(tokenizer_text)
        if not cache_supported(spec):
            return None
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(tokenizer_text)
        return cls(tokenizer.model, [t.get("content", "") for t in spec.get("added_tokens") or []],
                   max_pieces, tokenizer.pre_tokenizer, tokenizer.normalizer)

    def __len__(self) -> int:
        return len(self._codes)

    def cacheable(self, text: str) -> bool:
        """Whether ``text`` is encoded here (ASCII, no added token's text in it)."""
        return text.isascii() and (self._added is None or self._added.search(text) is None)

    def _stand_in(self, char: str) -> str | None:
        """The ASCII stand-in of a non-ASCII character's regex class, asked of the tokenizer's
        own pre-tokenizer once per character (None: unclassified, the line is not cached)."""
        code = ord(char)
        if code not in self._stand_ins:
            self._stand_ins[code] = self._probe(char)
        return self._stand_ins[code]

    def _probe(self, char: str) -> str | None:
        if self.pre_tokenizer is None:
            return None
        try:
            char.encode("utf-8")
        except UnicodeEncodeError:
            return None

        def n_pieces(text: str) -> int:
            return len(self.pre_tokenizer.pre_tokenize_str(text))

        joins = [kind for kind, before in (("L", "a"), ("N", "0"), ("O", "!"))
                 if n_pieces(before + char) == 1]
        if len(joins) == 1 and n_pieces(char * 3) == 1:
            return _STAND_IN[joins[0]]
        if not joins and n_pieces("!" + char * 2) == 2 and n_pieces(char * 3) == 1:
            return _STAND_IN["S"]
        return None

    def prepare_line(self, line: str) -> tuple[str, str] | None:
        """``(normalized line, its ASCII stand-in text)``, or None when it cannot be cached.

        The line is normalized by the tokenizer's own normalizer; every non-ASCII character
        of the result is replaced by the ASCII stand-in of its class, so `ASCII_PIECES`
        splits it where the tokenizer's regex would.
        """
        if self._added is not None and self._added.search(line):
            return None
        text = self.normalizer.normalize_str(line) if self.normalizer is not None else line
        if text.isascii():
            return text, text
        if self._added is not None and self._added.search(text):
            return None
        table = {}
        for char in set(text):
            if ord(char) > 127:
                stand_in = self._stand_in(char)
                if stand_in is None:
                    return None
                table[ord(char)] = stand_in
        return text, text.translate(table)

    def _add(self, piece: str) -> int:
        if piece.isascii():
            mapped = piece.translate(_ASCII_TO_BYTE_LEVEL)
        else:
            mapped = piece.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_LEVEL)
        ids = [token.id for token in self.model.tokenize(mapped)]
        code = len(self._starts) - 1
        self._ids.extend(ids)
        self._starts.append(len(self._ids))
        self._codes[piece] = code
        self._tables = None
        return code

    def _piece_codes(self, text: str | tuple[str, str]) -> np.ndarray:
        if isinstance(text, str):
            pieces = ASCII_PIECES.findall(text)
        else:
            original, stand_ins = text
            ends = list(itertools.accumulate(map(len, ASCII_PIECES.findall(stand_ins))))
            pieces = [original[a:b] for a, b in zip([0] + ends, ends)]
        try:
            return np.fromiter(map(self._codes.__getitem__, pieces), np.int64, len(pieces))
        except KeyError:
            codes = self._codes
            for piece in pieces:
                if piece not in codes:
                    self._add(piece)
            return np.fromiter(map(codes.__getitem__, pieces), np.int64, len(pieces))

    def _gather(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids of pieces given by code (int64), and the number of ids of each piece."""
        if self._tables is None:
            starts = np.array(self._starts, dtype=np.int64)
            self._tables = (starts, np.diff(starts), np.array(self._ids, dtype=np.int64))
        starts, lengths, ids = self._tables
        per_piece = lengths[codes]
        if codes.size and per_piece.min() == 1 and per_piece.max() == 1:
            return ids[starts[codes]], per_piece
        first_out = np.cumsum(per_piece) - per_piece
        take = np.repeat(starts[codes] - first_out, per_piece) + np.arange(int(per_piece.sum()))
        return ids[take], per_piece

    def encode(self, texts: list) -> tuple[np.ndarray, np.ndarray]:
        """Ids of cacheable texts concatenated (int64), and the number of ids of each text.

        Each text is an ASCII tokenizer input made of whole lines (``\\n``-terminated, the
        last one possibly not; `cacheable`) or a line as `prepare_line` returns it: its ids
        are those of each line encoded on its own by the tokenizer.
        """
        with self._lock:
            if len(self._codes) > self.max_pieces:
                self._clear()
            parts = [self._piece_codes(text) for text in texts]
            pieces_per_text = np.fromiter(map(len, parts), np.int64, len(parts))
            codes = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            flat, per_piece = self._gather(codes)
        ends = np.cumsum(pieces_per_text)
        cumulative = np.concatenate([[0], np.cumsum(per_piece)])
        per_text = cumulative[ends] - cumulative[ends - pieces_per_text]
        return flat, per_text


def _lines(text: str) -> list[str]:
    """``text`` cut after every ``\\n`` (only there), nothing lost."""
    lines = text.split("\n")
    last = lines.pop()
    out = [line + "\n" for line in lines]
    if last:
        out.append(last)
    return out


def encode_with_cache(cache: PieceCache, inputs: list[str],
                      fallback: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Ids of tokenizer inputs (each made of whole lines): cached where possible.

    Lines the cache cannot encode (non-ASCII, added tokens) are encoded by ``fallback``
    (``list[str] -> (flat ids, ids per text)``, the plain tokenizer path), in one call.

    Returns
    -------
    (np.ndarray, np.ndarray)
        All ids concatenated (int64) and the number of ids of each input.
    """
    segments, owner, cached = [], [], []
    for i, text in enumerate(inputs):
        if cache.cacheable(text):
            segments.append(text), owner.append(i), cached.append(True)
            continue
        for line in _lines(text):
            prepared = cache.prepare_line(line)
            segments.append(line if prepared is None else prepared)
            owner.append(i), cached.append(prepared is not None)
    is_cached = np.asarray(cached, dtype=bool)
    counts = np.zeros(len(segments), dtype=np.int64)
    pieces = []
    for flag in (True, False):
        chosen = np.flatnonzero(is_cached == flag)
        if chosen.size:
            texts = [segments[j] for j in chosen]
            flat, per_text = cache.encode(texts) if flag else fallback(texts)
            counts[chosen] = per_text
            pieces.append((chosen, flat, per_text))
    out = np.empty(int(counts.sum()), dtype=np.int64)
    seg_start = np.cumsum(counts) - counts
    for chosen, flat, per_text in pieces:
        first = np.cumsum(per_text) - per_text
        out[np.repeat(seg_start[chosen] - first, per_text) + np.arange(flat.size)] = flat
    per_input = np.bincount(np.asarray(owner, dtype=np.int64), weights=counts,
                            minlength=len(inputs)).astype(np.int64)
    return out, per_input


@functools.lru_cache(maxsize=8)
def piece_cache(tokenizer_text: str) -> PieceCache | None:
    """The process's `PieceCache` of a tokenizer (None when unsupported); one per process."""
    return PieceCache.for_tokenizer(tokenizer_text)
