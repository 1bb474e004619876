"""Smoke test of pipelines/paper_claims.py (issue 15): its ``tiny`` profile end to end on a
synthetic corpus of real text (pydoc topics), held out by source."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import pydoc_documents, time_limit

REPO = Path(__file__).resolve().parents[1]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    """Four sources: two training shards, a calibration source and a test source."""
    docs = pydoc_documents()
    folder = tmp_path / "bench"
    folder.mkdir()
    names = ["train-0", "train-1", "train-0", "train-1", "train-0", "train-1",
             "calibration", "test"]
    parts = {n: [] for n in names}
    for i, doc in enumerate(docs):
        parts[names[i % len(names)]].append(doc)
    for name, texts in parts.items():
        with gzip.open(folder / f"{name}.txt.gz", "wt", encoding="utf-8") as handle:
            handle.write("\n\n".join(texts) + "\n")
    return folder


@pytest.mark.slow
def test_tiny_profile_writes_every_item(tiny_corpus, tmp_path):
    pytest.importorskip("torch", reason="the pipeline needs PyTorch (streamsolve[torch])")
    pytest.importorskip("sklearn", reason="item 5 needs scikit-learn")
    out = tmp_path / "out"
    env = {**os.environ, "STREAMSOLVE_BENCH_CORPUS": str(tiny_corpus),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "paper_claims.py"),
                           "--profile", "tiny", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=time_limit(600))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {"1", "3", "4", "5"} <= set(results)
    assert len(results["1"]) == 2                       # V=300, R in (1, 2)
    forms = {c["model"].split()[0] for c in results["1"]}
    assert forms == {"dense", "factored"}
    for c in results["1"]:
        for key in ("explicit", "explicit_calibrated"):
            assert _finite(c[key]["ce"]) and _finite(c[key]["seconds"])
        for key in ("random_adam", "warm_adam", "warm_lbfgs"):
            assert _finite(c[key]["best_ce"]) and c[key]["curve"]
            assert all(_finite(p["ce"]) for p in c[key]["curve"])
        assert _finite(c["warm_start_ce"])
        assert isinstance(c["claim3_warm_better"], bool)
        assert _finite(c["claim2"]["kl_first"]) and _finite(c["claim2"]["kl_last"])
        assert c["claim2"]["kl_first"] >= 0
        if c["model"] == "dense":
            assert _finite(c["claim2"]["rel_l2_first"]) and _finite(c["claim2"]["rel_l2_last"])
            # the warm start is the explicit solution itself
            assert c["warm_start_ce"] == pytest.approx(c["explicit_calibrated"]["ce"], abs=1e-3)
    two = results["3"]
    assert all(_finite(v) for v in (two["layer1_ce"], two["explicit_two_layer_ce"],
                                     two["warm"]["best_ce"], two["random"]["best_ce"]))
    rows = results["4"]["rows"]
    assert [r["rank"] for r in rows] == [4, 16]
    assert all(_finite(r["warm_ce"]) and _finite(r["adam_ce"]) for r in rows)
    assert {"digits"} <= set(results["5"])
    for r in results["5"].values():
        assert _finite(r["logreg_objective"])
        assert all(_finite(s["objective_start"]) and _finite(s["objective_end"])
                   for s in r["starts"])
    report = (out / "report.md").read_text()
    assert "## REPORT" in report and "python pipelines/paper_claims.py" in report


def test_missing_corpus_fails_with_one_line(tmp_path):
    pytest.importorskip("torch", reason="the pipeline needs PyTorch (streamsolve[torch])")
    env = {**os.environ, "STREAMSOLVE_BENCH_CORPUS": str(tmp_path / "absent"),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "paper_claims.py"),
                           "--profile", "tiny", "--out", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=time_limit(120))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"paper_claims: bench corpus not found at {tmp_path / 'absent'} "
        "(set STREAMSOLVE_BENCH_CORPUS)"]
