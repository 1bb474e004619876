"""Every store write that fails on a real limit (issue 26): a full disk (ENOSPC, a small
tmpfs) or a file-size limit (EFBIG, ``ulimit -f``) is one line naming the errno, exit 2, the
previous committed state intact and nothing half-written left (no partial ``weights/v...``),
and the same command succeeds once the limit is gone."""

from __future__ import annotations

import resource
import shutil
from pathlib import Path

import pytest

from streamsolve import api
from streamsolve.store.model_store import ModelStore

from .disk_limits import run_on_full_disk, run_with_file_size_limit, tree


@pytest.fixture(scope="module")
def finalized(tmp_path_factory, corpus, tokenizer_file) -> Path:
    store = tmp_path_factory.mktemp("finalized") / "m.zarr"
    api.count([corpus["first"]], str(store), tokenizer=tokenizer_file, radius=2)
    api.finalize(str(store), smoothing="additive", calibrate=False)
    return store


@pytest.fixture
def store(tmp_path, finalized) -> Path:
    copy = tmp_path / "m.zarr"
    shutil.copytree(finalized, copy)
    return copy


def assert_one_line(proc, *words):
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


# -- EFBIG: a file-size limit --------------------------------------------------------------

@pytest.mark.parametrize("command", ["finalize", "count"])
def test_a_file_size_limit_is_one_line_and_leaves_the_store_as_it_was(store, corpus, command):
    argv = {"finalize": ["finalize", store, "--smoothing", "additive", "--alpha", "0.5", "-q"],
            "count": ["count", corpus["second"], "--store", store, "-q"]}[command]
    before = tree(store)
    proc = run_with_file_size_limit(argv, 2048)
    assert_one_line(proc, "EFBIG", str(store), "file-size limit", "unchanged")
    assert tree(store) == before, "nothing half-written is left"
    assert not Path(f"{store}.lock").exists()
    assert api.verify(str(store))["ok"]
    assert run_with_file_size_limit(argv, resource.RLIM_INFINITY).returncode == 0


def test_a_file_size_limit_while_creating_a_store_leaves_no_store(tmp_path, corpus,
                                                                  tokenizer_file):
    store = tmp_path / "new.zarr"
    proc = run_with_file_size_limit(["count", corpus["first"], "--store", store, "--tokenizer",
                                     tokenizer_file, "-q"], 2048)
    assert_one_line(proc, "EFBIG", str(store))
    assert not store.exists() and not ModelStore(str(store)).exists()


# -- ENOSPC: a really full disk (a tmpfs) --------------------------------------------------

@pytest.mark.parametrize("command", ["finalize", "count"])
def test_a_full_disk_is_one_line_and_leaves_the_store_as_it_was(store, corpus, tmp_path,
                                                                command):
    argv = {"finalize": ["finalize", "{store}", "--smoothing", "additive", "--alpha", "0.5"],
            "count": ["count", corpus["second"], "--store", "{store}"]}[command]
    result = run_on_full_disk(store, [*argv, "-q"], free=16 << 10, tmp_path=tmp_path)
    assert_one_line(_Proc(result), "ENOSPC", "disk is full", "free space")
    assert result["after"] == result["before"], "nothing half-written is left"
    assert result["leftovers"] == ["m.zarr"], "no lock file or partial data beside the store"
    assert result["verify"]["ok"], result["verify"]
    assert result["again"][0] == 0, result["again"]


def test_refine_on_a_full_disk_leaves_no_partial_weights_version(store, corpus, tmp_path):
    """Refine wrote its dense tables into ``weights/v...`` and died with an ENOSPC
    traceback, leaving the partial version behind."""
    pytest.importorskip("torch")
    argv = ["refine", "{store}", corpus["second"], "--heldout", corpus["first"], "--steps",
            "2", "--eval-every", "1", "-q"]
    result = run_on_full_disk(store, argv, free=64 << 10, tmp_path=tmp_path)
    assert_one_line(_Proc(result), "ENOSPC", "disk is full", "previous weights stay current")
    assert result["after"] == result["before"], sorted(set(result["after"]) - set(result["before"]))
    assert result["verify"]["ok"] and result["verify"]["weights_id"] == \
        ModelStore(str(store)).meta["weights"]["id"]
    assert result["again"][0] == 0, result["again"]


class _Proc:
    """A child's result in the shape `assert_one_line` reads."""

    def __init__(self, result: dict):
        self.returncode, self.stderr = result["returncode"], result["stderr"]
