"""Tokenizers: train a byte-level BPE on a corpus sample, or load any ``tokenizer.json``.

Token ids are fixed once, by the tokenizer, and never renumbered. The beginning-of-document
token (BOS) pads the context before the first tokens of every document: a trained tokenizer
reserves ``<|doc|>`` as id 0; a loaded one uses ``bos_token`` or the first of
`BOS_CANDIDATES` it knows.

Bounds on hostile input:

- A vocabulary has at most `MAX_VOCAB_SIZE` (2**24) ids, checked before the trainer or the
  tokenizers library allocates anything (the trainer reserves memory per id up front: about
  50 MB at 2**24, an abort at 10**9). A loaded ``tokenizer.json`` is checked first
  (`validate_tokenizer_json`): ids unique, non-negative integers, below the cap and dense
  (at most as many unused ids below the largest as it has tokens, or `MAX_UNUSED_IDS`).
- The trainer never sees a pre-token longer than `MAX_PIECE_CHARS` (256) characters
  (`training_pieces`): BPE training is quadratic in the length of a pre-token, and a long
  run without whitespace is one pre-token (a 2 MB line of letters ran over 1,000 s).
  Normal text has no pre-token that long, so its tokenizer is unchanged. The cap is on the
  training text only: the trained tokenizer keeps the ordinary byte-level pre-tokenizer and
  encodes a long run as a whole, exactly and the same everywhere (its BPE merges a word in
  O(n log n), and the reader bounds every input by the store's ``max_line_bytes``); a long
  run is merely split into more, shorter tokens, as its merges were learnt on pieces.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator

import fsspec
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

logger = logging.getLogger(__name__)

TRAINED_BOS = "<|doc|>"
BOS_CANDIDATES = (TRAINED_BOS, "<|endoftext|>", "<s>", "<bos>", "<|begin_of_text|>",
                  "<SOS>", "[CLS]", "<EOT>")
MIN_VOCAB_SIZE = 257 + 1  # 256 byte symbols + BOS, plus at least one merge
#: Most token ids a vocabulary may have: 2**24 (16,777,216). The largest published
#: vocabularies have about 10**6; a count run holds arrays of V counts (128 MiB each at
#: 2**24, see `streamsolve.engine.memory.max_vocab_size`), and the trainer reserves memory
#: per id before it starts.
MAX_VOCAB_SIZE = 1 << 24
#: Longest pre-token (in characters) the BPE trainer is given; longer ones are cut.
MAX_PIECE_CHARS = 256
#: Unused ids a loaded tokenizer may have below its largest id (or as many as its tokens).
MAX_UNUSED_IDS = 1024


class TokenizerError(ValueError):
    """A tokenizer cannot be trained, loaded or used; the message says why."""


def check_vocab_size(vocab_size: int, option: str = "vocab-size") -> None:
    """Refuse a vocabulary size the trainer cannot or must not reach (``option`` names it).

    Raises
    ------
    TokenizerError
        Below `MIN_VOCAB_SIZE` or above `MAX_VOCAB_SIZE`.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(f"{option} must be an integer, got {vocab_size!r}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"{option} {vocab_size} is too small: a byte-level BPE needs at least "
            f"{MIN_VOCAB_SIZE} (256 bytes + BOS + one merge)"
        )
    if vocab_size > MAX_VOCAB_SIZE:
        raise TokenizerError(f"{option} {vocab_size} is above the largest vocabulary "
                             f"supported: at most {MAX_VOCAB_SIZE} (2^24) token ids")


def train_bpe(lines: Iterable[str], vocab_size: int,
              max_piece_chars: int | None = MAX_PIECE_CHARS) -> Tokenizer:
    """Train a byte-level BPE tokenizer (in this process: see
    `streamsolve.text.training_process` for a run that signals can stop).

    Parameters
    ----------
    lines : iterable of str
        Training text (a bounded sample of the corpus).
    vocab_size : int
        Target vocabulary size, BOS and the 256 byte symbols included. The trainer stops
        early when the sample has no more pairs to merge.
    max_piece_chars : int or None
        Pre-tokens longer than this are cut before training (`training_pieces`); None
        trains on the text as it is.

    Returns
    -------
    tokenizers.Tokenizer
    """
    check_vocab_size(vocab_size)
    if max_piece_chars is not None:
        lines = training_pieces(lines, max_piece_chars)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[TRAINED_BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    logger.info("trained byte-level BPE: %d tokens (asked for %d)",
                tokenizer.get_vocab_size(), vocab_size)
    return tokenizer


def training_pieces(lines: Iterable[str], max_chars: int = MAX_PIECE_CHARS) -> Iterator[str]:
    """The training text with every pre-token longer than ``max_chars`` characters cut.

    Pre-tokens are those of the byte-level pre-tokenizer (GPT-2's pattern: a run of
    letters, of digits or of other symbols, with at most one leading space; or a run of
    whitespace). A line holding none that long (no run of ``max_chars`` non-space or
    ``max_chars + 1`` space characters) is passed on whole; otherwise it is passed on in
    parts: the text between long pre-tokens, and each long one in pieces of ``max_chars``.
    The parts joined are the line: no text is lost.
    """
    long_run = re.compile(rf"\S{{{max_chars},}}|\s{{{max_chars + 1},}}")
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    for line in lines:
        if long_run.search(line) is None:
            yield line
            continue
        start = 0  # the line's text not passed on yet
        for _, (begin, end) in pre.pre_tokenize_str(line):
            if end - begin > max_chars:
                if begin > start:
                    yield line[start:begin]
                for cut in range(begin, end, max_chars):
                    yield line[cut:min(cut + max_chars, end)]
                start = end
        if start < len(line):
            yield line[start:]


def load_tokenizer(path: str, storage_options: dict | None = None) -> Tokenizer:
    """Load a HuggingFace ``tokenizer.json`` from a local path or fsspec URL."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8", **(storage_options or {})) as handle:
            text = handle.read()
    except FileNotFoundError as exc:
        raise TokenizerError(f"tokenizer file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"tokenizer file not readable: {path}: {exc}") from exc
    return tokenizer_from_json(text, source=path)


@functools.lru_cache(maxsize=8)
def tokenizer_from_json(text: str, source: str = "<json>") -> Tokenizer:
    """Build a tokenizer from its JSON text (cached: workers receive the JSON, not the object),
    checked first by `validate_tokenizer_json`."""
    validate_tokenizer_json(text, source)
    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise TokenizerError(f"not a valid tokenizer.json: {source}: {exc}") from exc


def validate_tokenizer_json(text: str, source: str = "<json>") -> int:
    """Check a tokenizer's ids before the tokenizers library builds it; return V (its
    largest id + 1).

    The ids of the model's vocabulary (a token -> id map, or a Unigram model's list, whose
    ids are its positions) and of its added tokens must be non-negative integers below
    `MAX_VOCAB_SIZE`; an id may name one token only (an added token may repeat the
    vocabulary's entry for it); and at most as many ids below the largest may be unused
    as it has tokens (or `MAX_UNUSED_IDS`): counts are arrays indexed by id.

    Raises
    ------
    TokenizerError
        One line naming ``source`` and the first problem found.
    """
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise TokenizerError(f"not a valid tokenizer.json: {source}: {exc}") from None
    if not isinstance(spec, dict):
        raise TokenizerError(f"not a valid tokenizer.json: {source}: not a JSON object")
    tokens: dict[int, str] = {}
    for token, token_id in _tokenizer_ids(spec, source):
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise TokenizerError(f"{source}: the id of token {token!r} is not an integer: "
                                 f"{token_id!r}")
        if not 0 <= token_id < MAX_VOCAB_SIZE:
            raise TokenizerError(
                f"{source}: token {token!r} has id {token_id}: " + (
                    "negative" if token_id < 0 else
                    f"ids must be below {MAX_VOCAB_SIZE} (2^24, the most supported)"))
        other = tokens.setdefault(token_id, token)
        if other != token:
            raise TokenizerError(f"{source}: id {token_id} is both {other!r} and {token!r}; "
                                 "each id must name one token")
    if not tokens:
        return 0
    size = max(tokens) + 1
    unused = size - len(tokens)
    if unused > max(MAX_UNUSED_IDS, len(tokens)):
        raise TokenizerError(
            f"{source}: its ids are not dense: the largest is {size - 1} but it has "
            f"{len(tokens)} tokens ({unused} ids unused, at most "
            f"{max(MAX_UNUSED_IDS, len(tokens))} allowed); number its tokens 0..{len(tokens) - 1}")
    return size


def _tokenizer_ids(spec: dict, source: str) -> Iterator[tuple[str, object]]:
    """``(token, id)`` of a tokenizer's vocabulary, then of its added tokens."""
    vocab = (spec.get("model") or {}).get("vocab") if isinstance(spec.get("model"), dict) else None
    if isinstance(vocab, dict):
        yield from vocab.items()
    elif isinstance(vocab, list):  # Unigram: [piece, score] entries, ids are positions
        for position, entry in enumerate(vocab):
            yield (entry[0] if isinstance(entry, list) and entry else entry), position
    for added in spec.get("added_tokens") or []:
        if not isinstance(added, dict):
            raise TokenizerError(f"not a valid tokenizer.json: {source}: an added token is "
                                 f"not an object: {added!r}")
        yield added.get("content"), added.get("id")


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """The tokenizer's canonical JSON text."""
    return tokenizer.to_str()


def is_tokenizer_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a Rust panic escaping from ``tokenizers`` (pyo3's ``PanicException``
    derives from `BaseException`, e.g. a pre-tokenizer regex hitting its retry limit)."""
    return type(exc).__name__ == "PanicException"


def describe_tokenizer(text: str) -> str:
    """A short name of a tokenizer JSON: its model type and the start of its sha256."""
    try:
        model = (json.loads(text).get("model") or {}).get("type") or "tokenizer"
    except (ValueError, AttributeError):
        model = "tokenizer"
    return f"{model} tokenizer (sha256 {tokenizer_hash(text)[:12]})"


def panic_error(exc: BaseException, tokenizer_text: str) -> "TokenizerError":
    """The one-line `TokenizerError` for a panic of ``tokenizers`` (see `is_tokenizer_panic`)."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TokenizerError(f"the {describe_tokenizer(tokenizer_text)} failed inside the "
                          f"tokenizers library: {reason} (a pre-tokenizer regex that "
                          "backtracks too much on a line); fix its pattern or that text")


def tokenizer_hash(text: str) -> str:
    """SHA-256 of a tokenizer's JSON text: its identity in a store."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def find_bos(tokenizer: Tokenizer, bos_token: str | None = None) -> tuple[str | None, int]:
    """Return the BOS token and its id.

    Without ``bos_token``, the first of `BOS_CANDIDATES` in the vocabulary; when it has
    none, ``(None, V)``: an id reserved past the vocabulary (the counts then have V + 1 ids,
    and the reserved one only ever pads contexts).

    Raises
    ------
    TokenizerError
        If ``bos_token`` is not in the vocabulary.
    """
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if bos_token is not None:
        if bos_token not in vocab:
            raise TokenizerError(f"BOS token {bos_token!r} is not in the tokenizer's vocabulary")
        return bos_token, vocab[bos_token]
    for candidate in BOS_CANDIDATES:
        if candidate in vocab:
            return candidate, vocab[candidate]
    V = vocab_size_of(tokenizer)
    logger.info("the tokenizer has none of the usual beginning-of-document tokens (%s): "
                "reserving id %d past its vocabulary as BOS (V = %d); --bos-token names one of "
                "its own tokens instead", ", ".join(BOS_CANDIDATES), V, V + 1)
    return None, V


def vocab_size_of(tokenizer: Tokenizer) -> int:
    """Number of token ids (added tokens included); ids are 0..V-1."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    return max(vocab.values()) + 1
