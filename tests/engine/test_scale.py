"""Bounded memory: a tiny budget forces the spill + k-way merge paths and must not change a
single count (KenLM-style tests); the memory setting; tokenizer inputs of joined lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer

from streamsolve.core.counting import CountConfig, sum_duplicates
from streamsolve.engine.memory import MemoryPlan, parse_memory, total_ram
from streamsolve.engine.spill import _ArraySource, merge_sources, write_run, _RunSource
from streamsolve.engine.tasks import count_shard
from streamsolve.ingest import count_corpus, write_counts
from streamsolve.text.reading import ReadOptions
from streamsolve.store.model_store import ModelStore
from streamsolve.store.locking import StoreLock

from ..conftest import time_limit


def test_parse_memory_units_and_share():
    assert parse_memory("2GB") == 2 * 10**9
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory("1.5g") == 1_500_000_000
    assert parse_memory(4096) == 4096
    assert parse_memory("80%") == int(total_ram() * 0.8)
    for bad in ("lots", "0", "-1GB", "120%", "3 parsecs"):
        with pytest.raises(ValueError, match="memory"):
            parse_memory(bad)


def test_plan_shrinks_blocks_and_caps_under_a_small_budget():
    big = MemoryPlan.build(parse_memory("8GB"), 2, 3, 4096, "/tmp/x")
    small = MemoryPlan.build(parse_memory("1MB"), 2, 3, 4096, "/tmp/x")
    assert big.block_bytes == 8 << 20 and big.task_bytes > 100 << 20
    assert small.block_bytes == 64 << 10 and small.task_bytes == 64 << 10


def test_kway_merge_of_runs_equals_sum_of_all(tmp_path):
    rng = np.random.default_rng(0)
    V, rows = 300, 64
    parts, sources = [], []
    for i in range(23):
        keys = rng.integers(0, V * V, size=rng.integers(0, 3000))
        k, v = sum_duplicates(keys)
        parts.append((k, v))
        if i % 3:
            run = write_run(str(tmp_path), k, v, V, rows)
            sources.append(_RunSource(run, 0, run.length))
        else:
            sources.append(_ArraySource(k, v))
    expected = sum_duplicates(np.concatenate([p[0] for p in parts]),
                              np.concatenate([p[1] for p in parts]))
    # a tiny buffer budget and a fan-in of 4: several passes through intermediate runs
    chunks = list(merge_sources(sources, 4096, str(tmp_path), V, rows, fan_in=4))
    keys = np.concatenate([c[0] for c in chunks])
    values = np.concatenate([c[1] for c in chunks])
    assert np.all(np.diff(keys) > 0)
    np.testing.assert_array_equal(keys, expected[0])
    np.testing.assert_array_equal(values, expected[1])
    # run files are plain .npy of int64: loadable without pickle
    run_files = [f for f in os.listdir(tmp_path) if f.endswith(".npy")]
    assert run_files
    arr = np.load(tmp_path / run_files[0], allow_pickle=False)
    assert arr.dtype == np.int64


@pytest.mark.parametrize("aggregation,radius", [("cat", 3), ("sum", 2)])
def test_tiny_budget_spills_and_gives_exact_counts(tmp_path, sharded_corpus, tokenizer_text,
                                                   aggregation, radius):
    V = Tokenizer.from_str(tokenizer_text).get_vocab_size()
    config = CountConfig(V, radius, aggregation)
    paths = sharded_corpus(4)
    reference = count_corpus(paths, tokenizer_text, config, ReadOptions(), scheduler="sync").counts
    spill_root = tmp_path / "spill"
    spill_root.mkdir()
    partial = count_corpus(paths, tokenizer_text, config, ReadOptions(), scheduler="threads",
                           workers=2, split_every=2, memory="1MB", tmp=str(spill_root),
                           rows_per_block=64, keep_partial=True).counts
    assert partial.spilled_runs > 0 and partial.n_runs > 0
    spill_dirs = os.listdir(spill_root)
    assert len(spill_dirs) == 1 and spill_dirs[0].startswith("streamsolve-spill-")
    files = os.listdir(spill_root / spill_dirs[0])
    assert files and all(f.endswith(".npy") for f in files)
    assert partial.to_counts(64 << 10).equal_counts(reference)
    # and through the store: one writer per row block, then the spill files are gone
    store = ModelStore.create(str(tmp_path / "m.zarr"), config, tokenizer_text, "x" * 64,
                              "<|doc|>", {"documents": "blank-line", "text_field": "text"},
                              rows_per_block=64)
    with StoreLock(store.url) as lock:
        write_counts(store, partial, partial.shards, {}, add=False, lock=lock,
                     scheduler="threads", workers=2)
    assert os.listdir(spill_root) == []
    assert store.read_counts().equal_counts(reference)


def test_single_large_shard_spills_inside_its_task(tmp_path, sharded_corpus, tokenizer_text):
    V = Tokenizer.from_str(tokenizer_text).get_vocab_size()
    config = CountConfig(V, 2, "cat")
    [path] = sharded_corpus(1, "")
    reference = count_shard(path, tokenizer_text, config, ReadOptions()).counts
    plan = MemoryPlan.build(1 << 20, 1, config.n_blocks, 100, str(tmp_path / "spill"))
    result = count_shard(path, tokenizer_text, config, ReadOptions(), plan=plan)
    assert result.counts.spilled_runs > 1  # the shard task itself spilled, several times
    assert result.counts.nbytes <= plan.task_bytes
    assert result.counts.to_counts(1 << 16).equal_counts(reference)


def test_api_count_with_tiny_budget_equals_unconstrained_and_incremental(tmp_path, sharded_corpus,
                                                                        tokenizer_file):
    import streamsolve as ss

    paths = sharded_corpus(5)
    spill = tmp_path / "spill"
    spill.mkdir()
    ss.count(paths, str(tmp_path / "free.zarr"), tokenizer=tokenizer_file, radius=2)
    ss.count(paths[:2], str(tmp_path / "tight.zarr"), tokenizer=tokenizer_file, radius=2,
             memory="1MB", force_memory=True, tmp=str(spill), rows_per_block=50)
    ss.count(paths[2:], str(tmp_path / "tight.zarr"), memory="1MB", force_memory=True,
             tmp=str(spill))
    free = ModelStore(str(tmp_path / "free.zarr")).read_counts()
    tight = ModelStore(str(tmp_path / "tight.zarr")).read_counts()
    assert tight.equal_counts(free)
    assert os.listdir(spill) == []


def test_cli_memory_and_tmp_flags(tmp_path, sharded_corpus, tokenizer_file):
    paths = sharded_corpus(2)
    spill = tmp_path / "spill"
    spill.mkdir()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-m", "streamsolve", "count", *paths, "--store",
                          str(tmp_path / "m.zarr"), "--tokenizer", tokenizer_file, "--radius", "2",
                          "--memory-budget", "1MB", "--force-memory", "--tmp", str(spill), "--json"],
                         capture_output=True, text=True, env=env, timeout=time_limit(120))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["new_tokens"] > 0
    assert "memory budget" in out.stderr and "estimate" in out.stderr
    assert "read + tokenize + count" in out.stderr  # stage banners
    assert os.listdir(spill) == []
    bad = subprocess.run([sys.executable, "-m", "streamsolve", "count", *paths, "--store",
                          str(tmp_path / "n.zarr"), "--tokenizer", tokenizer_file,
                          "-S", "lots"], capture_output=True, text=True, env=env,
                         timeout=time_limit(60))
    assert bad.returncode == 2 and "memory" in bad.stderr


def test_plan_serializes_the_tokenizer_only_under_a_tight_budget():
    assert MemoryPlan.build(parse_memory("1.5GB"), 2, 3, 4096, "/tmp/x").serial_tokenizer
    assert not MemoryPlan.build(parse_memory("4GB"), 2, 3, 4096, "/tmp/x").serial_tokenizer
    assert not MemoryPlan.build(parse_memory("500MB"), 1, 3, 4096, "/tmp/x").serial_tokenizer


def test_heap_is_trimmed_only_above_half_the_process_share(monkeypatch):
    from streamsolve.engine import memory

    threads = MemoryPlan.build(4 * 10**9, 2, 3, 4096, "/tmp/x")
    processes = MemoryPlan.build(4 * 10**9, 2, 3, 4096, "/tmp/x", processes=2)
    assert threads.trim_above == 2 * 10**9 and processes.trim_above == 10**9
    if memory._glibc() is None:
        pytest.skip("not glibc: nothing to trim")
    resident = memory._resident_bytes()
    assert resident > 10 << 20
    trims = []
    monkeypatch.setattr(memory, "_glibc", lambda: type("C", (), {"malloc_trim": trims.append})())
    assert not memory.release_free_memory(resident * 4) and trims == []
    assert memory.release_free_memory(resident // 4) and trims == [0]
    assert memory.release_free_memory() and trims == [0, 0]


def test_progress_in_a_log_file_is_periodic_lines_not_a_bar(caplog):
    import io

    import dask

    from streamsolve.engine.progress import TaskProgress

    stream = io.StringIO()  # not a terminal
    tasks = [dask.delayed(sum)([i, i]) for i in range(50)]
    with caplog.at_level("INFO", logger="streamsolve.engine.progress"):
        with TaskProgress(stream, every=0.0):
            total = dask.compute(dask.delayed(sum)(tasks), scheduler="threads")[0]
    assert total == sum(range(50)) * 2
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records if "tasks done" in r.getMessage()]
    assert lines and lines[-1].startswith("    51 of 51 tasks done (100%)")
