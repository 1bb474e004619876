"""``--mode``: the mode of a local store's files (issue 26): chosen by the user on every
command that creates or writes a store, by default from the umask but never looser than the
store already is; not applicable to object stores."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from streamsolve.cli import main
from streamsolve.store.locking import lock_url
from streamsolve.store.permissions import store_file_mode

from ..conftest import write_text


@pytest.fixture
def umask():
    """Set the process umask for a test (restored after)."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.fixture
def shards(tmp_path, documents) -> list[str]:
    return [str(write_text(tmp_path / f"s{i}.txt", "\n\n".join(documents[i::2]) + "\n"))
            for i in range(2)]


def modes(store: Path) -> tuple[set, set]:
    """The modes of the store's files, and of its directories (the store's own included)."""
    files = {stat.S_IMODE(p.stat().st_mode) for p in store.rglob("*") if p.is_file()}
    dirs = {stat.S_IMODE(p.stat().st_mode) for p in [store, *store.rglob("*")] if p.is_dir()}
    return files, dirs


def cli(capsys, *argv) -> tuple[int, str]:
    code = main([*map(str, argv), "-q"])
    return code, capsys.readouterr().err.strip()


def test_mode_sets_every_file_and_later_writes_keep_it(tmp_path, shards, tokenizer_file,
                                                       capsys, umask):
    store = tmp_path / "m.zarr"
    assert cli(capsys, "count", shards[0], "--store", store, "--tokenizer", tokenizer_file,
               "--radius", "2", "--mode", "0600")[0] == 0
    assert modes(store) == ({0o600}, {0o700})
    assert not Path(lock_url(str(store))).exists()
    # later writes without --mode, under a wide umask, never loosen a private store
    assert cli(capsys, "count", shards[1], "--store", store)[0] == 0
    assert cli(capsys, "finalize", store, "--smoothing", "additive")[0] == 0
    assert modes(store) == ({0o600}, {0o700})
    # an explicit mode applies to the whole store, the existing files too
    assert cli(capsys, "finalize", store, "--smoothing", "additive", "--alpha", "0.5",
               "--mode", "640")[0] == 0
    assert modes(store) == ({0o640}, {0o750})


def test_the_default_is_the_umask(tmp_path, shards, tokenizer_file, capsys, umask):
    umask(0o027)
    store = tmp_path / "m.zarr"
    assert cli(capsys, "count", shards[0], "--store", store, "--tokenizer", tokenizer_file)[0] == 0
    assert modes(store) == ({0o640}, {0o750})


@pytest.mark.parametrize("mode", ["0400", "rw-------", "1777", "0o800"])
def test_a_bad_mode_is_one_line_before_anything_is_written(tmp_path, shards, tokenizer_file,
                                                           capsys, mode):
    store = tmp_path / "m.zarr"
    code, err = cli(capsys, "count", shards[0], "--store", store, "--tokenizer",
                    tokenizer_file, "--mode", mode)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"--mode {mode!r}" in err and "owner read and write" in err, err
    assert not store.exists() and not Path(lock_url(str(store))).exists()


def test_mode_does_not_apply_to_object_stores(caplog, umask):
    before = os.umask(0o022)
    os.umask(before)
    with caplog.at_level(logging.WARNING, logger="streamsolve"):
        with store_file_mode("memory://bucket/m.zarr", 0o600):
            inside = os.umask(before)
            os.umask(inside)
    assert inside == before, "nothing local changes for an object store"
    assert "--mode does not apply to the object store memory://bucket/m.zarr" in caplog.text
