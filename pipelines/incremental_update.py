"""The nightly-update workflow, measured: build a store from all shards but one, finalize,
add the last shard, and time the incremental re-finalize against a full one (same store,
``reuse=False``), checking the two give identical weights.

    python pipelines/incremental_update.py [--corpus DIR] [--rows-per-block N] [--smoothing S]

Default corpus: ../shared/corpora/bench (the added shard is the last one in sorted order).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import tempfile
import time

import numpy as np

from streamsolve import Model
from streamsolve.store.model_store import ModelStore
from streamsolve.engine.finalize import finalize_store

logger = logging.getLogger("incremental_update")
DEFAULT_CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora", "bench")


def timed(label, fn):
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    logger.info("%s: %.2f s", label, seconds)
    return result, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--store", help="store path (default: a temporary directory)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--radius", type=int, default=3)
    parser.add_argument("--rows-per-block", type=int, default=4096)
    parser.add_argument("--smoothing", default="dirichlet", choices=("dirichlet", "additive"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    shards = sorted(glob.glob(os.path.join(args.corpus, "*")))
    if len(shards) < 2:
        print(f"need at least 2 shards in {args.corpus}", file=sys.stderr)
        return 2
    store = args.store or os.path.join(tempfile.mkdtemp(prefix="ss-incremental-"), "m.zarr")
    model = Model.create(store, vocab_size=args.vocab_size, radius=args.radius,
                         rows_per_block=args.rows_per_block)
    _, count_seconds = timed(f"count {len(shards) - 1} shards", lambda: model.add(shards[:-1]))
    _, first_final = timed("first finalize", lambda: model.finalize(smoothing=args.smoothing))
    _, add_seconds = timed(f"add {os.path.basename(shards[-1])}", lambda: model.add(shards[-1:]))
    incremental, inc_seconds = timed("incremental re-finalize",
                                     lambda: model.finalize(smoothing=args.smoothing))
    full, full_seconds = timed("full finalize (reuse=False)",
                               lambda: finalize_store(ModelStore(store), "row", args.smoothing,
                                                      reuse=False))
    same = all(np.array_equal(a.sparse.data, b.sparse.data) and
               np.array_equal(a.row_terms, b.row_terms)
               for a, b in zip(incremental.weights.blocks, full.blocks))
    info = model.info()
    n_blocks = sum(len(k) for k in ModelStore(store).meta["weights"]["blocks"])
    print(f"""
| step | seconds |
|---|---|
| count {len(shards) - 1} shards ({info['tokens']:,} tokens in the end) | {count_seconds:.1f} |
| first finalize | {first_final:.2f} |
| add 1 shard ({os.path.basename(shards[-1])}) | {add_seconds:.1f} |
| incremental re-finalize (reused {incremental.weights.reused_blocks} of {n_blocks} row blocks) | {inc_seconds:.2f} |
| full finalize | {full_seconds:.2f} |

incremental / full = {inc_seconds / full_seconds:.2f}; identical weights: {same};
smoothing {args.smoothing}, rows per block {args.rows_per_block}, V {info['vocab_size']}, R {info['radius']}
store: {store}""")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
