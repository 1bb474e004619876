"""Run one ``streamsolve`` command as a child process and measure it from the outside.

Independent of streamsolve's own modules (it drives the CLI, ``python -m streamsolve``, and
reads ``/proc`` through psutil), so it measures any version of the code the same way:

- ``tree_peak``: the largest total resident memory of the child's process tree, sampled
  every ``interval`` seconds (as an external monitor sees it);
- ``maxrss``: the kernel's high-water mark of the child as ``wait4`` returns it, the figure
  ``/usr/bin/time -v`` prints as "Maximum resident set size" (the largest of the child and
  its reaped descendants; not a sum);
- ``cpu``: user + system seconds of the child and its reaped descendants;
- the command's ``--json`` summary (its last stdout line) when it printed one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

import psutil

#: Seconds between two listings of the child's process tree (its sizes are read every sample).
LIST_EVERY = 1.0


@dataclasses.dataclass
class Measured:
    """What one measured run gave (bytes and seconds)."""

    args: list
    returncode: int
    tree_peak: int
    maxrss: int
    cpu: float
    wall: float
    summary: dict | None
    stderr: str

    @property
    def peak(self) -> int:
        """The larger of the sampled tree peak and the kernel's high-water mark."""
        return max(self.tree_peak, self.maxrss)


def tree_rss(root: psutil.Process, procs: list | None = None) -> int:
    """Resident bytes of ``root`` and all its descendants (0 once it is gone); ``procs``:
    the tree as listed earlier (listing it scans all of /proc: costly every 50 ms)."""
    try:
        procs = procs if procs is not None else [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(args: list, *, env: dict | None = None, pythonpath: str | None = None,
                 interval: float = 0.05, timeout: float | None = None,
                 kill_above: int | None = None) -> Measured:
    """``python -m streamsolve ARGS`` in a child, measured (see the module docstring).

    ``pythonpath`` is put first on the child's ``PYTHONPATH`` (the code to measure);
    ``kill_above`` kills the child when its tree passes that many bytes, ``timeout`` after
    that many seconds (its return code is then negative).
    """
    child_env = dict(os.environ if env is None else env)
    if pythonpath:
        child_env["PYTHONPATH"] = pythonpath + os.pathsep + child_env.get("PYTHONPATH", "")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamsolve", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=child_env)
    streams: dict = {}
    readers = [threading.Thread(target=lambda name=name: streams.__setitem__(
        name, getattr(proc, name).read()), daemon=True) for name in ("stdout", "stderr")]
    for reader in readers:
        reader.start()
    root, peak, procs, listed = psutil.Process(proc.pid), 0, None, 0.0
    while True:
        if time.perf_counter() - listed > LIST_EVERY:  # new children are seen within this
            try:
                procs, listed = [root] + root.children(recursive=True), time.perf_counter()
            except psutil.Error:
                procs = None
        try:  # a zombie child is not reaped yet: wait4 below gives its rusage
            done = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            done = True
        if done is not None:
            break
        peak = max(peak, tree_rss(root, procs))
        if (kill_above and peak > kill_above) or (
                timeout and time.perf_counter() - started > timeout):
            proc.kill()
        time.sleep(interval)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    summary = None
    lines = (streams.get("stdout") or "").strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            summary = json.loads(lines[-1])
        except ValueError:
            summary = None
    return Measured([str(a) for a in args], proc.returncode, peak, int(usage.ru_maxrss) * 1024,
                    usage.ru_utime + usage.ru_stime, time.perf_counter() - started, summary,
                    streams.get("stderr") or "")


def mib(n: float | None) -> str:
    """``123.4 MiB`` (``-`` for None)."""
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"
