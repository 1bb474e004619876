"""Spill directories hold a user's counts in plain files: they must be private (0700, files
0600), gone after every run (normal end, error, SIGTERM, Ctrl-C), and a directory left by a
run killed outright is removed by the next run, but only when its owner is really dead."""

from __future__ import annotations

import gzip
import os
import signal
import stat
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

import streamsolve as ss
from streamsolve.core.counting import CountConfig
from streamsolve.ingest import count_corpus
from streamsolve.text.reading import CorpusError, ReadOptions

from ..conftest import time_limit
from ..deploy_helpers import child_env, wait_for, write_shards


@pytest.fixture
def private_umask():
    """A permissive umask (0): spill files must be private whatever the umask says."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _shards(tmp_path, documents, n=3):
    directory = tmp_path / "corpus"
    directory.mkdir()
    paths = []
    for i in range(n):
        path = directory / f"shard-{i}.txt"
        path.write_text("\n\n".join(documents[i::n]) + "\n", encoding="utf-8")
        paths.append(str(path))
    return paths


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_spill_directory_and_runs_are_private_while_the_run_holds_them(
        tmp_path, documents, tokenizer_text, private_umask):
    config = CountConfig(Tokenizer.from_str(tokenizer_text).get_vocab_size(), 2, "cat")
    root = tmp_path / "spill"
    partial = count_corpus(_shards(tmp_path, documents), tokenizer_text, config, ReadOptions(),
                           scheduler="threads", workers=2, split_every=2, memory="1MB",
                           tmp=str(root), rows_per_block=64, keep_partial=True).counts
    assert partial.spilled_runs > 0
    (name,) = os.listdir(root)
    directory = root / name
    assert _mode(directory) == 0o700
    files = os.listdir(directory)
    assert files and all(_mode(directory / f) == 0o600 for f in files)
    # a merge pass (more runs than the fan-in) writes its longer runs privately too
    from streamsolve.engine.spill import merge_sources

    runs = partial.sources(0)
    merged = merge_sources(runs, 1 << 16, str(directory), config.vocab_size, 64, fan_in=2)
    sum(k.size for k, _ in merged)
    assert all(_mode(directory / f) == 0o600 for f in os.listdir(directory))
    partial.spill_directory.cleanup()
    assert os.listdir(root) == []


def test_no_spill_directory_left_after_a_run_or_an_error(tmp_path, documents, tokenizer_file):
    root = tmp_path / "spill"
    paths = _shards(tmp_path, documents)
    ss.count(paths, str(tmp_path / "m.zarr"), tokenizer=tokenizer_file, memory="1MB",
             force_memory=True, tmp=str(root))
    assert os.listdir(root) == []
    broken = tmp_path / "corpus" / "truncated.txt.gz"
    whole = gzip.compress("\n\n".join(documents).encode())
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorpusError, match="truncated"):
        ss.count([*paths, str(broken)], str(tmp_path / "n.zarr"), tokenizer=tokenizer_file,
                 memory="1MB", force_memory=True, tmp=str(root))
    assert os.listdir(root) == []


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_run_removes_its_spill_directory(tmp_path, tokenizer_file, signum, status):
    """SIGTERM (a batch system's stop, `kill`) and Ctrl-C unwind the run like an error."""
    root = tmp_path / "spill"
    corpus = tmp_path / "corpus"
    for path in write_shards(corpus, n=4):
        path.write_text(path.read_text() * 8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamsolve", "count", str(corpus), "--store",
         str(tmp_path / "m.zarr"), "--tokenizer", tokenizer_file, "--memory", "1MB",
         "--force-memory", "--tmp", str(root), "--workers", "2"],
        env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        def spilled():
            assert proc.poll() is None, "the run ended before it was signalled"
            return any(os.listdir(root / d) for d in os.listdir(root)) if root.exists() else False

        wait_for(spilled, 60, "the first spilled run")
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=time_limit(120))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, stderr[-2000:]
    assert os.listdir(root) == []
    assert "Traceback" not in stderr


def _sleeper() -> subprocess.Popen:
    """A process that lives until it is killed (however long the test takes)."""
    return subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])


def test_next_run_removes_directories_of_dead_owners_only(tmp_path, documents, tokenizer_file):
    import psutil

    from streamsolve.engine.spill import SpillOwner

    root = tmp_path / "spill"
    root.mkdir()

    def make(owner, tag):
        path = root / owner.directory_name(tag)
        path.mkdir(mode=0o700)
        (path / "run-x.keys.npy").write_bytes(b"counts")
        return path.name

    dead = _sleeper()
    zombie = _sleeper()
    alive = _sleeper()
    try:
        dead_owner = SpillOwner.of_process(dead.pid)
        zombie_owner = SpillOwner.of_process(zombie.pid)
        dead.kill()
        dead.wait()
        zombie.kill()  # not reaped: a zombie, dead although its pid exists
        wait_for(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE, 10,
                 "the zombie")
        me = SpillOwner.of_process()
        removed = {make(dead_owner, "dead"), make(zombie_owner, "zombie"),
                   make(SpillOwner(me.host, me.pid, me.started - 100), "pidreused")}
        kept = {make(me, "thisprocess"), make(SpillOwner.of_process(alive.pid), "alive"),
                make(SpillOwner("another-host", dead_owner.pid, dead_owner.started), "remote")}
        legacy = root / "streamsolve-spill-0123456789ab"  # no owner recorded: never removed
        legacy.mkdir()
        victim = tmp_path / "victim"  # a symlink with a dead owner's name is not followed
        victim.mkdir()
        (victim / "thesis.tex").write_text("precious")
        link = root / dead_owner.directory_name("symlink")
        link.symlink_to(victim)
        kept |= {legacy.name, link.name}

        ss.count(_shards(tmp_path, documents), str(tmp_path / "m.zarr"),
                 tokenizer=tokenizer_file, memory="1MB", force_memory=True, tmp=str(root))
        assert set(os.listdir(root)) == kept
        assert (victim / "thesis.tex").read_text() == "precious"
        assert not removed & set(os.listdir(root))
    finally:
        for proc in (dead, zombie, alive):
            proc.kill()
            proc.wait()


def test_spill_owner_names_round_trip():
    from streamsolve.engine.spill import SpillOwner

    owner = SpillOwner("node-7.cluster", 4242, 171234567890)
    assert SpillOwner.parse(owner.directory_name("abc123")) == owner
    assert SpillOwner.parse("streamsolve-spill-0123456789ab") is None
    assert SpillOwner.parse("something-else") is None
    assert SpillOwner.of_process().is_alive()
