"""The means to run the suite under load (issue 21): `tests/load.py` starts N busy loops
beside a command and always stops them; `time_limit` scales hang guards with the load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .conftest import TIME_SCALE_ENV, time_limit, time_scale

LOAD_PY = Path(__file__).resolve().parent / "load.py"
#: A command that prints the pids of its sibling processes (the runner's busy loops).
PRINT_SIBLINGS = ("import os, sys, psutil; print(' '.join(str(p.pid) for p in "
                  "psutil.Process(os.getppid()).children() if p.pid != os.getpid()), flush=True)")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """The pids still running after a hang guard of ``seconds`` (polled)."""
    end = time.monotonic() + time_limit(seconds)
    while time.monotonic() < end and not all(gone(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if not gone(pid)]


def test_runner_passes_the_exit_status_and_stops_its_busy_loops():
    done = subprocess.run([sys.executable, str(LOAD_PY), "--busy", "2", "--command", "--",
                           sys.executable, "-c", PRINT_SIBLINGS + "; sys.exit(3)"],
                          capture_output=True, text=True, timeout=time_limit(60))
    assert done.returncode == 3, done.stderr
    loops = [int(pid) for pid in done.stdout.split()]
    assert len(loops) == 2
    assert wait_gone(loops, 10) == []
    assert "[load] 2 busy loops started; load average" in done.stderr
    assert "[load] exit 3 after" in done.stderr


def test_busy_loops_end_by_themselves_when_the_runner_is_killed():
    runner = subprocess.Popen([sys.executable, str(LOAD_PY), "--busy", "2", "--command", "--",
                               sys.executable, "-c", PRINT_SIBLINGS + "; sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        loops = [int(pid) for pid in runner.stdout.readline().split()]
        assert len(loops) == 2 and not any(gone(pid) for pid in loops)
        runner.kill()  # SIGKILL: no clean-up code of the runner runs
        runner.wait()
        assert wait_gone(loops, 10) == [], "busy loops outlived their runner"
    finally:
        os.killpg(runner.pid, signal.SIGKILL)  # the command, orphaned by the kill


def test_pytest_arguments_follow_the_double_dash():
    done = subprocess.run([sys.executable, str(LOAD_PY), "--busy", "0", "--", "--version"],
                          capture_output=True, text=True, timeout=time_limit(60))
    assert done.returncode == 0, done.stderr
    assert f"running: {sys.executable} -m pytest -q --version" in done.stderr


def test_time_limit_scales_with_the_environment_factor(monkeypatch):
    monkeypatch.delenv(TIME_SCALE_ENV, raising=False)
    assert time_scale() >= 1.0 and time_limit(10) >= 10.0  # never shorter than on a quiet machine
    monkeypatch.setenv(TIME_SCALE_ENV, "3")
    assert time_limit(10) >= 30.0
    for bad in ("0", "-1", "nan", "inf", "fast"):
        monkeypatch.setenv(TIME_SCALE_ENV, bad)
        with pytest.raises(pytest.UsageError, match=TIME_SCALE_ENV):
            time_limit(10)
