"""`eval` and `score` read long documents in windows within ``--memory`` (issue 26): the figures
are those of whole documents (contexts carry over: the last R tokens), and memory stays
bounded however long a document (one 300 MB document peaked at 5.9 GB under ``--memory 1GB``)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streamsolve
from streamsolve import api
from streamsolve.documents import iter_token_documents, iter_token_pieces, window_bytes
from streamsolve.language_model import LanguageModel
from streamsolve.score_text import file_documents, score_documents

from .conftest import pydoc_documents, write_text

TIGHT = "8MB"  # a window of 64 KB: the long documents below come in many pieces


@pytest.fixture(scope="module")
def store(tmp_path_factory, tokenizer_file):
    folder = tmp_path_factory.mktemp("windows")
    train = write_text(folder / "train.txt", "\n\n".join(pydoc_documents()[:60]) + "\n")
    path = str(folder / "m.zarr")
    api.count([str(train)], path, tokenizer=tokenizer_file, radius=3)
    api.finalize(path, calibrate=False)
    return path


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """One file of long documents (blank lines only between topics of 40) and long lines
    (a 300 KB line), one of ordinary documents."""
    folder = tmp_path_factory.mktemp("windows-text")
    topics = pydoc_documents()
    long_docs = ["\n".join(line for t in topics[i:i + 40] for line in t.split("\n") if line.strip())
                 for i in (0, 40)]
    long_line = " ".join(t.replace("\n", " ") for t in topics)[:300_000]
    long = write_text(folder / "long.txt", "\n\n".join(long_docs + [long_line, topics[0]]) + "\n")
    plain = write_text(folder / "plain.txt", "\n\n\n".join(topics[:40]) + "\n")
    assert min(len(d) for d in long_docs) > 3 * window_bytes(TIGHT)
    return [str(long), str(plain)]


def test_window_follows_the_budget():
    assert window_bytes(None) == window_bytes("16GB") == 8 << 20
    assert window_bytes("2GiB") == 8 << 20 and window_bytes("256MiB") == 1 << 20
    assert window_bytes("1MB") == 64 << 10


def test_eval_figures_are_identical_in_windows(store, texts):
    whole = api.evaluate(store, texts)
    windowed = api.evaluate(store, texts, memory=TIGHT)
    assert windowed.tokens == whole.tokens and windowed.bytes == whole.bytes
    assert windowed.cross_entropy == whole.cross_entropy  # bit for bit: the same positions
    model = LanguageModel.open(store)
    docs = list(iter_token_documents(texts, model))  # whole documents, held in a list
    assert model.evaluate_ids(docs).cross_entropy == whole.cross_entropy


def test_pieces_of_a_long_document_carry_its_context(store, texts):
    model = LanguageModel.open(store)
    pieces = list(iter_token_pieces(texts[:1], model, block_bytes=64 << 10))
    assert sum(not starts for _, starts in pieces) >= 6
    joined = list(iter_token_documents(texts[:1], model))
    assert len(joined) == sum(starts for _, starts in pieces)
    np.testing.assert_array_equal(np.concatenate(joined), np.concatenate([p for p, _ in pieces]))
    total = sum(model.log_prob(doc) for doc in joined)
    windows = model.evaluate_ids(iter(pieces))
    assert windows.cross_entropy == pytest.approx(-total / windows.tokens, rel=1e-12)
    assert windows.tokens == sum(len(d) for d in joined)


def records(store, texts, memory=None, **kwargs):
    out = list(api.score(store, texts, memory=memory, **kwargs))
    return out[:-1], out[-1]


def test_score_sums_a_document_across_windows(store, texts):
    whole_docs, whole = records(store, texts)
    windowed_docs, windowed = records(store, texts, TIGHT)
    assert [(d["tokens"], d["bytes"]) for d in windowed_docs] == \
        [(d["tokens"], d["bytes"]) for d in whole_docs]
    for a, b in zip(windowed_docs, whole_docs):
        assert a["log_prob"] == pytest.approx(b["log_prob"], rel=1e-12)
    assert {k: windowed[k] for k in ("documents", "tokens", "bytes")} == \
        {k: whole[k] for k in ("documents", "tokens", "bytes")}
    assert windowed["cross_entropy"] == pytest.approx(whole["cross_entropy"], rel=1e-12)
    evaluated = api.evaluate(store, texts)
    assert whole["tokens"] == evaluated.tokens and whole["bytes"] == evaluated.bytes
    assert whole["cross_entropy"] == pytest.approx(evaluated.cross_entropy, rel=1e-12)
    # one record per document: the same as scoring whole documents, held whole
    model = LanguageModel.open(store)
    held = [(lines, n) for lines, n, _ in file_documents(texts, window=1 << 30)]
    assert list(score_documents(model, held))[:-1] == whole_docs
    per_token = list(api.score(store, texts, memory=TIGHT, per_token=True))[:-1]
    assert len(per_token) == whole["tokens"]
    assert {r["document"] for r in per_token} == set(range(len(whole_docs)))


def test_score_of_stdin_comes_in_windows_too(store, texts):
    data = Path(texts[0]).read_bytes() + b"\n\n\n"
    files, _ = records(store, texts[:1])
    piped_docs, piped = records(store, ["-"], TIGHT, stdin=io.BytesIO(data))
    assert [(d["tokens"], d["bytes"]) for d in piped_docs[:-1]] == \
        [(d["tokens"], d["bytes"]) for d in files[:-1]]
    assert piped["bytes"] == len(data) and piped["tokens"] == sum(d["tokens"] for d in files)
    assert piped["cross_entropy"] == pytest.approx(
        -sum(d["log_prob"] for d in files) / piped["tokens"], rel=1e-12)


def tree_peak(args: list[str]) -> tuple[dict, int]:
    from streamsolve.engine.progress import PeakMemory

    root = str(Path(streamsolve.__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-m", "streamsolve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"})
    with PeakMemory(proc.pid, interval=0.1) as memory:
        out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0
    return json.loads(out.strip().splitlines()[-1]), memory.peak


@pytest.mark.slow
def test_one_long_document_is_scored_in_bounded_memory(store, tmp_path):
    """A 24 MB file of one document under ``--memory 400MB`` (budgets below one process's
    268 MB base are refused): the tree's peak stays within it, where holding the document
    cost 1.2 GB (``score``, before windows)."""
    topics = [line for t in pydoc_documents() for line in t.split("\n") if line.strip()]
    text = "\n".join(topics) + "\n"
    path = tmp_path / "one.txt"
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(24_000_000 // len(text.encode()) + 1):
            handle.write(text)
    size = path.stat().st_size
    result, peak = tree_peak(["eval", store, str(path), "--memory", "400MB", "--json"])
    assert result["bytes"] == size
    assert peak < 400 * 10**6, f"eval peaked at {peak >> 20} MB"
    scored, peak = tree_peak(["score", store, str(path), "--memory", "400MB", "--quiet"])
    assert scored["summary"] and scored["documents"] == 1 and scored["bytes"] == size
    assert peak < 400 * 10**6, f"score peaked at {peak >> 20} MB"
