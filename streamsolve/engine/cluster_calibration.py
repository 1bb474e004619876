"""Calibration's Newton passes spread over a Dask cluster's workers (issue 16).

A calibration fit (`streamsolve.core.scoring.fit_calibration_scored`) spends its time in
Hessian passes over the sample's distinct contexts. On a cluster, `ClusterEvaluator` splits
each pass into one chunk of distinct contexts per worker (`streamsolve.core.newton.
context_sums`) and adds the chunks' sums up in the job (`streamsolve.core.newton.
combine_sums`).

The lazily loaded weights cannot travel (their row block cache holds a lock), and the
weights' sparse part must not pass through any client: each worker rebuilds the scoring
parts itself from a `WeightsSpec` -- the store's URL, the weight row block keys (pending or
committed, content-addressed) and the O(V) vectors (row and column terms, log unigram, value
ranges) -- and reads the row blocks from the store. The spec is scattered once per fit; a
pass's tasks carry only theta and a reference to their chunk of contexts (scattered once
too). Each worker keeps the parts of the spec while the fit runs, so a fit reads the weights
once per worker process; `ClusterEvaluator.close` releases them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading

import numpy as np

from ..core import newton
from ..core.scoring import scorer_class
from .runtime import task_client

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
    """What a worker needs to rebuild lazily loaded scoring parts from a store.

    Attributes
    ----------
    url : str
    storage_options : dict or None
    keys : list of list of str
        Per weight block, its row block keys in row order.
    params : dict
        The weights' parameters (form, smoothing, ...).
    cache_bytes : int
        The row block cache's budget (the parts are read whole when they fit it).
    row_terms, col_terms : list of ndarray
    log_unigram : ndarray
    data_range : list of (float, float)
    token : str
        Names the weights (a digest of the URL and the keys): a worker's cache key.
    """

    url: str
    storage_options: dict | None
    keys: list
    params: dict
    cache_bytes: int
    row_terms: list
    col_terms: list
    log_unigram: np.ndarray
    data_range: list
    token: str


def weights_spec(parts) -> WeightsSpec | None:
    """The `WeightsSpec` of lazily loaded parts (`streamsolve.engine.finalize.lazy_weights`),
    or None for parts that do not come from a store."""
    source = getattr(parts, "source", None)
    if source is None:
        return None
    digest = hashlib.blake2b(repr((source["url"], source["keys"])).encode(),
                             digest_size=16).hexdigest()
    return WeightsSpec(source["url"], source["storage_options"], source["keys"],
                       source["params"], int(parts.cache.max_bytes), list(parts.row_terms),
                       list(parts.col_terms), parts.log_unigram, list(parts.data_range), digest)


_WORKER_PARTS: dict = {}
_WORKER_LOCK = threading.Lock()


def worker_parts(spec: WeightsSpec):
    """The scoring parts of ``spec`` in this process (built once, the last spec kept)."""
    from ..store.model_store import ModelStore
    from .finalize import lazy_weights

    with _WORKER_LOCK:
        parts = _WORKER_PARTS.get(spec.token)
        if parts is None:
            view = ModelStore(spec.url, spec.storage_options).snapshot()
            weights = lazy_weights(view, spec.keys, spec.col_terms, spec.log_unigram,
                                   view.config, spec.params, spec.cache_bytes, spec.row_terms,
                                   spec.data_range)
            _WORKER_PARTS.clear()
            parts = _WORKER_PARTS[spec.token] = weights.scoring_parts()
        return parts


def release_worker_parts(token: str) -> bool:
    """Drop the parts of ``token`` this process keeps (run on every worker after a fit)."""
    with _WORKER_LOCK:
        return _WORKER_PARTS.pop(token, None) is not None


def chunk_sums(spec: WeightsSpec, theta: np.ndarray, chunk: tuple) -> dict:
    """`streamsolve.core.newton.context_sums` of one chunk ``(contexts, counts)`` at
    ``theta``, on the parts the worker rebuilds from ``spec`` (a task of `ClusterEvaluator`)."""
    parts = worker_parts(spec)
    theta = np.asarray(theta, dtype=np.float64)
    scorer = newton.hessian_scorer(scorer_class(parts)(parts, theta[:-1], theta[-1],
                                                       cache_size=0, native=True))
    if scorer is None:
        raise RuntimeError(f"the weights of {spec.url} do not fit the Newton kernel on this "
                           "worker (no C kernel, or S over the row block cache)")
    contexts, counts = chunk
    return newton.context_sums(scorer, contexts, counts)


class ClusterEvaluator:
    """``evaluate(objective, theta) -> (loss, grad, hessian)`` for
    `streamsolve.core.newton.fit_newton`, one chunk of distinct contexts per worker.

    Parameters
    ----------
    client : distributed.Client
    spec : WeightsSpec
        The weights the objective's parts are (each worker rebuilds them from it).
    """

    def __init__(self, client, spec: WeightsSpec, workers=None):
        self.client = client
        self.workers = sorted(client.scheduler_info()["workers"] if workers is None else workers)
        self.token = spec.token  # what the workers' rebuilt parts are filed under
        self.spec = client.scatter(spec, broadcast=True, hash=False)
        self.passes = 0
        self.failed = False  # a pass failed on the workers: the rest are made here
        self._chunks = None  # (objective, [future of (contexts, counts)])

    def chunks(self, objective) -> list:
        """The objective's distinct contexts in one chunk per worker, scattered once."""
        if self._chunks is None or self._chunks[0] is not objective:
            cuts = np.linspace(0, objective.unique.shape[0], len(self.workers) + 1).astype(int)
            futures = [self.client.scatter((objective.unique[a:b], objective.counts[a:b]),
                                           workers=[worker], hash=False)
                       for worker, a, b in zip(self.workers, cuts[:-1], cuts[1:]) if b > a]
            self._chunks = (objective, futures)
        return self._chunks[1]

    def __call__(self, objective, theta: np.ndarray):
        theta = np.asarray(theta, dtype=np.float64)
        if not self.failed:
            try:
                futures = [self.client.submit(chunk_sums, self.spec, theta, chunk, pure=False,
                                              workers=[worker], allow_other_workers=True)
                           for worker, chunk in zip(self.workers, self.chunks(objective))]
                sums = self.client.gather(futures)
                self.passes += 1
                return newton.combine_sums(objective, theta, sums)
            except Exception as exc:  # noqa: BLE001 - e.g. a worker cannot read the store
                self.failed = True
                logger.warning("calibration: the workers could not make a Newton pass (%s: "
                               "%s); the fit goes on in this job", type(exc).__name__, exc)
        return newton.loss_gradient_hessian(objective, theta)

    def close(self):
        """Release the scattered spec and chunks, and the parts the workers rebuilt."""
        token = self.token if self.spec.status == "finished" else None
        self._chunks = None
        self.spec.release()
        if token is not None:
            try:
                self.client.run(release_worker_parts, token)
            except Exception:  # noqa: BLE001 - a worker gone keeps nothing anyway
                logger.debug("could not release the workers' parts", exc_info=True)


def cluster_evaluator(parts) -> ClusterEvaluator | None:
    """A `ClusterEvaluator` when this code runs inside a task on a Dask cluster of two or
    more workers (a ``--scheduler``/``--cluster`` job) and ``parts`` come from a store; else
    None (the fit then makes its passes here)."""
    spec = weights_spec(parts)
    if spec is None:
        return None
    client = task_client()
    workers = [] if client is None else list(client.scheduler_info()["workers"])
    if len(workers) < 2:
        return None
    logger.info("calibration: Newton passes split over %d workers", len(workers))
    return ClusterEvaluator(client, spec, workers)
