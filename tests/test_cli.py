"""The command line end to end on a tiny corpus, and every bad input of issue #2."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamsolve.cli import main

from .conftest import time_limit, write_text


def run_cli(capsys, *args) -> tuple[int, dict | None, str]:
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    payload = json.loads(out) if code == 0 and "--json" in args else None
    return code, payload, err


@pytest.fixture
def corpus(sharded_corpus) -> list[str]:
    """Three shards, one plain, one gzip, one xz."""
    return sharded_corpus(3, ("", "gz", "xz"))


def test_end_to_end(capsys, tmp_path, corpus, tokenizer_file, documents):
    store = tmp_path / "m.zarr"
    code, counted, err = run_cli(capsys, "count", *corpus, "--store", store, "--tokenizer",
                                 tokenizer_file, "--radius", 2, "--json")
    assert code == 0, err
    assert counted["shards"] == 3 and counted["tokens"] > 1000
    code, info, _ = run_cli(capsys, "info", store, "--json")
    assert info["vocab_size"] == 400 and info["radius"] == 2 and info["aggregation"] == "cat"
    assert info["tokens"] == counted["tokens"] and info["shards"] == 3
    assert len(info["nnz"]) == 2 and all(n > 0 for n in info["nnz"])
    assert info["weights"] is None

    heldout = write_text(tmp_path / "held.txt", "\n\n".join(documents[:3]) + "\n")
    code, fin, err = run_cli(capsys, "finalize", store, "--calibrate", heldout, "--json")
    assert code == 0, err
    assert fin["smoothing"] == "kneser-ney" and fin["calibration"]["calibrated_cross_entropy"] <= \
        fin["calibration"]["raw_cross_entropy"]

    code, ev, err = run_cli(capsys, "eval", store, heldout, "--json")
    assert code == 0, err
    assert {"tokens", "bytes", "cross_entropy", "perplexity", "bits_per_byte"} <= set(ev)
    assert ev["perplexity"] == pytest.approx(np.exp(ev["cross_entropy"]))
    assert ev["bytes"] == heldout.stat().st_size  # every byte, blank lines included
    assert ev["bits_per_byte"] == pytest.approx(ev["cross_entropy"] * ev["tokens"] / np.log(2) / ev["bytes"])
    code, raw, _ = run_cli(capsys, "eval", store, heldout, "--uncalibrated", "--json")
    assert ev["cross_entropy"] <= raw["cross_entropy"]

    out = tmp_path / "counts.npz"
    code, exp, err = run_cli(capsys, "export", store, out, "--counts", "--json")
    assert code == 0, err
    with np.load(out) as arrays:
        assert sorted(arrays.files) == ["counts_1", "counts_2", "unigram"]
        assert arrays["counts_1"].shape == (400, 400)
        assert arrays["counts_1"].sum() == arrays["unigram"].sum() == counted["tokens"]

    code, gen, err = run_cli(capsys, "generate", store, "The", "--tokens", 5, "--json")
    assert code == 0, err
    assert gen["continuation"] and len(gen["top_next"]) == 5

    # human-readable output, too
    assert run_cli(capsys, "info", store)[0] == 0


def test_solve_summary_and_overwrite(capsys, tmp_path, corpus, tokenizer_file):
    store = tmp_path / "s.zarr"
    code, summary, err = run_cli(capsys, "solve", *corpus, "--store", store, "--tokenizer",
                                 tokenizer_file, "--heldout", "0.2", "--json")
    assert code == 0, err
    for key in ("new_tokens", "distinct_pairs", "seconds", "tokens_per_second",
                "heldout_perplexity", "calibrated_perplexity", "store"):
        assert key in summary
    assert summary["calibrated_cross_entropy"] <= summary["heldout_cross_entropy"]
    code, _, err = run_cli(capsys, "solve", *corpus, "--store", store, "--tokenizer", tokenizer_file)
    assert code == 2 and "--overwrite" in err
    code, again, err = run_cli(capsys, "solve", *corpus, "--store", store, "--tokenizer",
                               tokenizer_file, "--heldout", "0.2", "--overwrite", "--json")
    assert code == 0 and again["new_tokens"] == summary["new_tokens"]
    code, _, _ = run_cli(capsys, "solve", *corpus, "--store", store, "--tokenizer", tokenizer_file)
    assert code == 2


def test_jsonl_and_text_field(capsys, caplog, tmp_path, documents, tokenizer_file):
    path = tmp_path / "docs.jsonl.gz"
    lines = [json.dumps({"body": d}) for d in documents[:10]] + ["not json", json.dumps({"x": 1})]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    code, out, err = run_cli(capsys, "count", path, "--store", tmp_path / "j.zarr",
                             "--tokenizer", tokenizer_file, "--text-field", "body", "--json")
    assert code == 0, err
    assert out["tokens"] > 100
    assert "skipping record without a text field 'body'" in caplog.text


def test_module_entry_point_runs(tmp_path, corpus, tokenizer_file):
    proc = subprocess.run([sys.executable, "-m", "streamsolve", "count", str(corpus[0]),
                           "--store", str(tmp_path / "x.zarr"), "--tokenizer", tokenizer_file,
                           "--json", "-q"], capture_output=True, text=True,
                          timeout=time_limit(300))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["shards"] == 1


# -- bad input ---------------------------------------------------------------------------------

def assert_no_store(path: Path):
    assert not path.exists() or not (path / "counts").exists(), "nothing may be half-written"


def test_missing_path_is_named_and_nothing_written(capsys, tmp_path, corpus, tokenizer_file):
    store = tmp_path / "m.zarr"
    code, _, err = run_cli(capsys, "count", corpus[0], tmp_path / "nope.txt", "--store", store,
                           "--tokenizer", tokenizer_file)
    assert code == 2 and "nope.txt" in err and "not found" in err
    assert_no_store(store)


def test_corrupt_shard_is_named_and_nothing_written(capsys, tmp_path, corpus, tokenizer_file):
    bad = tmp_path / "broken.txt.gz"
    bad.write_bytes(gzip.compress(b"fine text\n" * 1000)[:-200] + b"garbage")
    store = tmp_path / "m.zarr"
    code, _, err = run_cli(capsys, "count", corpus[0], bad, "--store", store,
                           "--tokenizer", tokenizer_file)
    assert code == 2 and "broken.txt.gz" in err and "not readable" in err
    assert_no_store(store)


def test_empty_and_binary_shards_are_skipped_and_reported(capsys, caplog, tmp_path, corpus,
                                                          tokenizer_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n")
    binary = tmp_path / "image.bin"
    binary.write_bytes(bytes(range(256)) * 64)
    code, out, err = run_cli(capsys, "count", corpus[0], empty, blank, binary, "--store",
                             tmp_path / "m.zarr", "--tokenizer", tokenizer_file, "--json")
    assert code == 0, err
    assert sorted(Path(p).name for p in out["skipped_shards"]) == ["blank.txt", "empty.txt", "image.bin"]
    assert "looks binary" in caplog.text and "shard has no text" in caplog.text
    store = tmp_path / "only-empty.zarr"
    code, _, err = run_cli(capsys, "count", empty, binary, "--store", store,
                           "--tokenizer", tokenizer_file)
    assert code == 2 and "no text found" in err
    assert_no_store(store)


def test_invalid_utf8_is_replaced_and_counted(capsys, tmp_path, tokenizer_file):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 na\u00efve\n".encode("latin-1") * 10 + "ok \u00e9\n".encode())
    code, out, err = run_cli(capsys, "count", path, "--store", tmp_path / "m.zarr",
                             "--tokenizer", tokenizer_file, "--json")
    assert code == 0, err
    assert out["invalid_bytes"] == 20
    code, info, _ = run_cli(capsys, "info", tmp_path / "m.zarr", "--json")
    assert info["totals"]["invalid_bytes"] == 20


def test_store_built_differently_is_refused(capsys, tmp_path, corpus, tokenizer_file, documents):
    store = tmp_path / "m.zarr"
    assert run_cli(capsys, "count", corpus[0], "--store", store, "--tokenizer", tokenizer_file,
                   "--radius", 2)[0] == 0
    code, _, err = run_cli(capsys, "count", corpus[1], "--store", store, "--tokenizer",
                           tokenizer_file, "--radius", 3)
    assert code == 2 and "radius: store has 2, this run has 3" in err
    code, _, err = run_cli(capsys, "count", corpus[1], "--store", store, "--tokenizer",
                           tokenizer_file, "--aggregation", "sum")
    assert code == 2 and "aggregation: store has 'cat', this run has 'sum'" in err
    from streamsolve.text.tokenizer import train_bpe
    other = tmp_path / "other.json"
    other.write_text(train_bpe([d + "\n" for d in documents[::-1]], 300).to_str())
    code, _, err = run_cli(capsys, "count", corpus[1], "--store", store, "--tokenizer", other)
    assert code == 2 and "tokenizer: store has sha256" in err
    code, info, _ = run_cli(capsys, "info", store, "--json")
    assert info["shards"] == 1, "refused runs must not change the store"


@pytest.mark.parametrize("args,message", [
    (["--radius", "0"], "radius must be an integer >= 1"),
    (["--vocab-size", "100"], "vocab-size 100 is too small"),
])
def test_bad_count_parameters(capsys, tmp_path, corpus, args, message):
    store = tmp_path / "m.zarr"
    code, _, err = run_cli(capsys, "count", corpus[0], "--store", store, *args)
    assert code == 2 and message in err
    assert_no_store(store)


@pytest.mark.parametrize("args", [["--mu", "0"], ["--mu", "-1"], ["--alpha", "0"],
                                  ["--alpha", "nan"]])
def test_bad_smoothing_parameters(capsys, tmp_path, args):
    with pytest.raises(SystemExit) as exc:
        main(["finalize", str(tmp_path / "m.zarr"), *args])
    assert exc.value.code == 2
    assert "must be a positive number" in capsys.readouterr().err


def test_mu_with_additive_is_refused(capsys, tmp_path, corpus, tokenizer_file):
    store = tmp_path / "m.zarr"
    run_cli(capsys, "count", corpus[0], "--store", store, "--tokenizer", tokenizer_file)
    code, _, err = run_cli(capsys, "finalize", store, "--smoothing", "additive", "--mu", "3")
    assert code == 2 and "--mu applies to dirichlet" in err


def test_missing_store_and_stale_weights(capsys, tmp_path, corpus, tokenizer_file):
    code, _, err = run_cli(capsys, "info", tmp_path / "none.zarr")
    assert code == 2 and "no streamsolve store" in err
    store = tmp_path / "m.zarr"
    run_cli(capsys, "count", corpus[0], "--store", store, "--tokenizer", tokenizer_file)
    code, _, err = run_cli(capsys, "eval", store, corpus[1])
    assert code == 2 and "has no weights" in err
    assert run_cli(capsys, "finalize", store)[0] == 0
    assert run_cli(capsys, "eval", store, corpus[1])[0] == 0
    run_cli(capsys, "count", corpus[1], "--store", store)
    code, _, err = run_cli(capsys, "eval", store, corpus[2])
    assert code == 2 and "stale" in err


def test_export_refuses_large_vocabulary(tmp_path, corpus, tokenizer_file):
    from streamsolve import api

    store = tmp_path / "m.zarr"
    api.count([str(corpus[0])], str(store), tokenizer=tokenizer_file, radius=1)
    with pytest.raises(ValueError, match="over the memory budget"):
        api.export_counts(str(store), str(tmp_path / "x.npz"), memory="1KB")


def test_incremental_count_equals_one_build(tmp_path, corpus, tokenizer_file):
    from streamsolve import api
    from streamsolve.store.model_store import ModelStore

    one = tmp_path / "one.zarr"
    api.count([str(p) for p in corpus], str(one), tokenizer=tokenizer_file, radius=3,
              rows_per_block=37)
    inc = tmp_path / "inc.zarr"
    api.count([str(corpus[2])], str(inc), tokenizer=tokenizer_file, radius=3, rows_per_block=37)
    api.count([str(corpus[0])], str(inc))
    api.count([str(corpus[1])], str(inc))
    a, b = ModelStore(str(one)).read_counts(), ModelStore(str(inc)).read_counts()
    assert a.equal_counts(b)
    assert a.stats["tokens"] == b.stats["tokens"] and a.stats["bytes"] == b.stats["bytes"]
    assert sorted(s["path"] for s in a.shards) == sorted(s["path"] for s in b.shards)
    # the committed generation and the replaced ones, retired for readers (grace period)
    assert sorted(name for name, _ in ModelStore(str(inc)).group["counts"].groups()) == \
        ["g1", "g2", "g3"]
    assert sorted(ModelStore(str(inc)).meta["retired"]) == ["counts/g1", "counts/g2"]
