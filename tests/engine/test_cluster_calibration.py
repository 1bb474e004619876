"""Calibration on a Dask cluster (issue 16): each Newton pass is split into one chunk of
distinct contexts per worker; the workers rebuild the scoring parts from the store (URL,
row block keys, O(V) vectors), never receiving the lazy weights; the fitted theta equals the
local fit to 1e-9, from a pending (uncommitted) finalize and from a job on a worker."""

from __future__ import annotations

import numpy as np
import pytest

from streamsolve.core import newton, score_native
from streamsolve.core.scoring import fit_calibration_scored
from streamsolve.engine import cluster_calibration
from streamsolve.engine.cluster_calibration import (ClusterEvaluator, cluster_evaluator,
                                                    weights_spec)
from streamsolve.engine.finalize import (commit_store_weights, compute_store_weights,
                                         read_store_weights)
from streamsolve.language_model import LanguageModel

from ..conftest import time_limit
from .test_finalize_lazy import make_store, positions, random_docs

pytest.importorskip("distributed")
pytestmark = pytest.mark.skipif(not score_native.available(),
                                reason="C scoring kernel not built")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0", scheduler_port=0, silence_logs=40) as cluster:
        with Client(cluster) as c:
            c.wait_for_workers(2, timeout=time_limit(30))
            yield c


@pytest.mark.parametrize("aggregation,smoothing", [("cat", "dirichlet"), ("sum", "kneser-ney")])
def test_split_passes_fit_the_local_theta(tmp_path, client, monkeypatch, aggregation, smoothing):
    monkeypatch.setattr(newton, "COARSE_POSITIONS", 150)  # coarse stage here, fine on workers
    store, _ = make_store(tmp_path, V=37, aggregation=aggregation)
    pending = compute_store_weights(store, "row", smoothing)  # blocks written, not committed
    weights = pending.weights.uncalibrated()
    ctx, tgt = positions(random_docs(9, 37, n_docs=60), 3)
    theta0 = np.r_[weights.beta, weights.gamma]
    local = fit_calibration_scored(weights.scoring_parts(), ctx, tgt, theta0)
    cluster_calibration._WORKER_PARTS.clear()
    spec = weights_spec(weights.scoring_parts())
    assert spec is not None and spec.keys == pending.block_keys
    evaluate = ClusterEvaluator(client, spec)
    split = fit_calibration_scored(weights.scoring_parts(), ctx, tgt, theta0, evaluate=evaluate)
    assert evaluate.passes >= 1
    assert list(cluster_calibration._WORKER_PARTS) == [spec.token]  # rebuilt from the store
    evaluate.close()
    assert not cluster_calibration._WORKER_PARTS  # released on every worker
    np.testing.assert_allclose(split.theta, local.theta, rtol=0, atol=1e-9)
    assert split.loss_after == pytest.approx(local.loss_after, abs=1e-12)
    assert cluster_evaluator(weights.scoring_parts()) is None  # not inside a cluster task


def _calibrate_in_job(url: str, docs: list) -> tuple:
    """A job's calibration (runs as a task on a worker, as `streamsolve --scheduler`)."""
    from streamsolve.store.model_store import ModelStore

    weights = read_store_weights(ModelStore(url))
    found = cluster_evaluator(weights.scoring_parts())  # what calibrate() below makes
    if found is not None:
        found.close()
    model = LanguageModel(weights).calibrate([np.asarray(d) for d in docs])
    return found is not None, model.weights.beta, model.weights.gamma


def test_calibration_in_a_job_spreads_over_the_workers(tmp_path, client):
    from streamsolve.engine.cluster import remote_call

    store, _ = make_store(tmp_path, V=37)
    commit_store_weights(store, compute_store_weights(store, "row", "dirichlet"))
    docs = random_docs(11, 37, n_docs=60)
    spread, beta, gamma = remote_call(client, _calibrate_in_job, store.url, docs)
    assert spread
    assert not cluster_calibration._WORKER_PARTS  # the fit released them
    local = LanguageModel(read_store_weights(store)).calibrate([np.asarray(d) for d in docs])
    np.testing.assert_allclose(np.r_[beta, gamma], np.r_[local.weights.beta, local.weights.gamma],
                               rtol=0, atol=1e-9)
    assert not np.allclose(beta, 1.0)  # the fit moved: the comparison says something


def test_workers_that_cannot_read_the_store_leave_the_fit_to_the_job(tmp_path, client, caplog):
    import dataclasses
    import logging

    store, _ = make_store(tmp_path, V=37)
    weights = compute_store_weights(store, "row", "dirichlet").weights.uncalibrated()
    ctx, tgt = positions(random_docs(9, 37, n_docs=60), 3)
    theta0 = np.r_[weights.beta, weights.gamma]
    local = fit_calibration_scored(weights.scoring_parts(), ctx, tgt, theta0)
    spec = dataclasses.replace(weights_spec(weights.scoring_parts()),
                               url=str(tmp_path / "elsewhere.zarr"), token="elsewhere")
    evaluate = ClusterEvaluator(client, spec)
    with caplog.at_level(logging.WARNING, logger="streamsolve"):
        fit = fit_calibration_scored(weights.scoring_parts(), ctx, tgt, theta0, evaluate=evaluate)
    evaluate.close()
    assert evaluate.failed and evaluate.passes == 0
    assert "the fit goes on in this job" in caplog.text
    np.testing.assert_array_equal(fit.theta, local.theta)
