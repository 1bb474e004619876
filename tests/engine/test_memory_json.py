"""``count --json`` and ``solve --json`` give the memory budget, where it came from, and the
estimate vs the measured peak memory and spill disk (issue 16)."""

from __future__ import annotations

import json

from streamsolve.cli import main
from streamsolve.engine.memory import PLAN_SHARE


def test_count_json_has_estimate_vs_measured(tmp_path, sharded_corpus, tokenizer_file, capsys):
    code = main(["count", *sharded_corpus(2, ""), "--store", str(tmp_path / "m.zarr"),
                 "--tokenizer", tokenizer_file, "--radius", "1", "--memory", "1GB", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    memory = out["memory"]
    assert memory["budget_bytes"] == 10**9 and memory["budget_source"] == "--memory 1GB"
    assert memory["planned_share"] == PLAN_SHARE
    assert 0 < memory["peak_estimated_bytes"] < 10**9
    # this process's tree: at least the Python interpreter with NumPy, tokenizers, Zarr loaded
    assert 50 << 20 < memory["peak_measured_bytes"] < 10**9
    assert memory["spill_estimated_bytes"] == 0 and memory["spill_written_bytes"] == 0


def test_count_json_reports_what_spilled(tmp_path, sharded_corpus, tokenizer_file, capsys):
    code = main(["count", *sharded_corpus(3, ""), "--store", str(tmp_path / "m.zarr"),
                 "--tokenizer", tokenizer_file, "--radius", "2", "--memory", "1MB", "--force-memory",
                 "--tmp", str(tmp_path), "--json"])
    memory = json.loads(capsys.readouterr().out)["memory"]
    assert code == 0 and memory["spill_written_bytes"] > 0


def test_solve_json_has_the_memory_figures(tmp_path, sharded_corpus, tokenizer_file, capsys):
    code = main(["solve", *sharded_corpus(2, ""), "--store", str(tmp_path / "m.zarr"),
                 "--tokenizer", tokenizer_file, "--radius", "1", "--json"])
    memory = json.loads(capsys.readouterr().out)["memory"]
    assert code == 0 and memory["budget_source"].startswith("50% of this host's RAM")
    assert memory["peak_measured_bytes"] > 0
