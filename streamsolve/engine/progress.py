"""Stage banners (as KenLM's numbered stages) and a peak-memory sampler.

``with Stage("count", 1, 4) as stage: ...; stage.tokens = n`` logs::

    === 1/4 read + tokenize + count ===
    --- 1/4 read + tokenize + count: 12.3 s, 3,456,789 tokens, 281,000 tokens/s, peak RSS 1.10 GB

on the ``streamsolve`` logger (stderr), so a long run says where it is, how fast it goes and
which stage sets its memory peak (resident memory of this process and its children: sampled
twice a second, and on Linux also each process's own high-water mark, reset when the stage
starts, so a spike between two samples is not missed). `TaskProgress` reports the share of Dask tasks done: a progress bar on a
terminal, a log line every half minute otherwise (batch jobs' log files stay readable).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from dask.callbacks import Callback

logger = logging.getLogger("streamsolve.engine.progress")


class Stage:
    """A named stage of a run: logs a banner on entry and elapsed time (and tokens/s) on exit."""

    def __init__(self, name: str, number: int | None = None, total: int | None = None,
                 log: logging.Logger | None = None, measure: bool | None = None):
        self.name = name
        self.label = f"{number}/{total} {name}" if number is not None and total else name
        self.tokens: int | None = None
        self.detail: str = ""
        self.seconds = 0.0
        self.peak_rss = 0
        self.log = log or logger
        self._memory: PeakMemory | None = None
        self.measure = measure  # sample peak memory (default: when the log shows it)

    def __enter__(self) -> "Stage":
        self.log.info("=== %s ===", self.label)
        if self.measure or (self.measure is None and self.log.isEnabledFor(logging.INFO)):
            self._memory = PeakMemory(interval=0.5).__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.seconds = time.perf_counter() - self._started
        memory = ""
        if self._memory is not None:
            self._memory.__exit__(None, None, None)
            self.peak_rss = self._memory.peak
            from .memory import format_bytes

            memory = f", peak RSS {format_bytes(self.peak_rss)}"
        if exc_type is not None:
            self.log.info("--- %s: failed after %.1f s", self.label, self.seconds)
            return False
        rate = ""
        if self.tokens:
            rate = f", {self.tokens:,} tokens, {self.tokens / max(self.seconds, 1e-9):,.0f} tokens/s"
        self.log.info("--- %s: %.1f s%s%s%s", self.label, self.seconds, rate,
                      f", {self.detail}" if self.detail else "", memory)
        return False


def tree_rss(pid: int | None = None) -> int:
    """Resident memory (bytes) of a process and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid or os.getpid())
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def reset_peak_rss(pid: int | None = None) -> bool:
    """Reset the high-water mark of a process's resident memory (Linux: ``5`` written to
    ``/proc/PID/clear_refs``); whether it could. Running `PeakMemory` monitors take their
    marks first (e.g. a cluster's workers in this process)."""
    with PeakMemory._active_lock:
        for monitor in PeakMemory._active:
            monitor._sample()
    try:
        with open(f"/proc/{pid or os.getpid()}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss(pid: int | None = None) -> int:
    """High-water mark of a process's resident memory in bytes (Linux ``VmHWM``; 0 unknown)."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _tree_pids(pid: int | None) -> list[int]:
    import psutil

    try:
        root = psutil.Process(pid or os.getpid())
        return [root.pid] + [p.pid for p in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class PeakMemory:
    """Peak resident memory of a process tree while the block runs; ``peak`` in bytes.

    Two measures, the larger is ``peak``: the tree's total resident memory sampled every
    ``interval`` seconds in a thread (misses what lives between two samples: measured
    3-7% under the real peak), and on Linux the sum over the processes of the tree of each
    one's high-water mark (``VmHWM``), reset on entry (`reset_peak_rss`) or born since: exact
    for one process, an upper bound for several (their peaks need not coincide). A process
    whose mark could not be reset (it would carry an earlier peak) counts by its samples only.

    >>> with PeakMemory() as mem:
    ...     work()
    >>> mem.peak  # bytes

    Nested monitors (a run's, around its stages') each see the whole peak: a monitor takes
    the marks of the others before it resets them.
    """

    _active: list["PeakMemory"] = []
    _active_lock = threading.RLock()

    def __init__(self, pid: int | None = None, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.sampled_peak = 0
        self._marks: dict[int, int] = {}
        self._untrusted: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        with self._lock:  # the sampler thread and a nested monitor's entry
            self.sampled_peak = max(self.sampled_peak, tree_rss(self.pid))
            for pid in _tree_pids(self.pid):
                if pid not in self._untrusted:
                    self._marks[pid] = max(self._marks.get(pid, 0), peak_rss(pid))
            self.peak = max(self.sampled_peak, sum(self._marks.values()))

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        with PeakMemory._active_lock:  # the others take their marks before the reset
            for pid in _tree_pids(self.pid):
                if not reset_peak_rss(pid):
                    self._untrusted.add(pid)
            PeakMemory._active.append(self)
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        with PeakMemory._active_lock:
            PeakMemory._active.remove(self)
        return False


class TaskProgress:
    """Progress of a local Dask computation: a bar on a terminal, periodic log lines otherwise.

    A context manager around ``dask.compute`` on the local schedulers.
    """

    def __init__(self, stream=None, every: float = 30.0):
        self.stream = stream or sys.stderr
        self.every = every
        self._inner = None

    def __enter__(self) -> "TaskProgress":
        isatty = getattr(self.stream, "isatty", lambda: False)()
        if isatty:
            from dask.diagnostics import ProgressBar

            self._inner = ProgressBar(minimum=2.0, dt=1.0, out=self.stream)
        else:
            self._inner = LoggedProgress(self.every)
        self._inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)


class LoggedProgress(Callback):
    """Log ``tasks done / total`` at most every ``every`` seconds (local Dask schedulers)."""

    def __init__(self, every: float = 30.0):
        super().__init__()
        self.every = every
        self._total = 0
        self._started = self._last = time.perf_counter()

    def _start_state(self, dsk, state):
        self._total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._started = self._last = time.perf_counter()

    def _posttask(self, key, result, dsk, state, worker_id):
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            done = len(state["finished"])
            logger.info("    %d of %d tasks done (%.0f%%), %.0f s", done, self._total,
                        100.0 * done / max(self._total, 1), now - self._started)
