"""A full disk: one line naming the path and the fix, exit 2, nothing half-written (issue 16).

The full disk is simulated by making the write that would hit it raise ``ENOSPC`` (or, for
NumPy's ``tofile``, the short-write ``OSError`` it raises without an errno).
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from streamsolve import api
from streamsolve.cli import main
from tests.test_hostile_cli import _fails_in_one_line, _tree


def _enospc(path="") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


@pytest.fixture
def built(tmp_path, sharded_corpus, tokenizer_file):
    shards = sharded_corpus(2, "")
    path = tmp_path / "m.zarr"
    api.count([shards[0]], str(path), tokenizer=tokenizer_file, radius=1)
    api.finalize(str(path), calibrate=False)
    return path, shards


def test_disk_full_creating_the_lock_file(capsys, built, monkeypatch):
    store, shards = built
    before = _tree(store)
    real_open = os.open

    def full_open(path, flags, *args, **kwargs):
        if str(path).endswith(".lock") and flags & os.O_CREAT and not os.path.exists(path):
            raise _enospc(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", full_open)
    for args in (["count", shards[1], "--store", store], ["finalize", store]):
        err = _fails_in_one_line(capsys, *args, message="disk is full")
        assert "free space" in err and str(store.parent) in err
    assert _tree(store) == before


@pytest.mark.parametrize("failing", ["indices", "bias"])  # a row block / the version
def test_disk_full_writing_weights(capsys, built, monkeypatch, failing):
    from streamsolve.store import weight_blocks

    store, _ = built
    before = _tree(store)
    real_write = weight_blocks.write_checksummed_array

    def full_after_one(group, name, values):
        if name == failing:  # arrays before it are written: a half-written group is on disk
            raise _enospc()
        return real_write(group, name, values)

    monkeypatch.setattr(weight_blocks, "write_checksummed_array", full_after_one)
    err = _fails_in_one_line(capsys, "finalize", store, "--smoothing", "additive",
                             message="disk is full")
    assert str(store) in err and "free space" in err
    assert _tree(store) == before  # the half-written block was removed, nothing committed
    monkeypatch.undo()
    assert main(["finalize", str(store), "--smoothing", "additive", "-q"]) == 0


def test_disk_full_while_spilling(capsys, tmp_path, sharded_corpus, tokenizer_file, monkeypatch):
    shards = sharded_corpus(3, "")
    spill = tmp_path / "spill"
    spill.mkdir()
    store = tmp_path / "m.zarr"

    def short_write(file, arr, allow_pickle=True, fix_imports=True):
        file.write(b"\x93NUMPY")  # a partial file, then numpy's short-write error
        raise OSError("17172 requested and 12784 written")

    monkeypatch.setattr(np, "save", short_write)
    err = _fails_in_one_line(capsys, "count", *shards, "--store", store, "--tokenizer",
                             tokenizer_file, "--radius", "2", "--memory", "1MB", "--force-memory",
                             "--tmp", spill,
                             "--scheduler", "sync", message="disk is full")
    assert str(spill) in err and "--tmp DIR" in err
    assert not store.exists() or not any(store.rglob("counts*"))
    assert os.listdir(spill) == []  # the partial runs (and their directory) are gone
