"""Stage banners (as KenLM's numbered stages) and a peak-memory sampler.

``with Stage("count", 1, 4) as stage: ...; stage.tokens = n`` logs::

    === 1/4 read + tokenize + count ===
    --- 1/4 read + tokenize + count: 12.3 s, 3,456,789 tokens, 281,000 tokens/s

on the ``streamsolve`` logger (stderr), so a long run says where it is and how fast it goes.
"""

from __future__ import annotations

import logging
import os
import threading
import time

logger = logging.getLogger("streamsolve.progress")


class Stage:
    """A named stage of a run: logs a banner on entry and elapsed time (and tokens/s) on exit."""

    def __init__(self, name: str, number: int | None = None, total: int | None = None,
                 log: logging.Logger | None = None):
        self.name = name
        self.label = f"{number}/{total} {name}" if number is not None and total else name
        self.tokens: int | None = None
        self.detail: str = ""
        self.seconds = 0.0
        self.log = log or logger

    def __enter__(self) -> "Stage":
        self.log.info("=== %s ===", self.label)
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.seconds = time.perf_counter() - self._started
        if exc_type is not None:
            self.log.info("--- %s: failed after %.1f s", self.label, self.seconds)
            return False
        rate = ""
        if self.tokens:
            rate = f", {self.tokens:,} tokens, {self.tokens / max(self.seconds, 1e-9):,.0f} tokens/s"
        self.log.info("--- %s: %.1f s%s%s", self.label, self.seconds, rate,
                      f", {self.detail}" if self.detail else "")
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


class PeakMemory:
    """Sample the resident memory of a process tree in a thread; ``peak`` is the maximum seen.

    >>> with PeakMemory() as mem:
    ...     work()
    >>> mem.peak  # bytes
    """

    def __init__(self, pid: int | None = None, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.peak = tree_rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))
        return False
