"""`streamsolve score` (KenLM ``query`` style JSON lines), `api.score`, and `generate`'s
sampling options, through the command line: stdin and files, per-document and per-token
records that add up to the summary and to `eval`, and the bad inputs (empty text, text
without tokens, a store without weights, stale weights) refused with exit 2."""

from __future__ import annotations

import io
import json
import math
import sys

import pytest

from streamsolve import api
from streamsolve.cli import main
from tests.conftest import write_text


def run(capsys, *args, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def store(tmp_path_factory, documents, tokenizer_file):
    folder = tmp_path_factory.mktemp("score")
    corpus = write_text(folder / "train.txt", "\n\n".join(documents[:32]) + "\n")
    path = folder / "m.zarr"
    assert main(["count", str(corpus), "--store", str(path), "--tokenizer", tokenizer_file,
                 "--radius", "2", "--quiet"]) == 0
    assert main(["finalize", str(path), "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def heldout_text(documents):
    return "\n\n".join(documents[32:40]) + "\n"


def lines_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_score_on_stdin_prints_documents_then_a_summary_equal_to_eval(
        capsys, monkeypatch, tmp_path, store, heldout_text):
    code, out, err = run(capsys, "score", store, "-", "--quiet",
                         stdin=heldout_text.encode(), monkeypatch=monkeypatch)
    assert code == 0, err
    records = lines_of(out)
    docs, summary = records[:-1], records[-1]
    assert summary["summary"] is True and len(docs) == summary["documents"] > 8
    assert [d["document"] for d in docs] == list(range(len(docs)))
    assert sum(d["tokens"] for d in docs) == summary["tokens"]
    assert sum(d["bytes"] for d in docs) == summary["bytes"]
    total = sum(d["log_prob"] for d in docs)
    assert summary["cross_entropy"] == pytest.approx(-total / summary["tokens"], rel=1e-12)
    assert summary["perplexity"] == pytest.approx(math.exp(summary["cross_entropy"]))
    # the same text as a file: the same records, and eval's figures
    path = write_text(tmp_path / "heldout.txt", heldout_text)
    code, out, _ = run(capsys, "score", store, path, "--quiet")
    assert code == 0 and lines_of(out) == records
    code, out, _ = run(capsys, "eval", store, path, "--json", "--quiet")
    evaluation = json.loads(out)
    assert evaluation["tokens"] == summary["tokens"]
    assert evaluation["cross_entropy"] == pytest.approx(summary["cross_entropy"], rel=1e-12)
    assert evaluation["bits_per_byte"] == pytest.approx(summary["bits_per_byte"], rel=1e-12)


def test_score_per_token_adds_up_to_the_documents(capsys, tmp_path, store, heldout_text):
    path = write_text(tmp_path / "heldout.txt", heldout_text)
    _, out, _ = run(capsys, "score", store, path, "--quiet")
    per_doc = lines_of(out)
    code, out, err = run(capsys, "score", store, path, "--per-token", "--quiet")
    assert code == 0, err
    tokens, summary = lines_of(out)[:-1], lines_of(out)[-1]
    assert len(tokens) == summary["tokens"] == per_doc[-1]["tokens"]
    assert set(tokens[0]) == {"document", "token", "text", "log_prob"}
    for doc in per_doc[:-1]:
        mine = [t["log_prob"] for t in tokens if t["document"] == doc["document"]]
        assert len(mine) == doc["tokens"]
        assert sum(mine) == pytest.approx(doc["log_prob"], rel=1e-12)
    assert all(t["log_prob"] < 0 for t in tokens)
    assert "".join(t["text"] for t in tokens if t["document"] == 0).strip()[:20] == \
        heldout_text.split("\n\n")[0].strip()[:20]


def test_api_score_is_an_iterator(store, heldout_text):
    records = api.score(str(store), ["-"], stdin=io.BytesIO(heldout_text.encode()))
    first = next(records)
    assert first["document"] == 0 and first["tokens"] > 0
    assert list(records)[-1]["summary"] is True


@pytest.mark.parametrize("text", [b"", b"\n\n   \n\t\n"])
def test_empty_text_and_text_without_tokens_exit_2(capsys, monkeypatch, store, text):
    code, out, err = run(capsys, "score", store, "--quiet", stdin=text, monkeypatch=monkeypatch)
    assert code == 2 and "no text to score" in err and out == ""


def test_empty_file_exits_2(capsys, tmp_path, store):
    path = write_text(tmp_path / "empty.txt", "")
    code, _, err = run(capsys, "score", store, path, "--quiet")
    assert code == 2 and "score: error:" in err


def test_store_without_weights_and_stale_weights_are_refused(capsys, tmp_path, documents,
                                                             tokenizer_file, heldout_text):
    corpus = write_text(tmp_path / "a.txt", "\n\n".join(documents[:10]) + "\n")
    path = tmp_path / "m.zarr"
    assert main(["count", str(corpus), "--store", str(path), "--tokenizer", tokenizer_file,
                 "--quiet"]) == 0
    text = write_text(tmp_path / "h.txt", heldout_text)
    code, _, err = run(capsys, "score", path, text, "--quiet")
    assert code == 2 and "no weights" in err and "streamsolve finalize" in err
    assert main(["finalize", str(path), "--quiet"]) == 0
    more = write_text(tmp_path / "b.txt", "\n\n".join(documents[10:20]) + "\n")
    assert main(["count", str(more), "--store", str(path), "--quiet"]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "score", path, text, "--quiet")
    assert code == 2 and "stale" in err


def test_generate_top_k_one_is_greedy_and_a_seed_reproduces(capsys, store):
    def generate(*extra):
        code, out, err = run(capsys, "generate", store, "The", "--tokens", 8, "--json",
                             "--quiet", *extra)
        assert code == 0, err
        return json.loads(out)["continuation"]

    greedy = generate()
    assert generate("--temperature", 1.0, "--top-k", 1, "--seed", 4) == greedy
    sampled = generate("--temperature", 0.9, "--top-p", 0.9, "--top-k", 40, "--seed", 7)
    assert sampled == generate("--temperature", 0.9, "--top-p", 0.9, "--top-k", 40, "--seed", 7)
    code, out, err = run(capsys, "generate", store, "The", "--tokens", 8, "--quiet")
    assert code == 0 and out.splitlines()[0] == greedy
    code, _, err = run(capsys, "generate", store, "The", "--top-p", 1.5, "--quiet")
    assert code == 2 and "top_p" in err
