"""The n-gram arrays of ``export --weights`` (issue 24).

``streamsolve export --arpa OUT.arpa`` (`streamsolve.export.export_arpa`) writes the pure
n-gram part of a store as an ARPA file: the the interpolated modified Kneser–Ney model of the store's current weights
(`streamsolve.core.arpa`: token ids as decimal words, BOS as ``<s>``, ``</s>`` never
predicted), so KenLM or any ARPA reader scores token-id sentences exactly as the N-gram
block alone (beta 1 on order N, every other scalar 0). Written under the export rules of
`streamsolve.export`: refused over an existing file without ``force``, through a temporary
file renamed into place.
"""

from __future__ import annotations

import logging

import numpy as np

from .core.ngram_weights import NgramWeights

logger = logging.getLogger(__name__)


def ngram_weight_arrays(weights: NgramWeights, layout: str, offset_arrays) -> tuple[dict, dict]:
    """``export --weights`` of n-gram weights: the offsets' arrays in ``layout``
    (``offset_arrays(offsets, layout)``, with the calibrated scalars of the offset blocks),
    and the n-gram blocks, sparse, in any layout: per order k ``ngram{k}.keys`` (uint64
    [rows, words], the suffix keys of `streamsolve.core.ngram_keys`), ``.indptr``,
    ``.targets``, ``.probs`` (``P_k(j | s)`` per entry), ``.backoff`` (per row) and
    ``ngram.unigram`` (``P_1``). Metadata ``ngram``: order, the scalars of orders 2..N,
    discounts; a row s scores ``W^(k)[s, j] = log probs`` on its entries and ``log(backoff)
    + W^(k-1)[s', j]`` elsewhere."""
    from .store.ngram_blocks import key_columns

    offsets = weights.offsets.with_calibration(weights.beta, weights.gamma)
    arrays, metadata = offset_arrays(offsets, layout)
    model = weights.model
    metadata["params"] = weights.params()
    metadata["calibrated"] = bool(weights.calibrated)
    metadata["ngram"] = {"order": model.config.order,
                         "beta": [float(b) for b in weights.ngram_beta],
                         "discounts": np.asarray(model.discounts).tolist(),
                         "context_columns": weights.config.radius}
    arrays["ngram.unigram"] = np.asarray(model.unigram, dtype=np.float64)
    for level in model.levels:
        name = f"ngram{level.order}"
        arrays.update({
            f"{name}.keys": key_columns(level.keys, model.config.suffix_layout(level.order)),
            f"{name}.indptr": np.asarray(level.indptr, dtype=np.int64),
            f"{name}.targets": np.asarray(level.targets, dtype=np.int64),
            f"{name}.probs": np.asarray(level.probs, dtype=np.float64),
            f"{name}.backoff": np.asarray(level.backoff, dtype=np.float64)})
    return arrays, metadata
