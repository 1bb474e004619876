"""Where Dask graphs run: one `Runtime` for the language model, shard hashing and the classifier.

A `Runtime` is the local threaded, process or synchronous scheduler, or a
``dask.distributed`` cluster (by address, or a client given by the caller). It is the one
place that connects to a scheduler (`connect_client`, with its timeout and error message),
computes graphs (`Runtime.compute`, with a progress display on the local schedulers), knows
how many worker threads and processes run tasks, and closes what it opened. `tree_reduce`
builds the tree of merge nodes both the language model and the classifier use.

Importing this module loads nothing but the standard library (the classifier imports it).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Seconds to wait for a ``dask.distributed`` scheduler to answer.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Local schedulers (anything else containing ``://`` is a scheduler address).
LOCAL_SCHEDULERS = ("threads", "processes", "sync")


class ClusterError(RuntimeError):
    """A cluster cannot be reached or started; the message names the address or the fix."""


def is_address(scheduler: str | None) -> bool:
    """Whether ``scheduler`` names a dask.distributed scheduler (not threads/processes/sync)."""
    return bool(scheduler) and "://" in scheduler


def check_scheduler_address(address: str) -> None:
    """Refuse a malformed ``tcp://HOST:PORT`` / ``tls://`` address before any connection
    (a half-built ``distributed.Client`` would wait out its timeout while closing).

    Raises
    ------
    ClusterError
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            host, port = parse_host_port(location)
            if not host or not 0 < int(port) < 65536:
                raise ValueError("expected tcp://HOST:PORT with a port in 1..65535")
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"not a Dask scheduler address: {address}: {exc}") from None


def connect_client(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT):
    """A ``distributed.Client`` on ``address`` (not made Dask's default client).

    Raises
    ------
    ClusterError
        Naming the address, if no scheduler answers within ``timeout`` seconds, the address
        is malformed, or a ``tls://`` address has no TLS settings.
    """
    from distributed import Client
    from distributed.security import Security

    check_scheduler_address(address)
    if address.startswith("tls://") and \
            Security().get_connection_args("client").get("ssl_context") is None:
        raise ClusterError(
            f"cannot connect to the Dask scheduler at {address} without TLS settings: set "
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ..._TLS__CLIENT__CERT and "
            "..._TLS__CLIENT__KEY (or Dask's distributed.comm.tls configuration)")
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within "
                           f"{timeout:g}s: {exc}") from exc
    except ValueError as exc:  # malformed address
        raise ClusterError(f"not a Dask scheduler address: {address}: {exc}") from exc


class Runtime:
    """A Dask scheduler to run graphs on: local threads/processes/sync, or a cluster.

    Parameters
    ----------
    scheduler : str, optional
        ``threads`` (default), ``processes``, ``sync``, or a ``dask.distributed`` address
        (``tcp://HOST:PORT``), connected to at once (`connect_client`).
    workers : int, optional
        Local worker count (default: the number of cores; ignored on a cluster).
    client : distributed.Client, optional
        Run on this cluster (not closed by `close`).
    progress : bool
        Show a progress display while local graphs run (and the dashboard of a cluster).
    connect_timeout : float
        Seconds to wait for the scheduler at an address.
    worker_setup : callable, optional
        Called once in every process that runs tasks before they run (this one, each
        process of the ``processes`` scheduler, each worker of a cluster): e.g. the memory
        plan's allocator tuning.

    Attributes
    ----------
    worker_threads : int
        Tasks that run at the same time.
    worker_processes : int
        Processes they run in.
    """

    def __init__(self, scheduler: str | None = None, workers: int | None = None, *, client=None,
                 progress: bool = True, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 worker_setup: Callable[[], object] | None = None):
        self.workers = workers
        self.progress = progress
        self.worker_setup = worker_setup
        self._owns_client = False
        if client is None and is_address(scheduler):
            client = connect_client(scheduler, connect_timeout)
            self._owns_client = True
        elif scheduler is not None and not is_address(scheduler) and scheduler not in LOCAL_SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}: use threads, processes, sync "
                             "or a dask.distributed address (tcp://HOST:PORT)")
        self.client = client
        self.scheduler = None if client is not None else (scheduler or "threads")
        self.worker_threads, self.worker_processes = self._worker_counts()
        if worker_setup is not None:
            worker_setup()
            if client is not None:
                client.run(worker_setup)

    def _worker_counts(self) -> tuple[int, int]:
        if self.client is not None:
            try:
                workers = self.client.scheduler_info()["workers"].values()
                return (max(1, sum(w.get("nthreads", 1) for w in workers)),
                        max(1, len(workers)))
            except Exception:  # noqa: BLE001 - only used for planning
                return 1, 1
        if self.scheduler == "sync":
            return 1, 1
        threads = self.workers or os.cpu_count() or 1
        return threads, threads if self.scheduler == "processes" else 1

    def worker_memory_limits(self) -> list[int]:
        """Memory limit of each worker of the cluster in bytes (0: that worker has none);
        empty for the local schedulers, or when the scheduler does not say."""
        if self.client is None:
            return []
        try:
            workers = self.client.scheduler_info()["workers"].values()
            return [int(w.get("memory_limit") or 0) for w in workers]
        except Exception:  # noqa: BLE001 - only used for planning
            return []

    def reset_worker_peaks(self) -> None:
        """Reset the resident-memory high-water mark of every worker of the cluster (Linux;
        see `streamsolve.engine.progress.reset_peak_rss`); nothing locally."""
        if self.client is None:
            return
        from .progress import reset_peak_rss

        try:
            self.client.run(reset_peak_rss)
        except Exception:  # noqa: BLE001 - only a measurement
            logger.debug("could not reset the workers' peak memory", exc_info=True)

    def worker_peaks(self) -> list[int]:
        """Each cluster worker's resident-memory high-water mark in bytes since
        `reset_worker_peaks` (0: unknown); empty locally."""
        if self.client is None:
            return []
        from .progress import peak_rss

        try:
            return [int(v) for v in self.client.run(peak_rss).values()]
        except Exception:  # noqa: BLE001 - only a measurement
            return []

    @property
    def is_cluster(self) -> bool:
        """Whether graphs run on a ``dask.distributed`` cluster."""
        return self.client is not None

    def describe(self) -> str:
        """One line naming where graphs run (for the log)."""
        if self.client is not None:
            return (f"dask.distributed cluster ({self.worker_threads} worker threads); "
                    f"dashboard: {self.client.dashboard_link}")
        return f"local {self.scheduler} scheduler ({self.worker_threads} worker(s))"

    def compute(self, obj, *, progress: bool | None = None):
        """The value of a Dask object (a delayed, or a list of them: a list of values)."""
        import dask

        if self.client is not None:
            if isinstance(obj, (list, tuple)):
                return list(self.client.gather(self.client.compute(list(obj))))
            return self.client.compute(obj).result()
        kwargs = {"scheduler": self.scheduler}
        if self.scheduler in ("threads", "processes"):
            kwargs["num_workers"] = self.workers or os.cpu_count() or 1
        if self.scheduler == "processes" and self.worker_setup is not None:
            kwargs["initializer"] = self.worker_setup
        show = self.progress if progress is None else progress
        if show and logging.getLogger("streamsolve").isEnabledFor(logging.INFO):
            from .progress import TaskProgress

            with TaskProgress(sys.stderr):
                (result,) = dask.compute(obj, **kwargs)
        else:
            (result,) = dask.compute(obj, **kwargs)
        return list(result) if isinstance(obj, (list, tuple)) else result

    def scatter(self, data):
        """``data`` held on the cluster (a future standing for it), or itself locally."""
        if self.client is None:
            return data
        return self.client.scatter([data], hash=False)[0]

    def close(self) -> None:
        """Close the client this runtime connected (a client given to it stays open)."""
        if self._owns_client and self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc_info) -> bool:
        self.close()
        return False


def task_client():
    """The client of the Dask cluster this code runs on as a task (``distributed.get_client``
    inside a worker), or None outside a task or without ``distributed``; it connects to
    nothing new (the worker's own client)."""
    try:
        from distributed import get_client, get_worker

        get_worker()  # ValueError outside a task
        return get_client()
    except (ImportError, ValueError):
        return None


def delayed(function):
    """``dask.delayed(function, pure=True)``: a task whose key hashes its arguments."""
    import dask

    return dask.delayed(function, pure=True)


def tree_reduce(tasks: list, combine, split_every: int = 4, **kwargs):
    """Reduce a list of Dask delayed objects with a tree of ``combine`` nodes."""
    import dask

    if not tasks:
        raise ValueError("nothing to reduce")
    level = list(tasks)
    depth = 0
    while len(level) > 1:
        depth += 1
        level = [
            dask.delayed(combine, pure=True)(*level[i:i + split_every], **kwargs,
                                             dask_key_name=f"merge-{depth}-{i // split_every}-{tokenize_key(level[i:i + split_every])}")
            for i in range(0, len(level), split_every)
        ]
    return level[0]


def tokenize_key(objs) -> str:
    """A deterministic hash of Dask objects (their keys) and plain values, for task names."""
    from dask.base import tokenize

    return tokenize(*[getattr(o, "key", o) for o in objs])
