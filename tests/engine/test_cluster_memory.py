"""On a dask.distributed cluster the memory budget comes from the workers' memory limits, not
the client host's RAM, and the plan says where its budget came from (issue 16)."""

from __future__ import annotations

import logging

import pytest
from tokenizers import Tokenizer

from streamsolve.core.counting import CountConfig
from streamsolve.engine.memory import (CLUSTER_WORKER_SHARE, PLAN_SHARE, MemoryPlan, make_plan,
                                       run_budget, total_ram)
from streamsolve.engine.runtime import Runtime
from streamsolve.ingest import count_corpus
from streamsolve.text.reading import ReadOptions

from ..conftest import time_limit

pytest.importorskip("distributed")

LIMIT = 300_000_000  # "300MB"


@pytest.fixture(scope="module")
def client():
    import dask
    from distributed import Client, LocalCluster

    # In-process workers measure this whole process's memory against their 300 MB limit: in
    # a long test session it is above it, and a worker that pauses at 80% runs nothing
    # (the suite hung here). The limit is what the planning reads; never act on it.
    no_memory_actions = {f"distributed.worker.memory.{key}": False
                         for key in ("target", "spill", "pause", "terminate")}
    with dask.config.set(no_memory_actions), LocalCluster(n_workers=2, threads_per_worker=1, processes=False, memory_limit="300MB",
                      dashboard_address=":0", scheduler_port=0, silence_logs=40) as cluster:
        with Client(cluster) as c:
            c.wait_for_workers(2, timeout=time_limit(30))
            yield c


def test_runtime_reads_the_workers_memory_limits(client):
    assert Runtime(client=client).worker_memory_limits() == [LIMIT, LIMIT]
    assert Runtime("sync").worker_memory_limits() == []


def test_budget_comes_from_the_smallest_worker_limit():
    budget, source = run_budget(None, [LIMIT, 2 * LIMIT, LIMIT])
    assert budget == int(3 * LIMIT * CLUSTER_WORKER_SHARE)
    assert "workers' memory limit" in source and "3 x 300.00 MB" in source
    assert run_budget("50%", [LIMIT, LIMIT]) == (LIMIT, run_budget("50%", [LIMIT, LIMIT])[1])
    assert run_budget("1GB", [LIMIT, LIMIT])[0] == 10**9  # explicit: as given
    # workers without a limit: this host's RAM, as locally
    assert run_budget(None, [0, 0])[0] == total_ram() // 2
    assert run_budget(None)[1].startswith("50% of this host's RAM")


def test_plan_keeps_a_margin_and_a_base_per_process():
    from streamsolve.engine.memory import PROCESS_BASE_BYTES

    for workers, processes in ((1, 1), (2, 1), (2, 2)):
        plan = MemoryPlan.build(10**9, workers, 3, 4096, None, processes=processes)
        per_byte = 12 + 8 * 3
        planned = (processes * PROCESS_BASE_BYTES + workers * plan.block_bytes * per_byte
                   + (workers * 6 + 1) * plan.task_bytes)
        assert 0.8 * 10**9 < planned <= PLAN_SHARE * 10**9
    one = MemoryPlan.build(10**9, 2, 3, 4096, None, processes=1)
    two = MemoryPlan.build(10**9, 2, 3, 4096, None, processes=2)
    assert two.task_bytes < one.task_bytes  # a second process has its own base


def test_count_on_a_cluster_plans_from_the_workers(client, tmp_path, sharded_corpus,
                                                   tokenizer_text, caplog):
    V = Tokenizer.from_str(tokenizer_text).get_vocab_size()
    paths = sharded_corpus(2, "")
    config = CountConfig(V, 1, "cat")
    plan, spill = make_plan(paths, config.n_blocks, ReadOptions().block_bytes,
                            worker_limits=Runtime(client=client).worker_memory_limits(),
                            workers=2, processes=2, tmp=str(tmp_path))
    spill.cleanup()
    assert plan.budget == int(2 * LIMIT * CLUSTER_WORKER_SHARE) < total_ram() // 2
    assert "workers' memory limit" in plan.budget_source
    with caplog.at_level(logging.INFO):
        remote = count_corpus(paths, tokenizer_text, config, ReadOptions(), client=client,
                              keep_partial=True, tmp=str(tmp_path)).counts
    assert "memory budget 480.00 MB (80% of the workers' memory limit (2 x 300.00 MB" \
        in caplog.text
    local = count_corpus(paths, tokenizer_text, config, ReadOptions(), scheduler="sync").counts
    assert remote.to_counts(plan.task_bytes, plan.spill_dir).equal_counts(local)


def test_count_summary_on_a_cluster_has_the_workers_peaks(client, tmp_path, sharded_corpus,
                                                          tokenizer_file):
    from streamsolve import api

    summary = api.count(sharded_corpus(2, ""), str(tmp_path / "m.zarr"),
                        tokenizer=tokenizer_file, radius=1,
                        scheduler=client.scheduler.address).summary()
    memory = summary["memory"]
    assert memory["budget_bytes"] == int(2 * LIMIT * CLUSTER_WORKER_SHARE)
    assert "workers' memory limit" in memory["budget_source"]
    assert len(memory["worker_peak_bytes"]) == 2 and min(memory["worker_peak_bytes"]) > 0
    # the line bound of the new store comes from the workers' limits, not this host's RAM
    from streamsolve.engine.memory import line_bytes_for
    from streamsolve.store.model_store import ModelStore

    bound = ModelStore(str(tmp_path / "m.zarr")).meta["read_options"]["max_line_bytes"]
    assert bound == line_bytes_for(int(2 * LIMIT * CLUSTER_WORKER_SHARE), 2)


def test_line_bound_of_a_new_store_follows_the_workers_limits():
    import os

    from streamsolve.engine.memory import line_bytes_for
    from streamsolve.ingest import IngestOptions, store_line_bytes

    options = IngestOptions()
    on_cluster = store_line_bytes(None, options, [LIMIT, LIMIT], 2)
    assert on_cluster == line_bytes_for(int(2 * LIMIT * CLUSTER_WORKER_SHARE), 2) == 264455
    assert store_line_bytes(None, options) == line_bytes_for(run_budget(None)[0],
                                                             os.cpu_count() or 1)
    assert store_line_bytes(None, IngestOptions(memory="1GB"), [LIMIT, LIMIT], 2) \
        == line_bytes_for(10**9, 2)  # an explicit budget is the budget as given
