"""A real dask.distributed run: a LocalCluster with 2 worker processes (real scheduler and
workers over loopback) gives exactly the counts of a local run — also when one worker is
killed in the middle of the run (the scheduler reruns its tasks) and when counts spill."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from tokenizers import Tokenizer

from streamsolve.core.counting import CountConfig
from streamsolve.ingest import count_corpus
from streamsolve.text.reading import ReadOptions
from streamsolve.store.model_store import ModelStore

from ..conftest import pydoc_documents, time_limit

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    import dask
    from distributed import Client, LocalCluster

    # A killed worker's nanny starts a new worker process; the cluster closes that nanny for
    # good if the new worker has not joined within lost-worker-timeout (15 s), which a busy
    # machine can exceed (only 1/2 workers came back at load 20): allow for the load.
    patience = {"distributed.deploy.lost-worker-timeout": f"{time_limit(300):.0f}s"}
    with dask.config.set(patience), LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
            scheduler_port=0, silence_logs=40,
            env={"TOKENIZERS_PARALLELISM": "false"}) as local_cluster:
        with Client(local_cluster) as client:
            client.wait_for_workers(2, timeout=time_limit(60))
            yield local_cluster, client


@pytest.mark.slow
def test_cluster_counts_equal_local_counts(tmp_path, cluster, sharded_corpus, tokenizer_text,
                                           tokenizer_file):
    import streamsolve as ss

    _, client = cluster
    V = Tokenizer.from_str(tokenizer_text).get_vocab_size()
    paths = sharded_corpus(6, documents=pydoc_documents())
    for config in (CountConfig(V, 3, "cat"), CountConfig(V, 2, "sum")):
        local = count_corpus(paths, tokenizer_text, config, ReadOptions(), scheduler="sync").counts
        remote = count_corpus(paths, tokenizer_text, config, ReadOptions(), client=client,
                              split_every=2).counts
        assert remote.equal_counts(local)
    # the whole job through the API on the cluster's address, with a budget that spills
    spill = tmp_path / "spill"
    spill.mkdir()
    address = client.scheduler.address
    ss.count(paths, str(tmp_path / "local.zarr"), tokenizer=tokenizer_file, radius=3)
    ss.count(paths[:3], str(tmp_path / "remote.zarr"), tokenizer=tokenizer_file, radius=3,
             scheduler=address, memory="1MB", force_memory=True, tmp=str(spill),
             rows_per_block=64)
    ss.count(paths[3:], str(tmp_path / "remote.zarr"), scheduler=address, memory="1MB",
             force_memory=True, tmp=str(spill))
    local_counts = ModelStore(str(tmp_path / "local.zarr")).read_counts()
    assert ModelStore(str(tmp_path / "remote.zarr")).read_counts().equal_counts(local_counts)
    assert os.listdir(spill) == []


def _tasks_in_memory(dask_scheduler=None):
    return sum(1 for ts in dask_scheduler.tasks.values()
               if ts.state == "memory" and str(ts.key).startswith("count-"))


@pytest.mark.slow
def test_killing_a_worker_mid_run_does_not_change_the_counts(tmp_path, cluster, sharded_corpus,
                                                             tokenizer_text):
    _, client = cluster
    V = Tokenizer.from_str(tokenizer_text).get_vocab_size()
    config = CountConfig(V, 2, "cat")
    paths = sharded_corpus(24, documents=pydoc_documents())
    reference = count_corpus(paths, tokenizer_text, config, ReadOptions(), scheduler="sync").counts
    spill = tmp_path / "spill"
    spill.mkdir()
    pids = client.run(os.getpid)
    outcome = {}

    def run():
        try:
            outcome["result"] = count_corpus(paths, tokenizer_text, config, ReadOptions(),
                                             client=client, split_every=3, memory="1MB",
                                             tmp=str(spill),
                                             shard_delay=0.4)  # 24 x 0.4 s on 2 workers: ~5 s
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        limit = time_limit(60)
        deadline = time.monotonic() + limit
        while client.run_on_scheduler(_tasks_in_memory) < 4:
            assert time.monotonic() < deadline, f"no shard task finished within {limit:.0f} s"
            time.sleep(0.05)
        assert thread.is_alive(), "the run finished before a worker could be killed"
        victim_address, victim_pid = sorted(pids.items())[0]
        os.kill(victim_pid, signal.SIGKILL)  # the worker process dies with its results
        thread.join(timeout=time_limit(120))
        assert not thread.is_alive(), "the run did not finish after the worker was killed"
    finally:
        thread.join(timeout=time_limit(120))
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.counts.equal_counts(reference)
    assert sorted(s["path"] for s in result.counts.shards) == sorted(paths)
    assert os.listdir(spill) == []
    # the nanny restarted the killed worker: the cluster has two live workers again
    client.wait_for_workers(2, timeout=time_limit(30))
    assert victim_pid not in client.run(os.getpid).values()
