"""Hostile command lines: each fails with one line on stderr, exit 2, the store unchanged
(issue 16)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from streamsolve import api
from streamsolve.cli import main

from .conftest import time_limit


def _tree(path: Path) -> dict:
    """Every file under ``path`` with the hash of its bytes (the store's full state)."""
    if path.is_file():
        return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _fails_in_one_line(capsys, *args, message: str) -> str:
    code = main([*map(str, args), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert message in err, err
    return err


@pytest.fixture
def built(tmp_path, sharded_corpus, tokenizer_file) -> tuple[Path, list]:
    shards = sharded_corpus(2, "")
    path = tmp_path / "m.zarr"
    api.count([shards[0]], str(path), tokenizer=tokenizer_file, radius=1)
    api.finalize(str(path), calibrate=False)
    return path, shards


def test_store_path_that_is_a_regular_file(capsys, tmp_path, sharded_corpus, tokenizer_file):
    shards = sharded_corpus(1, "")
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for args in (["count", *shards, "--store", afile, "--tokenizer", tokenizer_file],
                 ["finalize", afile],
                 ["solve", *shards, "--store", afile, "--overwrite", "--tokenizer", tokenizer_file]):
        _fails_in_one_line(capsys, *args, message=str(afile))
        assert afile.read_text() == "mine"


def test_read_only_store(capsys, built, monkeypatch):
    store, shards = built
    before = _tree(store)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        False if str(p).startswith(str(store)) else real_access(p, mode, **kw)))
    for args in (["count", shards[1], "--store", store], ["finalize", store],
                 ["solve", shards[1], "--store", store, "--overwrite"]):
        _fails_in_one_line(capsys, *args, message="cannot write to")
    assert _tree(store) == before


def test_tmp_that_is_a_file(capsys, tmp_path, sharded_corpus, tokenizer_file):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = tmp_path / "new.zarr"
    _fails_in_one_line(capsys, "count", *sharded_corpus(1, ""), "--store", out, "--tokenizer",
                       tokenizer_file, "--tmp", afile, message="--tmp")
    assert not out.exists() and afile.read_text() == "x"


@pytest.mark.parametrize("what", ["--counts", "--weights", "--tokenizer"])
def test_export_to_a_directory(capsys, built, tmp_path, what):
    store, shards = built
    target = tmp_path / "outdir"
    target.mkdir()
    args = ["export", store, what, target] if what == "--tokenizer" else ["export", store,
                                                                          target, what]
    _fails_in_one_line(capsys, *args, message="is a directory")
    assert not any(target.iterdir())


@pytest.mark.parametrize("address", ["tcp://no-such-host:xx", "tcp://localhost:99999", "tcp://"])
def test_malformed_scheduler_address(capsys, built, address):
    store, shards = built
    before = _tree(store)
    started = time.perf_counter()
    _fails_in_one_line(capsys, "count", shards[1], "--store", store, "--scheduler",
                       address, message="not a Dask scheduler address")
    assert time.perf_counter() - started < time_limit(10)  # refused before connecting
    assert _tree(store) == before


def test_connect_timeout_nan(capsys, built):
    store, shards = built
    with pytest.raises(SystemExit) as exit_:
        main(["count", str(shards[1]), "--store", str(store), "--scheduler",
              "tcp://127.0.0.1:1", "--connect-timeout", "nan"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--connect-timeout: must be a positive number" in err and len(err.splitlines()) == 1


def _edit_attributes(store: Path, edit) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    edit(meta["attributes"])
    (store / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    (lambda s: _edit_attributes(s, lambda a: a.pop("config")), "config is missing"),
    (lambda s: _edit_attributes(s, lambda a: a["counts"].update(generation="1")),
     "counts.generation '1' is not an integer"),
    (lambda s: shutil.rmtree(next((s / "counts").glob("g*/r1"))), "missing in store"),
])
def test_damaged_store(capsys, built, damage, message):
    store, shards = built
    damage(store)
    before = _tree(store)
    for args in (["count", shards[1], "--store", store], ["finalize", store],
                 ["verify", store], ["export", store, store.parent / "c.npz", "--counts"]):
        _fails_in_one_line(capsys, *args, message=message)
    assert _tree(store) == before


def test_prompt_with_a_nul_character(capsys, built):
    store, _ = built
    before = _tree(store)
    _fails_in_one_line(capsys, "generate", store, "ab\0c", message="NUL")
    assert _tree(store) == before
