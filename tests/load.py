"""Run the test suite (or any command) beside N busy-loop processes: the suite under load.

    python tests/load.py --busy 4                      # python -m pytest -q, with 4 busy loops
    python tests/load.py --busy 4 -- -m slow tests/store   # pytest arguments after --
    python tests/load.py --busy 4 --command -- make test-fast   # any command
    make test-loaded LOAD=4 TESTS='-m slow'            # the same from the Makefile

Each busy loop is a pure-Python process spinning at normal priority. They are always
stopped when the command ends, fails, or this script is interrupted (Ctrl-C, SIGTERM); if this
script is killed outright (SIGKILL) each loop notices its parent is gone and exits by itself
within a fraction of a second. The load average is printed before and after, with the wall
time and CPU time of the command; the exit status is the command's. ``--busy 0`` runs the
command alone, for a quiet-vs-loaded comparison of the same figures.

Time limits in the tests scale with the load on their own (``tests/conftest.py``,
`time_limit`), so nothing needs to be passed to the suite; ``--warmup`` waits until the
one-minute load average has risen by the busy loops before starting, so that the first
tests already see it.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import time

BUSY_LOOP = """\
import os
parent = os.getppid()
while os.getppid() == parent:  # exit by ourselves when the runner is gone, however it went
    for _ in range(100_000):
        pass
"""


def start_busy_loops(n: int) -> list[subprocess.Popen]:
    """``n`` busy-loop processes (pure Python, normal priority)."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                             start_new_session=True)  # Ctrl-C is ours to handle, not theirs
            for _ in range(n)]


def stop(loops: list[subprocess.Popen]):
    """Terminate each busy loop, kill it if it does not end, and reap it."""
    for loop in loops:
        if loop.poll() is None:
            loop.terminate()
    for loop in loops:
        try:
            loop.wait(5)
        except subprocess.TimeoutExpired:
            loop.kill()
            loop.wait()


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def warm_up(n: int, seconds: float):
    """Wait until the one-minute load average is at least ``n`` (or ``seconds`` pass)."""
    end = time.monotonic() + seconds
    while os.getloadavg()[0] < n and time.monotonic() < end:
        time.sleep(1)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the test suite (python -m pytest -q ...) beside N busy-loop processes.")
    parser.add_argument("--busy", type=int, default=2 * (os.cpu_count() or 1), metavar="N",
                        help="busy-loop processes to run beside the command "
                             "(default: 2 x cores = %(default)s)")
    parser.add_argument("--warmup", type=float, default=0.0, metavar="SECONDS",
                        help="wait at most this long for the load average to reach N first")
    parser.add_argument("--command", action="store_true",
                        help="the arguments are a whole command, not pytest arguments")
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help="pytest arguments (after --), or a command with --command")
    args = parser.parse_args(argv)
    if args.busy < 0:
        parser.error("--busy must be >= 0")
    if args.args[:1] == ["--"]:
        args.args = args.args[1:]
    if args.command and not args.args:
        parser.error("--command needs a command after --")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = args.args if args.command else [sys.executable, "-m", "pytest", "-q", *args.args]
    signal.signal(signal.SIGTERM, _raise_exit)
    loops = start_busy_loops(args.busy)
    try:
        warm_up(args.busy, args.warmup)
        print(f"[load] {args.busy} busy loops started; {load_line()}", file=sys.stderr, flush=True)
        print(f"[load] running: {' '.join(command)}", file=sys.stderr, flush=True)
        started = time.monotonic()
        returncode = subprocess.call(command)
        wall = time.monotonic() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command's tree: the busy
        cpu = usage.ru_utime + usage.ru_stime                  # loops are not reaped yet
        print(f"[load] exit {returncode} after {wall:.1f} s wall, {cpu:.1f} s CPU (user+sys "
              f"of the command's process tree); {load_line()}", file=sys.stderr, flush=True)
        return returncode
    finally:
        stop(loops)


if __name__ == "__main__":
    sys.exit(main())
