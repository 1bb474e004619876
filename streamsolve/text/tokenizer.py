"""Tokenizers: train a byte-level BPE on a corpus sample, or load any ``tokenizer.json``.

Token ids are fixed once, by the tokenizer, and never renumbered. The beginning-of-document
token (BOS) pads the context before the first tokens of every document: a trained tokenizer
reserves ``<|doc|>`` as id 0; a loaded one uses ``bos_token`` or the first of
`BOS_CANDIDATES` it knows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable

import fsspec
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

logger = logging.getLogger(__name__)

TRAINED_BOS = "<|doc|>"
BOS_CANDIDATES = (TRAINED_BOS, "<|endoftext|>", "<s>", "<bos>", "<|begin_of_text|>",
                  "<SOS>", "[CLS]", "<EOT>")
MIN_VOCAB_SIZE = 257 + 1  # 256 byte symbols + BOS, plus at least one merge


class TokenizerError(ValueError):
    """A tokenizer cannot be trained, loaded or used; the message says why."""


def train_bpe(lines: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer.

    Parameters
    ----------
    lines : iterable of str
        Training text (a bounded sample of the corpus).
    vocab_size : int
        Target vocabulary size, BOS and the 256 byte symbols included. The trainer stops
        early when the sample has no more pairs to merge.

    Returns
    -------
    tokenizers.Tokenizer
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"vocab-size {vocab_size} is too small: a byte-level BPE needs at least "
            f"{MIN_VOCAB_SIZE} (256 bytes + BOS + one merge)"
        )
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
    """Build a tokenizer from its JSON text (cached: workers receive the JSON, not the object)."""
    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise TokenizerError(f"not a valid tokenizer.json: {source}: {exc}") from exc


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
