"""Sizes in one convention (dask's parse_bytes; GB = 10**9), an estimate from the corpus, V and
R rather than the budget, and estimate vs measured at the end (issue 16)."""

from __future__ import annotations

import logging

import pytest

from streamsolve import api
from streamsolve.cli import main
from streamsolve.engine.memory import MemoryPlan, format_bytes, parse_memory, total_ram


def test_sizes_parse_and_print_in_one_convention():
    assert parse_memory("1GB") == 10**9 and format_bytes(parse_memory("1GB")) == "1.00 GB"
    assert parse_memory("512MiB") == 512 * 2**20 and parse_memory("1.5G") == 1_500_000_000
    assert parse_memory("80%") == int(total_ram() * 0.8)
    assert format_bytes(999) == "999 B" and format_bytes(1_500_000) == "1.50 MB"
    for bad in ("nan%", "inf", "nanGB", "1e400", "-1GB", "0", "lots", "0%"):
        with pytest.raises(ValueError, match="memory"):
            parse_memory(bad)


def test_estimate_follows_the_corpus_not_the_budget():
    plan = MemoryPlan.build(parse_memory("12GB"), 2, 3, 4096, "/tmp/x")
    small = plan.estimate(1_300_000, 3, vocab_size=4096)  # a 1.3 MB corpus
    assert small["peak_bytes"] < 1e9 and small["spill_bytes"] == 0
    big = plan.estimate(50 * 10**9, 3, vocab_size=65536)
    assert big["peak_bytes"] > 10 * small["peak_bytes"] and big["spill_bytes"] > 10**10
    assert big["peak_bytes"] <= plan.budget * 1.5


def test_count_logs_budget_and_estimate_vs_measured(tmp_path, sharded_corpus, tokenizer_file,
                                                    caplog):
    with caplog.at_level(logging.INFO):
        api.count(sharded_corpus(2, ""), str(tmp_path / "m.zarr"), tokenizer=tokenizer_file,
                  radius=1, memory="1GB")
    assert "memory budget 1.00 GB" in caplog.text
    assert "estimate vs measured: peak memory ~" in caplog.text


def test_bad_memory_fails_before_a_tokenizer_is_trained(tmp_path, sharded_corpus, capsys):
    store = tmp_path / "m.zarr"
    code = main(["count", *sharded_corpus(2, ""), "--store", str(store), "--memory", "nan%"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "memory" in err and len(err.splitlines()) == 1
    assert not store.exists()
