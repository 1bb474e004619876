"""The lock file beside a store is private and never a way to overwrite something else
(issue 26, S3 and S4).

S3: ``STORE.lock`` recorded the first six arguments (secrets given in ``--storage-options``
included) with mode 0644, and stayed behind after SIGKILL. Now it is 0600 whatever the
umask, and names only the command, host, pid and start time.

S4: a symbolic link at ``STORE.lock`` made a writer truncate and overwrite its target
(``O_CREAT`` without ``O_NOFOLLOW``, then ``ftruncate`` + ``pwrite``). Now a link, a
hard-linked file or a non-file there is refused in one line and left untouched.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from streamsolve.cli import main
from streamsolve.store.locking import StoreLock, lock_url

from ..conftest import write_text
from .disk_limits import WORKTREE

SECRET = "AKIA-very-secret-key"
RECORD_KEYS = {"host", "pid", "process_start", "started", "command", "token"}


@pytest.fixture
def shard(tmp_path, documents) -> str:
    return str(write_text(tmp_path / "shard.txt", "\n\n".join(documents[:10]) + "\n"))


@pytest.fixture
def victim(tmp_path) -> Path:
    """A user's file that a writer must never touch."""
    path = tmp_path / "precious.txt"
    path.write_text("years of work\n")
    return path


def refused(capsys, shard, store, tokenizer_file) -> str:
    code = main(["count", shard, "--store", str(store), "--tokenizer", tokenizer_file, "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert lock_url(str(store)) in err and "nothing was written" in err, err
    assert not Path(store).exists(), "nothing is written while the lock is unsafe"
    return err


def test_a_symlink_at_the_lock_path_is_refused_and_its_target_untouched(tmp_path, capsys, shard,
                                                                        tokenizer_file, victim):
    store = tmp_path / "m.zarr"
    os.symlink(victim, lock_url(str(store)))
    err = refused(capsys, shard, store, tokenizer_file)
    assert "symbolic link" in err
    assert victim.read_text() == "years of work\n"


def test_a_dangling_symlink_at_the_lock_path_creates_nothing(tmp_path, capsys, shard,
                                                             tokenizer_file):
    target = tmp_path / "elsewhere" / "planted"
    target.parent.mkdir()
    store = tmp_path / "m.zarr"
    os.symlink(target, lock_url(str(store)))
    assert "symbolic link" in refused(capsys, shard, store, tokenizer_file)
    assert not target.exists()


def test_a_hard_link_or_a_directory_at_the_lock_path_is_refused(tmp_path, capsys, shard,
                                                               tokenizer_file, victim):
    store = tmp_path / "m.zarr"
    os.link(victim, lock_url(str(store)))
    assert "hard links" in refused(capsys, shard, store, tokenizer_file)
    assert victim.read_text() == "years of work\n"
    os.unlink(lock_url(str(store)))
    os.mkdir(lock_url(str(store)))
    refused(capsys, shard, store, tokenizer_file)


def test_the_lock_file_is_private_and_records_no_arguments(tmp_path):
    """A real writer (its secrets on the command line) is SIGKILLed holding the lock: what
    it leaves behind is mode 0600 and names no argument."""
    store = str(tmp_path / "m.zarr")
    code = ("import os, sys, time\nos.umask(0)\nfrom streamsolve.store.locking import StoreLock\n"
            f"with StoreLock({store!r}, command='count'):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", code, "count", "--storage-options", json.dumps({"key": SECRET})],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": WORKTREE})
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    path = Path(lock_url(store))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SECRET not in path.read_text()
    record = json.loads(path.read_text())
    assert set(record) == RECORD_KEYS and record["command"] == "count"
    with StoreLock(store):  # the dead writer's lock is taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_an_old_world_readable_lock_file_is_made_private(tmp_path):
    store = str(tmp_path / "m.zarr")
    path = Path(lock_url(store))
    path.write_text(json.dumps({"host": "h", "pid": 1, "argv": f"--key {SECRET}"}))
    path.chmod(0o644)
    with StoreLock(store):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert SECRET not in path.read_text()


def test_an_object_store_lock_records_no_arguments(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["streamsolve", "count", "--storage-options", SECRET])
    url = "memory://bucket/lock-safety/m.zarr"
    with StoreLock(url, command="count") as lock:
        record = json.loads(fsspec.filesystem("memory").cat_file(lock.path))
    assert set(record) == RECORD_KEYS and SECRET not in json.dumps(record)
