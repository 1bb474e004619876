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

import functools
import logging
import os
import sys
import time
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


#: Address schemes of a scheduler in another process (``inproc://``: one in this process).
ADDRESS_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


def check_scheduler(scheduler: str | None) -> None:
    """Refuse a scheduler that is neither a local one nor a usable address, before anything
    connects (`check_scheduler_address` for addresses).

    Raises
    ------
    ClusterError
        One line naming the value and what to give instead.
    """
    if not scheduler or scheduler in LOCAL_SCHEDULERS:
        return
    if is_address(scheduler):
        check_scheduler_address(scheduler)
        return
    import re

    if re.fullmatch(r"[\w.\-]+:\d+|\[[0-9a-fA-F:.]+\]:\d+", scheduler):
        raise ClusterError(f"not a Dask scheduler address: {scheduler}: give its scheme, e.g. "
                           f"tls://{scheduler} (or tcp://{scheduler} on a private network)")
    raise ClusterError(f"unknown scheduler {scheduler!r}: use threads, processes, sync or a "
                       "Dask scheduler address (tls://HOST:PORT, tcp://HOST:PORT)")


def check_scheduler_address(address: str) -> None:
    """Refuse a malformed or unusable scheduler address before any connection: an unknown
    scheme, ``inproc://`` where no scheduler of this process listens, a host or port
    missing, a port outside 1..65535, ``ucx://`` without UCX support installed. (A
    ``distributed.Client`` given one of these fails half-built, and closing it waits out a
    timeout.)

    Raises
    ------
    ClusterError
    """
    from distributed.comm.addressing import parse_host_port

    scheme, _, location = address.partition("://")
    scheme = scheme.lower()
    if scheme == "inproc":
        _check_inproc(address, location)
        return
    if scheme not in ADDRESS_SCHEMES:
        raise ClusterError(f"not a Dask scheduler address: {address}: unknown address scheme "
                           f"{scheme!r} (use {', '.join(s + '://' for s in ADDRESS_SCHEMES)})")
    try:
        host, port = parse_host_port(location)
        if not host or not 0 < int(port) < 65536:
            raise ValueError(f"expected {scheme}://HOST:PORT with a port in 1..65535")
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"not a Dask scheduler address: {address}: {exc}") from None
    if scheme == "ucx":
        _check_ucx(address)


def _check_inproc(address: str, location: str) -> None:
    """Refuse an ``inproc://`` address unless a scheduler of this very process listens
    there (``LocalCluster(processes=False)``): such addresses exist in one process only."""
    from distributed.comm.inproc import global_manager

    try:
        listening = global_manager.get_listener_for(location) is not None
    except (ValueError, TypeError, AssertionError):
        listening = False
    if not listening:
        raise ClusterError(f"not a Dask scheduler address: {address}: inproc:// addresses exist "
                           "only inside one Python process, and no scheduler of this one listens "
                           "there; use tls://HOST:PORT or tcp://HOST:PORT")


def _check_ucx(address: str) -> None:
    """Refuse ``ucx://`` when no working UCX backend is installed (distributed's own is a
    placeholder that fails with a TypeError)."""
    from distributed.comm.registry import get_backend

    try:
        get_backend("ucx").get_connector()
    except (ImportError, TypeError, ValueError, RuntimeError) as exc:
        raise ClusterError(f"cannot use the Dask scheduler at {address}: this installation has "
                           "no UCX communication backend (pip install distributed-ucxx), or use "
                           f"tls:// or tcp:// ({type(exc).__name__})") from None


def connect_client(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT, security=None):
    """A ``distributed.Client`` on ``address`` (not made Dask's default client).

    Parameters
    ----------
    address : str
        ``tls://HOST:PORT``, ``tcp://HOST:PORT``, ...
    timeout : float
        Seconds to wait for the scheduler.
    security : distributed.security.Security, optional
        TLS settings (default: inside a worker of that same scheduler, the worker's own
        certificate; elsewhere Dask's configuration, ``distributed.comm.tls``).

    Raises
    ------
    ClusterError
        Naming the address, if no scheduler answers within ``timeout`` seconds, the address
        is malformed, or a ``tls://`` address has no TLS settings.
    """
    from distributed import Client
    from distributed.security import Security

    check_scheduler_address(address)
    security = security or _worker_client_security(address)
    try:
        context = (security or Security()).get_connection_args("client").get("ssl_context")
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ClusterError(f"cannot use the TLS settings for the Dask scheduler at {address}: "
                           f"{exc} (check the CA file, client certificate and key of Dask's "
                           "distributed.comm.tls configuration)") from None
    if address.startswith("tls://") and context is None:
        raise ClusterError(
            f"cannot connect to the Dask scheduler at {address} without TLS settings: set "
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ..._TLS__CLIENT__CERT and "
            "..._TLS__CLIENT__KEY (or Dask's distributed.comm.tls configuration)")
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False, security=security)
    except (OSError, TimeoutError) as exc:  # the client closed itself
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within "
                           f"{timeout:g}s: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - anything else leaves it half-built
        _close_half_built_client(exc)
        raise ClusterError(f"cannot connect to the Dask scheduler at {address}: "
                           f"{type(exc).__name__}: {exc}") from None


def _worker_client_security(address: str):
    """Inside a worker of the scheduler at ``address``: TLS settings for a client that
    presents the worker's own certificate (a batch job's workers get theirs on the command
    line, not in Dask's configuration); None elsewhere."""
    try:
        from distributed import get_worker
        from distributed.security import Security

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    own = worker.security
    if worker.scheduler.address != address or not own.tls_worker_cert:
        return None
    return Security(require_encryption=own.require_encryption, tls_ca_file=own.tls_ca_file,
                    tls_client_cert=own.tls_worker_cert, tls_client_key=own.tls_worker_key,
                    tls_ciphers=own.tls_ciphers)


def _close_half_built_client(exc: BaseException) -> None:
    """Close the ``distributed.Client`` whose constructor raised ``exc`` (found in the
    traceback): left to the garbage collector, its ``__del__`` waits out a timeout at exit
    and prints a traceback after the one-line error."""
    import contextlib

    from distributed import Client

    tb = exc.__traceback__
    while tb is not None:
        client = tb.tb_frame.f_locals.get("self")
        if isinstance(client, Client):
            with contextlib.suppress(Exception):
                client.close(timeout=2)
            return
        tb = tb.tb_next


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
        self._worker_peaks_key: str | None = None  # the workers' samplers, when running
        if client is None:
            check_scheduler(scheduler)
        if client is None and is_address(scheduler):
            client = connect_client(scheduler, connect_timeout)
            self._owns_client = True
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
        """Start measuring each cluster worker's peak resident memory afresh: a sampler in
        every worker (`streamsolve.engine.progress.start_process_monitor`; the kernel's
        high-water mark is read, never reset); nothing locally."""
        if self.client is None:
            return
        from .progress import start_process_monitor

        self.stop_worker_peaks()
        key = f"runtime-{id(self)}-{time.monotonic_ns()}"
        try:
            self.client.run(start_process_monitor, key)
            self._worker_peaks_key = key
        except Exception:  # noqa: BLE001 - only a measurement
            logger.debug("could not start the workers' memory samplers", exc_info=True)

    def worker_peaks(self) -> list[int]:
        """Each cluster worker's peak resident memory in bytes since `reset_worker_peaks`
        (0: unknown), which stops measuring; empty locally."""
        return self.stop_worker_peaks()

    def stop_worker_peaks(self) -> list[int]:
        """Stop the workers' samplers of `reset_worker_peaks`; their peaks (empty: none ran)."""
        key, self._worker_peaks_key = self._worker_peaks_key, None
        if self.client is None or key is None:
            return []
        from .progress import stop_process_monitor

        try:
            return [int(v) for v in self.client.run(stop_process_monitor, key).values()]
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
        if self.scheduler == "processes":
            kwargs["initializer"] = functools.partial(
                start_worker_process, os.getpid(), self.worker_setup, _fsspec_configuration())
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
        if self.client is not None:
            self.stop_worker_peaks()
        if self._owns_client and self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc_info) -> bool:
        self.close()
        return False


def start_worker_process(parent_pid: int, setup: Callable[[], object] | None = None,
                         fsspec_configuration: dict | None = None) -> None:
    """Set up a process of the local ``processes`` scheduler before it runs tasks.

    It dies with ``parent_pid`` (`die_with_parent`), sees the parent's fsspec configuration
    (which ``--storage-secrets`` extends at run time, after the spawned process imported
    fsspec), and runs ``setup`` (`Runtime`'s ``worker_setup``).
    """
    die_with_parent(parent_pid)
    if fsspec_configuration:
        import fsspec.config

        fsspec.config.conf.clear()
        fsspec.config.conf.update(fsspec_configuration)
    if setup is not None:
        setup()


def _fsspec_configuration() -> dict | None:
    """A copy of this process's fsspec configuration, if fsspec is loaded."""
    config = sys.modules.get("fsspec.config")
    if config is None or not config.conf:
        return None
    import copy

    return copy.deepcopy(config.conf)


#: Seconds between two looks at the parent (where the kernel cannot watch it for us).
PARENT_POLL_SECONDS = 1.0


def die_with_parent(parent_pid: int) -> None:
    """End this process as soon as process ``parent_pid`` (its parent) dies, even by SIGKILL.

    On Linux the kernel sends SIGKILL (``prctl(PR_SET_PDEATHSIG)``; it fires when the
    *thread* that started this process ends: the ``processes`` scheduler starts its workers
    from the thread that computes, which waits for them). Elsewhere a daemon thread looks at
    the parent every `PARENT_POLL_SECONDS`. Multiprocessing's resource tracker then sees
    its last user gone and exits as well.
    """
    import signal

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            pr_set_pdeathsig = 1
            if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL,
                                                       0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # it died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            logger.debug("prctl(PR_SET_PDEATHSIG) unavailable: polling the parent instead")
    import threading

    def watch():
        import time

        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="streamsolve-parent-watch").start()


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
