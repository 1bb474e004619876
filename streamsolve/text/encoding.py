"""The line-safe batched encoder: token ids of lines, each as if tokenized on its own.

Counting, evaluation and the benchmarks all tokenize text through `LineEncoder`, so the ids
of a line never depend on which lines share a tokenizer input with it. Many lines (and many
pieces) are joined into large ``encode_batch_fast`` inputs whenever the tokenizer makes that
exact (see `line_tokenizer` and `piece_marker`): about twice as fast as one input per line.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import threading
from collections.abc import Callable

import numpy as np

from .piece_cache import encode_with_cache, piece_cache
from .tokenizer import is_tokenizer_panic, panic_error, tokenizer_from_json

#: Lines of one piece joined into one tokenizer input (per-input overhead halves throughput
#: when every line is its own input).
CHUNK_LINES = 256
#: Characters per joined input at most (a long line still goes alone).
CHUNK_CHARS = 1 << 13

_LINE_SPLIT = {"type": "Split", "pattern": {"String": "\n"}, "behavior": "MergedWithPrevious",
               "invert": False}
_SAFE_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "BertNormalizer",
                     "StripAccents", "Nmt"}


def _normalizer_is_per_character(node) -> bool:
    if node is None:
        return True
    kind = node.get("type")
    if kind == "Sequence":
        return all(_normalizer_is_per_character(n) for n in node.get("normalizers", []))
    if kind == "Replace":
        pattern = node.get("pattern", {})
        return "String" in pattern and "\n" not in pattern["String"]
    return kind in _SAFE_NORMALIZERS


def _pre_tokenizer_is_per_split(node) -> bool:
    if node is None:
        return True
    kind = node.get("type")
    if kind == "Sequence":
        return all(_pre_tokenizer_is_per_split(n) for n in node.get("pretokenizers", []))
    if kind == "Metaspace":
        return node.get("prepend_scheme", "always") != "first"
    return kind in ("ByteLevel", "Whitespace", "WhitespaceSplit", "BertPreTokenizer",
                    "Punctuation", "Digits", "Split", "UnicodeScripts", "CharDelimiterSplit")


@functools.lru_cache(maxsize=8)
def line_tokenizer(tokenizer_text: str):
    """``(tokenizer, joinable)``: a tokenizer that never lets a token cross a line end.

    When the tokenizer's normalizer works character by character and its pre-tokenizer
    splits each piece on its own (byte-level BPE, WordPiece, ... — not SentencePiece's
    "prepend to the first piece only"), a first pre-tokenizer step that cuts after every
    newline makes the ids of several joined lines exactly the ids of each line tokenized on
    its own. Lines can then be joined into large tokenizer inputs (about twice as fast)
    without changing a single count. Otherwise ``joinable`` is False and each line stays
    its own input.
    """
    spec = json.loads(tokenizer_text)
    joinable = (_normalizer_is_per_character(spec.get("normalizer"))
                and _pre_tokenizer_is_per_split(spec.get("pre_tokenizer"))
                and not any("\n" in t.get("content", "")[:-1] for t in spec.get("added_tokens") or []))
    if not joinable:
        return tokenizer_from_json(tokenizer_text), False
    pre = spec.get("pre_tokenizer")
    spec["pre_tokenizer"] = {"type": "Sequence",
                             "pretokenizers": [_LINE_SPLIT] + ([pre] if pre else [])}
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(spec)), True


def tokenizer_inputs(pieces, joinable: bool) -> tuple[list[str], np.ndarray]:
    """Tokenizer inputs of a block's pieces, and how many inputs each piece has."""
    inputs: list[str] = []
    per_piece = np.zeros(len(pieces), dtype=np.int64)
    for p, (lines, _) in enumerate(pieces):
        if not joinable:
            inputs.extend(lines)
            per_piece[p] = len(lines)
            continue
        before = len(inputs)
        chunk: list[str] = []
        size = 0
        for line in lines:
            if chunk and (len(chunk) >= CHUNK_LINES or size + len(line) > CHUNK_CHARS):
                inputs.append("".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
            if not line.endswith("\n"):  # a piece of a cut long line is tokenized on its own
                inputs.append("".join(chunk))
                chunk, size = [], 0
        if chunk:
            inputs.append("".join(chunk))
        per_piece[p] = len(inputs) - before
    return inputs, per_piece


def whole_piece_inputs(pieces) -> tuple[list[str], np.ndarray]:
    """One input per piece (its lines joined) where that is exact, for the piece cache.

    The cache splits joined lines where each line ends, so a piece is one input unless a
    line cut by the reader (no ``\\n``) is followed by more of it; such a piece is cut
    as `tokenizer_inputs` cuts it.
    """
    inputs: list[str] = []
    per_piece = np.zeros(len(pieces), dtype=np.int64)
    for p, (lines, _) in enumerate(pieces):
        text = "".join(lines)
        ends = text.count("\n")
        if ends == len(lines) or (ends == len(lines) - 1 and not lines[-1].endswith("\n")):
            inputs.append(text)
            per_piece[p] = 1
        else:
            more, _ = tokenizer_inputs([(lines, None)], True)
            inputs.extend(more)
            per_piece[p] = len(more)
    return inputs, per_piece


@functools.lru_cache(maxsize=8)
def piece_marker(tokenizer_text: str, bos_id: int) -> tuple[str, int] | None:
    """``(text, id)`` of a special added token that can separate pieces in one input.

    Added special tokens are cut out of the text before normalization and
    pre-tokenization, so a marker between two pieces never changes their ids; the BOS token
    (when it is a special added token) is used, its id found back in the output.
    """
    spec = json.loads(tokenizer_text)
    for token in spec.get("added_tokens") or []:
        if token.get("id") == bos_id and token.get("special") and token.get("content"):
            return token["content"], int(bos_id)
    return None


#: Characters of text given to the tokenizer at a time: its per-token objects (about 150 bytes
#: a token while they live) stay small, and are returned to the OS after each batch.
ENCODE_BATCH_CHARS = 1 << 20
#: Taken around each batch with ``serial`` (a tight memory plan: one batch at a time per
#: process; see `streamsolve.engine.memory.MemoryPlan.serial_tokenizer`).
_ENCODE_LOCK = threading.Lock()


def encode_inputs(tokenizer, inputs: list[str], *, serial: bool = False,
                  after_batch: Callable[[], object] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ids of all inputs concatenated (int64) and the number of ids of each input.

    Inputs are encoded ``ENCODE_BATCH_CHARS`` at a time with ``encode_batch_fast`` (parallel
    over inputs), each batch's `Encoding` objects turned into ids and dropped before the next.
    With ``serial``, one batch at a time runs in this process; ``after_batch`` is called
    after each batch (the memory plan's heap trimming, see `streamsolve.engine.memory`).
    """
    flats, lengths = [], []
    start = 0
    while start < len(inputs):
        stop, size = start, 0
        while stop < len(inputs) and (stop == start or size + len(inputs[stop]) <= ENCODE_BATCH_CHARS):
            size += len(inputs[stop])
            stop += 1
        with _ENCODE_LOCK if serial else contextlib.nullcontext():
            encodings = tokenizer.encode_batch_fast(inputs[start:stop], add_special_tokens=False)
        per_input = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
        flats.append(np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings),
                                 dtype=np.int64, count=int(per_input.sum())))
        lengths.append(per_input)
        del encodings
        if after_batch is not None:
            after_batch()
        start = stop
    if not flats:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(flats), np.concatenate(lengths)


class LineEncoder:
    """Token ids of read pieces, each line as if tokenized on its own (newline included).

    Parameters
    ----------
    tokenizer_text : str
        The tokenizer's JSON (the tokenizer is built once per process and cached).
    bos_id : int, optional
        The BOS id; when it is a special added token, many pieces share one tokenizer
        input, separated by it (fastest).
    serial : bool
        Encode one batch at a time in this process (tight memory).
    after_batch : callable, optional
        Called after each tokenizer batch (heap trimming under a memory plan).
    cached : bool
        Encode through the process's exact piece -> ids cache when the tokenizer allows it
        (`streamsolve.text.piece_cache`; same ids, several times faster); False: always
        the tokenizer itself.

    Notes
    -----
    A piece is ``(lines, starts)`` as `streamsolve.text.reading.iter_document_pieces` yields
    it; a piece of a line cut by the reader is tokenized on its own, like a line.
    """

    def __init__(self, tokenizer_text: str, bos_id: int | None = None, *, serial: bool = False,
                 after_batch: Callable[[], object] | None = None, cached: bool = True):
        self.tokenizer_text = tokenizer_text
        self.bos_id = bos_id
        self.serial = serial
        self.after_batch = after_batch
        self.tokenizer, self.joinable = line_tokenizer(tokenizer_text)
        self.cache = piece_cache(tokenizer_text) if cached and self.joinable else None

    def _encode(self, inputs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is not None:
            return encode_with_cache(self.cache, inputs, self._encode_plain)
        return self._encode_plain(inputs)

    def _encode_plain(self, inputs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        try:
            return encode_inputs(self.tokenizer, inputs, serial=self.serial,
                                 after_batch=self.after_batch)
        except BaseException as exc:
            if is_tokenizer_panic(exc):
                raise panic_error(exc, self.tokenizer_text) from None
            raise

    def encode_pieces(self, pieces) -> tuple[np.ndarray, np.ndarray]:
        """All ids of the pieces concatenated (int64), and the number of ids per piece."""
        if (self.cache is None and self.joinable and self.bos_id is not None
                and len(pieces) > 1):
            marker = piece_marker(self.tokenizer_text, self.bos_id)
            if marker is not None:
                out = self._encode_joined(pieces, marker)
                if out is not None:
                    return out
        if self.cache is not None:
            inputs, per_piece = whole_piece_inputs(pieces)
        else:
            inputs, per_piece = tokenizer_inputs(pieces, self.joinable)
        if not inputs:
            return np.zeros(0, np.int64), np.zeros(len(pieces), np.int64)
        flat, per_input = self._encode(inputs)
        bounds = np.concatenate([[0], np.cumsum(per_piece)])
        cumulative = np.concatenate([[0], np.cumsum(per_input)])
        lengths = cumulative[bounds[1:]] - cumulative[bounds[:-1]]
        return flat, lengths

    def encode_documents(self, pieces) -> list[tuple[np.ndarray, bool]]:
        """Ids of each piece, and whether it starts a document."""
        flat, lengths = self.encode_pieces(pieces)
        ends = np.cumsum(lengths)
        return [(flat[end - n:end], starts) for (_, starts), n, end in zip(pieces, lengths, ends)]

    def _encode_joined(self, pieces, marker) -> tuple[np.ndarray, np.ndarray] | None:
        """Ids of many pieces per tokenizer input, separated by ``marker``; None if unsafe."""
        text, marker_id = marker
        inputs: list[str] = []
        chunk: list[str] = []
        size = 0
        for p, (lines, _) in enumerate(pieces):
            if p:
                chunk.append(text)
            for line in lines:
                chunk.append(line)
                size += len(line)
                if size >= CHUNK_CHARS or not line.endswith("\n"):  # pieces of cut lines: alone
                    inputs.append("".join(chunk))
                    chunk, size = [], 0
        if chunk:
            inputs.append("".join(chunk))
        if sum(i.count(text) for i in inputs) != len(pieces) - 1:
            return None  # the text itself contains the marker
        flat, _ = self._encode(inputs)
        cuts = np.flatnonzero(flat == marker_id)
        if cuts.size != len(pieces) - 1:
            return None
        bounds = np.concatenate([[-1], cuts, [flat.size]])
        lengths = np.diff(bounds) - 1
        return np.delete(flat, cuts), lengths
