"""``streamsolve export --arpa OUT.arpa``: the pure n-gram part of a store as an ARPA file
(issue 24).

The file is the interpolated modified Kneser–Ney model of the store's current weights
(`streamsolve.core.arpa`: token ids as decimal words, BOS as ``<s>``, ``</s>`` never
predicted), so KenLM or any ARPA reader scores token-id sentences exactly as the N-gram
block alone (beta 1 on order N, every other scalar 0). Written under the export rules of
`streamsolve.export`: refused over an existing file without ``force``, through a temporary
file renamed into place.
"""

from __future__ import annotations

import logging

from .core.arpa import arpa_text
from .core.ngram_weights import NgramWeights
from .export import check_output, replacing_output
from .store.layout import StoreError
from .store.model_store import ModelStore

logger = logging.getLogger(__name__)


def export_arpa(store: str, out: str, storage_options: dict | None = None,
                force: bool = False) -> dict:
    """Write the store's n-gram model to ``out`` (ARPA text).

    Raises
    ------
    StoreError
        When the store has no n-gram weights (counted without ``--ngram``, or weights
        finalized before).
    OutputError, ValueError
        As `streamsolve.export.check_output`.
    """
    from .engine.finalize import read_store_weights

    check_output(out, store, storage_options, force)
    view = ModelStore(store, storage_options).snapshot()
    weights = read_store_weights(view)
    if not isinstance(weights, NgramWeights):
        raise StoreError(f"store {store} has no n-gram blocks to export as ARPA: count a store "
                         "with --ngram N (then finalize it) first")
    written = 0
    with replacing_output(out, storage_options, force) as handle:
        for piece in arpa_text(weights.model):
            data = piece.encode("utf-8")
            handle.write(data)
            written += len(data)
    model = weights.model
    sizes = [model.config.vocab_size] + [level.nnz for level in model.levels]
    logger.info("exported the order-%d n-gram model to %s: %s n-grams per order, %d bytes",
                model.config.order, out, sizes, written)
    return {"arpa": out, "order": model.config.order, "ngrams": sizes, "bytes": written}
