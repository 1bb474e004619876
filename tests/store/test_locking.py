"""The writer lock: an atomic acquire (80 processes racing never see two holders), keyed on
the store's canonical path (aliases share it), debris (empty lock files, zombie holders) does
not block, waiting is bounded, and the object-store variant refuses, breaks and waits."""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import streamsolve
from streamsolve import api
from streamsolve.store import locking
from streamsolve.cli import build_parser
from streamsolve.store.locking import StoreLock, StoreLockedError, lock_url

from ..conftest import time_limit, write_text

WORKTREE = str(Path(streamsolve.__file__).resolve().parents[1])  # for child processes


@pytest.fixture
def shards(tmp_path, documents):
    folder = tmp_path / "shards"
    folder.mkdir()
    return [str(write_text(folder / f"s{i}.txt", "\n\n".join(documents[i::4]) + "\n"))
            for i in range(4)]


def dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def lock_record(**holder) -> dict:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": None,
              "started": "2026-01-01T00:00:00+00:00", "command": "count", "token": "t"}
    record.update(holder)
    return record


def start_holder(store: str, command: str = "holder-job",
                 storage_options: dict | None = None) -> subprocess.Popen:
    """A separate process holding the store's lock until its stdin is closed (it then
    releases the lock and exits) or it is killed; returned once it holds the lock."""
    code = (f"import sys\nfrom streamsolve.store.locking import StoreLock\n"
            f"with StoreLock({store!r}, {storage_options!r}, command={command!r}):\n"
            f"    print('held', flush=True)\n    sys.stdin.read()\n")
    env = {**os.environ, "PYTHONPATH": WORKTREE}
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


# -- atomic acquire ------------------------------------------------------------------------

def _racer(store: str, results: str, barrier, crash_record: str | None):
    """Take the lock once (retrying until it is ours); while holding, check that nobody else
    holds it.

    The racers start together at a barrier; losers retry after a short random pause that
    grows with each refusal (1 ms up to 64 ms), so the lock stays contended at every release
    without 79 spinning processes starving its holder of CPU. There is no deadline here: the
    test's hang guard (`time_limit`) stops racers that never get their turn.

    With ``crash_record``, the holder then ends without releasing, its lock file naming a
    dead (reaped) writer, as a SIGKILLed writer leaves it: the next racers find a stale lock.
    """
    lock = StoreLock(store, command="race")
    pause = random.Random(os.getpid())
    barrier.wait()
    for attempt in itertools.count():
        try:
            lock.acquire()
        except StoreLockedError:
            time.sleep(pause.uniform(0.001, 0.001 * 2 ** min(attempt, 6)))  # <= 64 ms; no overflow
            continue
        holding = os.path.join(results, "holding")
        try:
            marker = os.open(holding, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            Path(results, f"overlap-{os.getpid()}").touch()
            os._exit(0)
        time.sleep(0.01)
        os.close(marker)
        os.unlink(holding)
        Path(results, f"held-{os.getpid()}").touch()
        if crash_record:
            Path(lock_url(store)).write_text(crash_record)
            os._exit(0)  # the kernel releases a dead writer's lock
        lock.release()
        return


@pytest.mark.slow
def test_80_concurrent_acquires_never_see_two_holders(tmp_path):
    store = str(tmp_path / "m.zarr")
    results = tmp_path / "results"
    results.mkdir()
    crash_record = json.dumps(lock_record(pid=dead_pid()))
    Path(lock_url(store)).write_text(crash_record)  # the race starts after a crash
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(80)
    racers = [context.Process(target=_racer,
                              args=(store, str(results), barrier, crash_record if i % 2 else None))
              for i in range(80)]
    for racer in racers:
        racer.start()
    limit = time_limit(120)  # a hang guard: ~10 s on a quiet 2-core machine
    end = time.monotonic() + limit
    try:
        for racer in racers:
            racer.join(max(0.0, end - time.monotonic()))
    finally:
        stuck = [racer for racer in racers if racer.is_alive()]
        for racer in stuck:
            racer.kill()
            racer.join()
    names = sorted(p.name for p in results.iterdir())
    assert not [n for n in names if n.startswith("overlap")], "two processes held the lock"
    assert not stuck, f"{len(stuck)} racers still waiting for the lock after {limit:.0f} s"
    assert [racer.exitcode for racer in racers] == [0] * 80
    assert len([n for n in names if n.startswith("held")]) == 80, "every racer got its turn"


def test_lock_is_exclusive_between_two_lock_objects(tmp_path):
    store = str(tmp_path / "m.zarr")
    with StoreLock(store, command="first"):
        with pytest.raises(StoreLockedError, match=r"\(first\)"):
            StoreLock(store).acquire()
    with StoreLock(store):
        pass
    assert not os.path.exists(lock_url(store)), "a released lock leaves no file behind"


# -- keyed on the canonical store path -----------------------------------------------------

def test_aliases_of_a_locked_store_are_refused(tmp_path, shards, tokenizer_file, monkeypatch,
                                               capsys):
    store = tmp_path / "m.zarr"
    api.count(shards[:1], str(store), tokenizer=tokenizer_file)
    alias = tmp_path / "alias.zarr"
    alias.symlink_to(store, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    spellings = [str(alias), f"{store}/.", f"{store}/", f"{alias}/.", "m.zarr", "./m.zarr/",
                 f"file://{store}", f"{tmp_path}/x/../m.zarr"]
    assert {lock_url(s) for s in spellings} == {lock_url(str(store))}
    with StoreLock(str(store), command="first-writer"):
        for spelling in spellings:
            with pytest.raises(StoreLockedError, match=r"\(first-writer\)"):
                StoreLock(spelling).acquire()
        with pytest.raises(StoreLockedError):
            api.count(shards[1:2], str(alias))
        from streamsolve.cli import main

        assert main(["count", shards[1], "--store", f"{store}/."]) == 2
        assert "first-writer" in capsys.readouterr().err
    assert api.count(shards[1:2], str(alias)).new_tokens > 0


# -- debris: empty lock files and zombie holders -------------------------------------------

@pytest.mark.parametrize("content", [b"", b"{\"host\": \"x", b"\x00\x00\x00", b"[]"])
def test_empty_or_unreadable_lock_file_does_not_block_a_writer(tmp_path, shards,
                                                               tokenizer_file, content):
    store = str(tmp_path / "m.zarr")
    Path(lock_url(store)).write_bytes(content)  # e.g. left by a full disk at creation
    assert api.count(shards[:1], store, tokenizer=tokenizer_file).new_tokens > 0
    assert not os.path.exists(lock_url(store))


def test_lock_file_of_a_dead_writer_is_taken_over(tmp_path, shards, tokenizer_file, caplog):
    store = str(tmp_path / "m.zarr")
    Path(lock_url(store)).write_text(json.dumps(lock_record(pid=dead_pid())))
    api.count(shards[:1], store, tokenizer=tokenizer_file)
    assert "ended without releasing its lock" in caplog.text
    # a local lock file is only a description: what it says (another host, a live pid)
    # does not lock anything unless its writer holds the kernel lock
    records = (lock_record(host="other-node", pid=12345), lock_record(pid=os.getpid()))
    for shard, record in zip(shards[1:], records):
        Path(lock_url(store)).write_text(json.dumps(record))
        assert api.count([shard], store).new_tokens > 0


def test_holder_that_cannot_describe_itself_still_holds_the_lock(tmp_path, shards):
    """A full disk when the holder writes its details: the lock is held all the same (and
    the lock file left empty blocks nobody once the holder is gone)."""
    store = str(tmp_path / "m.zarr")
    code = ("import resource, signal\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # every write fails: EFBIG\n")
    env = {**os.environ, "PYTHONPATH": WORKTREE}
    holder = subprocess.Popen(
        [sys.executable, "-c", code + "import sys\nfrom streamsolve.store.locking import StoreLock\n"
         f"with StoreLock({store!r}):\n    print('held', flush=True)\n    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert Path(lock_url(store)).read_bytes() == b""
        with pytest.raises(StoreLockedError, match="details are unknown"):
            StoreLock(store).acquire()
    finally:
        holder.kill()
        holder.wait()
    with StoreLock(store):
        pass


def fork_zombie_holder(store: str, storage_options: dict | None = None) -> int:
    """A child that takes the lock and is SIGKILLed while holding it, left unreaped."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            StoreLock(store, storage_options, command="zombie").acquire()
            os.write(write_end, b"x")
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(write_end)
    assert os.read(read_end, 1) == b"x"
    os.close(read_end)
    os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + time_limit(10)
    while time.monotonic() < end:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return pid
        time.sleep(0.01)
    raise AssertionError("the child did not become a zombie")


def test_zombie_holder_does_not_block(tmp_path, shards, tokenizer_file):
    store = str(tmp_path / "m.zarr")
    zombie = fork_zombie_holder(store)
    try:
        assert api.count(shards[:1], store, tokenizer=tokenizer_file).new_tokens > 0
    finally:
        os.waitpid(zombie, 0)


# -- waiting is bounded --------------------------------------------------------------------

def test_cli_wait_is_bounded_and_names_the_holder(tmp_path, shards):
    store = str(tmp_path / "m.zarr")
    holder = start_holder(store)
    try:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "streamsolve", "count", shards[0],
                               "--store", store, "--wait", "1"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": WORKTREE},
                              timeout=time_limit(120))
        elapsed = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2, done.stderr
    assert len(errors) == 1, done.stderr
    assert f"pid {holder.pid}" in errors[0] and "(holder-job)" in errors[0]
    assert 1.0 <= waited_seconds(errors[0]) <= elapsed  # "waited 1 s" (1.2 s on a busy machine)
    assert "waiting for the lock" in done.stderr, "a progress line while waiting"
    assert elapsed >= 1.0


def waited_seconds(message: str) -> float:
    """The time a refusal says it waited (``waited 1 s``, ``waited 0.3 s``, rounded to 0.1)."""
    match = re.search(r"waited (\d+(?:\.\d)?) s", message)
    assert match, message
    return float(match.group(1)) + 0.05  # its rounding, at most


def test_wait_option_keeps_plain_wait_before_positionals():
    parser = build_parser()
    cases = {("finalize", "--wait", "S"): 600.0, ("finalize", "S", "--wait"): 600.0,
             ("finalize", "--wait", "2.5", "S"): 2.5, ("finalize", "S", "--wait=3"): 3.0,
             ("finalize", "S"): False}
    for argv, seconds in cases.items():
        args = parser.parse_args(list(argv))
        assert (args.store, args.wait) == ("S", seconds)
    args = parser.parse_args(["count", "--wait", "a.txt", "--store", "S"])
    assert args.corpus == ["a.txt"] and args.wait == 600.0
    with pytest.raises(SystemExit):
        parser.parse_args(["finalize", "S", "--wait", "-1"])


def test_api_waits_for_a_holder_then_proceeds_or_gives_up(tmp_path, shards, tokenizer_file,
                                                          caplog):
    store = str(tmp_path / "m.zarr")
    api.count(shards[:1], store, tokenizer=tokenizer_file)
    holder = start_holder(store)
    try:
        with pytest.raises(StoreLockedError, match=rf"pid {holder.pid}, since .*--wait"):
            api.count(shards[1:2], store)
        with pytest.raises(StoreLockedError):
            api.finalize(store)
        started = time.monotonic()
        with pytest.raises(StoreLockedError, match=r"waited 0\.\d s") as refused:
            api.count(shards[1:2], store, wait=0.3)
        assert 0.3 <= waited_seconds(str(refused.value)) <= time.monotonic() - started + 0.05
        # wait=True proceeds once the holder releases the lock: release it while a count waits
        caplog.set_level(logging.INFO, logger=locking.__name__)
        caplog.clear()
        outcome: dict = {}

        def count_waiting():
            try:
                outcome["result"] = api.count(shards[1:2], store, wait=True)
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcome["error"] = exc

        waiter = threading.Thread(target=count_waiting)
        waiter.start()
        end = time.monotonic() + time_limit(60)
        while "waiting for the lock" not in caplog.text and waiter.is_alive():
            assert time.monotonic() < end, "the count did not start waiting for the lock"
            time.sleep(0.01)
        assert "error" not in outcome and "result" not in outcome, "it did not wait"
        holder.stdin.close()  # the holder releases the lock and exits
        assert holder.wait(time_limit(60)) == 0
        waiter.join(time_limit(120))
        assert not waiter.is_alive(), "the waiting count did not proceed after the release"
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"].new_tokens > 0
    finally:
        holder.kill()
        holder.wait()
    assert not os.path.exists(lock_url(store)), "the lock is released after the ingest"
    with pytest.raises(ValueError, match="wait"):
        StoreLock(store, wait=-1)


# -- object stores: a conditional create ---------------------------------------------------

@pytest.fixture
def memory_store():
    import fsspec

    url = f"memory://locks-{os.getpid()}-{time.monotonic_ns()}/m.zarr"
    yield url
    fs = fsspec.filesystem("memory")
    for path in fs.find(fs._strip_protocol(url).rsplit("/", 1)[0]):
        fs.rm(path)


def write_memory_lock(url: str, data: bytes):
    import fsspec

    with fsspec.open(lock_url(url), "wb") as handle:
        handle.write(data)


def test_object_store_lock_is_exclusive_and_keyed_on_the_normalised_url(memory_store):
    assert lock_url(memory_store + "/") == lock_url(memory_store.replace("/m.zarr", "/x/../m.zarr"))
    with StoreLock(memory_store, command="first"):
        with pytest.raises(StoreLockedError, match=r"\(first\).*--wait"):
            StoreLock(memory_store + "/.").acquire()
    with StoreLock(memory_store):
        pass


def test_object_store_stale_zombie_other_host_and_debris(memory_store, tmp_path, monkeypatch,
                                                         caplog):
    write_memory_lock(memory_store, json.dumps(lock_record(pid=dead_pid())).encode())
    with StoreLock(memory_store):
        pass
    assert "breaking the stale lock" in caplog.text
    zombie = fork_zombie_holder(str(tmp_path / "other.zarr"))  # a real zombie pid to describe
    try:
        record = lock_record(pid=zombie, process_start=psutil.Process(zombie).create_time())
        write_memory_lock(memory_store, json.dumps(record).encode())
        with StoreLock(memory_store):
            pass
    finally:
        os.waitpid(zombie, 0)
    write_memory_lock(memory_store, json.dumps(lock_record(host="other-node")).encode())
    with pytest.raises(StoreLockedError, match="another host.*--break-lock"):
        StoreLock(memory_store).acquire()
    with StoreLock(memory_store, break_lock=True):
        pass
    # an empty lock object is refused while it may still be being written, then is debris
    # (the refusal must come before it is DEBRIS_SECONDS old: allow for a busy machine)
    debris_seconds = time_limit(0.5)
    monkeypatch.setattr(locking, "DEBRIS_SECONDS", debris_seconds)
    write_memory_lock(memory_store, b"")
    with pytest.raises(StoreLockedError, match="details are unknown"):
        StoreLock(memory_store).acquire()
    with StoreLock(memory_store, wait=10 * debris_seconds):
        pass
    assert "removing the debris lock" in caplog.text
