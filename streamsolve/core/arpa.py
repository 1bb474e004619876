"""The pure n-gram Kneser–Ney model as ARPA text (log10 probabilities and back-offs), the
format KenLM (``kenlm.Model``, ``build_binary``, ``query``), SRILM and others read.

Conventions:

- **Words.** Token id i is written as ``words[i]`` (default: its decimal id, the form
  ``bench.kenlm`` writes token files in for ``lmplz`` and ``query``), so a sentence is scored
  by writing its ids the same way. Words must be non-empty, free of whitespace and distinct
  from the three markers below.
- **BOS is ``<s>``.** The BOS id pads every context before a document's first token, which
  is exactly ARPA's sentence-start context ``<s>``; its unigram line carries KenLM's
  convention ``log10 P(<s>) = 0`` (``<s>`` is never predicted) and its back-off.
- **Document ends.** A model counted on plain documents never predicts an end: ``</s>`` is
  written with ``log10 P = -99`` (so score with ``kenlm.Model.score(text, eos=False)``). A
  model counted with an end id appended to every document (``eos_id``, KenLM's convention:
  ``lmplz`` predicts ``</s>`` after each sentence) writes that id as ``</s>``.
- **``<unk>``** gets the probability of an id never seen in training, ``b_1 / V`` (the uniform
  part of ``P_1``): KenLM's default of treating ``<unk>`` as a zeroton. Every id has its own
  unigram line, so only text outside the id vocabulary meets ``<unk>``.
- N-grams are those of the model's kept rows: each order's ``(s, j)`` with ``P_k(j | s)``
  interpolated, and on orders below N the back-off ``log10 b(s j)`` of the n-gram as an
  order-(k+1) context (0 when it is none). Suffixes of two BOS ids have no rows (collapsed
  padding, see `streamsolve.core.ngram_kneser_ney`), so ``<s>`` only starts an n-gram.

`arpa_text` yields the text in pieces; writing them is the caller's business (no I/O here).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from . import ngram_keys
from .ngram_kneser_ney import NgramKneserNey

#: log10 probability written for an event the model never predicts.
NEVER = -99.0
MARKERS = ("<s>", "</s>", "<unk>")
#: n-grams formatted per piece of text.
PIECE = 1 << 16


def vocabulary(model: NgramKneserNey, words: Sequence[str] | None = None,
               eos_id: int | None = None) -> np.ndarray:
    """The ARPA word of every id (object array): ``words`` or decimal ids, BOS as ``<s>``,
    ``eos_id`` as ``</s>``. Raises ValueError naming a word that cannot be written."""
    V, bos = model.config.vocab_size, model.config.bos_id
    if words is None:
        words = [str(i) for i in range(V)]
    if len(words) != V:
        raise ValueError(f"need {V} words (one per id), got {len(words)}")
    if eos_id is not None and not (0 <= eos_id < V and eos_id != bos):
        raise ValueError(f"eos_id {eos_id} must be an id other than BOS ({bos}) in 0..{V - 1}")
    out = np.array(list(words), dtype=object)
    for i, word in enumerate(out):
        if i in (bos, eos_id):
            continue
        if not isinstance(word, str) or not word or word.split() != [word] or word in MARKERS:
            raise ValueError(f"id {i}: {word!r} cannot be an ARPA word (it must be non-empty, "
                             f"without whitespace, and none of {', '.join(MARKERS)})")
    if len(set(out.tolist())) != V:
        raise ValueError("the words are not distinct")
    out[bos] = "<s>"
    if eos_id is not None:
        out[eos_id] = "</s>"
    return out


def _log10(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.maximum(np.log10(values), NEVER)


def context_backoffs(model: NgramKneserNey, k: int) -> np.ndarray:
    """log10 back-off of every order-k n-gram as an order-(k+1) context (0 when none);
    k = 1..N-1 (k = 1: the unigrams, one per id)."""
    upper = model.level(k + 1)
    if k == 1:
        keys = np.arange(model.config.vocab_size, dtype=np.uint64)
    else:
        level = model.level(k)
        keys = model.config.suffix_layout(k).prepend(
            level.targets, np.repeat(level.keys, np.diff(level.indptr)))
    rows = ngram_keys.search(upper.keys, keys)
    out = np.zeros(rows.size)
    found = rows >= 0
    out[found] = _log10(upper.backoff[rows[found]])
    return out


def _lines(probs: np.ndarray, grams: np.ndarray, backoffs: np.ndarray | None) -> str:
    if backoffs is None:
        return "".join(f"{p:.8g}\t{g}\n" for p, g in zip(probs.tolist(), grams.tolist()))
    return "".join(f"{p:.8g}\t{g}\t{b:.8g}\n"
                   for p, g, b in zip(probs.tolist(), grams.tolist(), backoffs.tolist()))


def _unigram_text(model: NgramKneserNey, vocab: np.ndarray, eos_id: int | None) -> str:
    V, bos = model.config.vocab_size, model.config.bos_id
    probs = _log10(model.unigram)
    probs[bos] = 0.0
    backoffs = context_backoffs(model, 1) if model.config.order > 1 else np.zeros(V)
    head = f"{float(_log10(np.array(model.unigram_backoff / V))):.8g}\t<unk>\t0\n"
    if eos_id is None:
        head += f"{NEVER:.8g}\t</s>\t0\n"
    return head + _lines(probs, vocab, backoffs)


def _order_text(model: NgramKneserNey, vocab: np.ndarray, k: int) -> Iterator[str]:
    level = model.level(k)
    layout = model.config.suffix_layout(k)
    backoffs = context_backoffs(model, k) if k < model.config.order else None
    lengths = np.diff(level.indptr)
    for start in range(0, level.rows, PIECE):
        rows = slice(start, min(level.rows, start + PIECE))
        lo, hi = level.indptr[rows.start], level.indptr[rows.stop]
        digits = layout.unpack(np.repeat(level.keys[rows], lengths[rows]))
        columns = [vocab[d] for d in reversed(digits)] + [vocab[level.targets[lo:hi]]]
        grams = columns[0]
        for column in columns[1:]:
            grams = grams + " " + column
        yield _lines(_log10(level.probs[lo:hi]), grams,
                     None if backoffs is None else backoffs[lo:hi])


def arpa_text(model: NgramKneserNey, words: Sequence[str] | None = None,
              eos_id: int | None = None) -> Iterator[str]:
    """The ARPA text of ``model``, in pieces (module doc for the conventions).

    Parameters
    ----------
    model : NgramKneserNey
    words : sequence of str, optional
        The word of each id (default: decimal ids).
    eos_id : int, optional
        The id appended to every counted document as its end, written as ``</s>``.

    Yields
    ------
    str
        Consecutive pieces of the file; ``"".join`` of them is the whole text.
    """
    vocab = vocabulary(model, words, eos_id)
    N, V = model.config.order, model.config.vocab_size
    sizes = [V + (2 if eos_id is None else 1)] + [model.level(k).nnz for k in range(2, N + 1)]
    yield "\\data\\\n" + "".join(f"ngram {k}={n}\n" for k, n in enumerate(sizes, start=1))
    yield "\n\\1-grams:\n" + _unigram_text(model, vocab, eos_id)
    for k in range(2, N + 1):
        yield f"\n\\{k}-grams:\n"
        yield from _order_text(model, vocab, k)
    yield "\n\\end\\\n"
