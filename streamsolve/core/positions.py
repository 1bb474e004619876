"""(context, target) positions of token-id documents, BOS-padded as counting pads them.

Every position of a document is one sample: its target is the token, its context the R
tokens before it (offset 1 first), with BOS where the document has none. This is the one
builder of positions; evaluation, scoring, calibration samples, the smoothing search and
`refine` all take theirs from `positions` (counting builds the same pairs as keys in
`streamsolve.core.counting`).

Pure numpy: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np


def positions(documents: Sequence, radius: int, bos_id: int,
              index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(contexts (n, R), targets (n,))`` of the positions of documents, in order.

    Parameters
    ----------
    documents : sequence of array-like of int
        Token ids of each document (empty documents have no positions).
    radius : int
        R, the context offsets; ``contexts[k, r - 1]`` is the token r before target k, or
        ``bos_id`` when the document starts less than r tokens before it.
    bos_id : int
    index : ndarray of int, optional
        Only these positions, counted over all the documents' tokens in order (any order,
        repeats allowed; e.g. `sample_index`'s draw).

    Returns
    -------
    (ndarray (n, R), ndarray (n,)), int64

    Examples
    --------
    >>> ctx, tgt = positions([[5, 6, 7], [], [8]], 2, 0)
    >>> ctx.tolist(), tgt.tolist()
    ([[0, 0], [5, 0], [6, 5], [0, 0]], [5, 6, 7, 8])
    """
    docs = [np.asarray(d, dtype=np.int64) for d in documents]
    lengths = np.fromiter((d.size for d in docs), dtype=np.int64, count=len(docs))
    flat = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    if index is None:
        chosen = np.arange(flat.size)
        within = chosen - np.repeat(starts, lengths)  # the position in its document
    else:
        chosen = np.asarray(index, dtype=np.int64)
        within = chosen - starts[np.searchsorted(starts + lengths, chosen, side="right")]
    contexts = np.empty((chosen.size, radius), dtype=np.int64)
    for r in range(1, radius + 1):
        contexts[:, r - 1] = np.where(within >= r, flat[np.maximum(chosen - r, 0)], bos_id)
    return contexts, flat[chosen]


def sample_index(total: int, sample_size: int, seed: int = 0) -> np.ndarray:
    """Up to ``sample_size`` of ``total`` positions drawn uniformly without replacement
    (ascending; all of them when there are fewer)."""
    if total == 0:
        raise ValueError("no held-out tokens to calibrate on")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=min(sample_size, total), replace=False))


def sampled_positions(documents: Sequence, radius: int, bos_id: int, sample_size: int,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`positions` of up to ``sample_size`` positions drawn uniformly across the documents
    (`sample_index`; the calibration's and the smoothing search's sample)."""
    total = int(sum(len(d) for d in documents))
    return positions(documents, radius, bos_id, sample_index(total, sample_size, seed))


def grouped_positions(documents: Iterable, radius: int, bos_id: int,
                      group_tokens: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`positions` of a stream of documents, one group of about ``group_tokens`` tokens
    (whole documents, at least one) at a time; empty documents are skipped."""
    group, size = [], 0
    for doc in documents:
        if len(doc) == 0:
            continue
        group.append(doc)
        size += len(doc)
        if size >= group_tokens:
            yield positions(group, radius, bos_id)
            group, size = [], 0
    if group:
        yield positions(group, radius, bos_id)


def piece_positions(pieces: Sequence, starts: Sequence[bool], radius: int, bos_id: int,
                    history: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`positions` of pieces of documents, and the last ``radius`` tokens of the last
    piece's document (the ``history`` of the next call).

    A piece whose ``starts`` is False continues the document of the piece before it (its
    first positions see that document's last tokens); the first piece then continues the
    document whose last tokens are ``history`` (at most ``radius`` of them, none from an
    earlier document). A long document streamed in pieces so gives the positions of the
    whole.

    Examples
    --------
    >>> ctx, tgt, tail = piece_positions([[5, 6], [7]], [True, False], 2, 0)
    >>> ctx.tolist(), tgt.tolist(), tail.tolist()
    ([[0, 0], [5, 0], [6, 5]], [5, 6, 7], [6, 7])
    >>> piece_positions([[8]], [False], 2, 0, tail)[0].tolist()
    [[7, 6]]
    """
    pieces = [np.asarray(p, dtype=np.int64) for p in pieces]
    targets = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    history = np.zeros(0, dtype=np.int64) if history is None else history
    known = np.concatenate([history, targets]) if history.size else targets
    lengths = np.fromiter((p.size for p in pieces), dtype=np.int64, count=len(pieces))
    piece_start = np.cumsum(lengths) - lengths + history.size
    document_start = np.maximum.accumulate(np.where(starts, piece_start, 0))
    position = np.arange(history.size, known.size)
    within = position - np.repeat(document_start, lengths)  # the position in its document
    contexts = np.empty((targets.size, radius), dtype=np.int64)
    for r in range(1, radius + 1):
        contexts[:, r - 1] = np.where(within >= r, known[np.maximum(position - r, 0)], bos_id)
    last_start = int(document_start[-1]) if len(pieces) else known.size
    return contexts, targets, known[max(last_start, known.size - radius):]


def as_piece(item) -> tuple[np.ndarray, bool]:
    """``(ids, starts)`` of a stream item: a document's ids, or a piece ``(ids, starts)``."""
    if isinstance(item, tuple):
        return np.asarray(item[0], dtype=np.int64), bool(item[1])
    return np.asarray(item, dtype=np.int64), True


def grouped_piece_positions(items: Iterable, radius: int, bos_id: int,
                            group_tokens: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`grouped_positions` of a stream whose items are documents or pieces ``(ids, starts)``
    of them (`piece_positions`): the positions of the whole documents, one group of about
    ``group_tokens`` tokens at a time (a longer piece is cut into groups)."""
    group, starts, size = [], [], 0
    history = np.zeros(0, dtype=np.int64)  # the last tokens of the document a group continues
    begin = True  # the next non-empty piece starts a document (an empty one may have started it)
    for item in items:
        ids, piece_starts = as_piece(item)
        begin = begin or piece_starts
        for at in range(0, ids.size, group_tokens):
            group.append(ids[at:at + group_tokens])
            starts.append(begin and at == 0)
            size += group[-1].size
            if size >= group_tokens:
                contexts, targets, history = piece_positions(group, starts, radius, bos_id,
                                                             history)
                yield contexts, targets
                group, starts, size = [], [], 0
        begin = begin and ids.size == 0
    if group:
        yield piece_positions(group, starts, radius, bos_id, history)[:2]


def calibration_sample(contexts, targets) -> tuple[np.ndarray, np.ndarray]:
    """``(contexts (n, R) int64, targets (n,) int64)`` of a calibration sample; a one-line
    ValueError when it has no positions."""
    contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if targets.size == 0:
        raise ValueError("no positions to calibrate on")
    return contexts, targets
