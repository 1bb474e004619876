"""Stage banners (as KenLM's numbered stages) and a peak-memory sampler.

``with Stage("count", 1, 4) as stage: ...; stage.tokens = n`` logs::

    === 1/4 read + tokenize + count ===
    --- 1/4 read + tokenize + count: 12.3 s, 3,456,789 tokens, 281,000 tokens/s, peak RSS 1.10 GB

on the ``streamsolve`` logger (stderr), so a long run says where it is, how fast it goes and
which stage sets its memory peak (resident memory of this process and its children, sampled
by `PeakMemory`, which keeps each stage's maximum itself: the kernel's high-water mark is
only read, never reset, so ``/usr/bin/time -v`` reports the same peak as the run's JSON).
`TaskProgress` reports the share of Dask tasks done: a progress bar on a terminal, a log
line every half minute otherwise (batch jobs' log files stay readable).
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
    return sum(_tree_rss(pid).values())


def _tree_rss(pid: int | None) -> dict[int, int]:
    """Resident bytes of each process of the tree rooted at ``pid`` (default: this one)."""
    import psutil

    try:
        root = psutil.Process(pid or os.getpid())
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    sizes = {}
    for proc in procs:
        try:
            sizes[proc.pid] = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return sizes


def peak_rss(pid: int | None = None) -> int:
    """High-water mark of a process's resident memory in bytes (Linux ``VmHWM``; 0 unknown).

    Read only: streamsolve never resets it, so ``/usr/bin/time -v`` and other getrusage-based
    tools report the same peak as streamsolve's own figures."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PeakMemory:
    """Peak resident memory of a process tree while the block runs; ``peak`` in bytes.

    A thread samples each process of the tree every ``interval`` seconds and keeps the
    largest total (``sampled_peak``; it misses what lives between two samples). The
    kernel's high-water mark of each process (Linux ``VmHWM``, read, never reset) adds what
    the samples miss: a process whose mark rose while the block ran (or that was born in
    it) peaked at its new mark inside the block, exactly; one whose mark did not rise counts
    by its samples. ``peak`` is the larger of ``sampled_peak`` and the sum over the
    processes: exact for one process whose peak is its lifetime's, an upper bound for
    several (their peaks need not coincide).

    >>> with PeakMemory() as mem:
    ...     work()
    >>> mem.peak  # bytes

    Monitors nest freely (a run's, around its stages'): none changes what another sees.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.sampled_peak = 0
        self._marks_at_entry: dict[int, int] = {}
        self._sampled: dict[int, int] = {}  # largest sample of each process
        self._marks: dict[int, int] = {}  # each process's high-water mark, last read
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        sizes = _tree_rss(self.pid)
        marks = {pid: peak_rss(pid) for pid in sizes}
        with self._lock:  # the sampler thread and the exit's last sample
            self.sampled_peak = max(self.sampled_peak, sum(sizes.values()))
            for pid, size in sizes.items():
                self._sampled[pid] = max(self._sampled.get(pid, 0), size)
                self._marks[pid] = max(self._marks.get(pid, 0), marks[pid])
            self.peak = max(self.sampled_peak, sum(
                self._marks[pid] if self._marks[pid] > self._marks_at_entry.get(pid, 0)
                else self._sampled[pid] for pid in self._sampled))

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self._marks_at_entry = {pid: peak_rss(pid) for pid in _tree_rss(self.pid)}
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        return False


#: `PeakMemory` monitors started in this process by `start_process_monitor`, by key; a
#: stopped one leaves its peak (workers sharing a process, ``processes=False``, each ask).
_PROCESS_MONITORS: dict[str, "PeakMemory | int"] = {}
_PROCESS_MONITORS_LOCK = threading.Lock()


def start_process_monitor(key: str, interval: float = 0.5) -> bool:
    """Start a `PeakMemory` of this process's tree under ``key``, unless one runs already (run
    on each Dask worker by `streamsolve.engine.runtime.Runtime.reset_worker_peaks`); True."""
    with _PROCESS_MONITORS_LOCK:
        if key not in _PROCESS_MONITORS:
            _PROCESS_MONITORS[key] = PeakMemory(os.getpid(), interval).__enter__()
    return True


def stop_process_monitor(key: str) -> int:
    """Stop the monitor ``key`` of this process; its peak in bytes (0: none ran)."""
    with _PROCESS_MONITORS_LOCK:
        monitor = _PROCESS_MONITORS.get(key, 0)
        if isinstance(monitor, PeakMemory):
            monitor.__exit__(None, None, None)
            _PROCESS_MONITORS[key] = monitor = monitor.peak
    return int(monitor)


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
