"""Running streamsolve jobs on a Dask cluster: an existing scheduler, or HPC batch jobs.

Three ways to run ``count``, ``finalize`` and ``solve``:

local (default)
    The threaded (or ``processes``) Dask scheduler inside the ``streamsolve`` process.
``--scheduler tcp://HOST:PORT`` (or ``DASK_SCHEDULER_ADDRESS``)
    The whole command runs *as a job on the cluster*: the client submits one task (the
    command's arguments), that task runs on a worker, fans the corpus out as one task per
    shard on the same cluster, merges the counts, and writes the store; finalize runs
    there too, and calibration's Newton passes are split over the workers (each rebuilds
    the weights from the store: `streamsolve.engine.cluster_calibration`). What passes through the client process: the command line
    (corpus and store URLs, options), forwarded log records, and the command's JSON summary
    (counts metadata: token totals, distinct pairs, perplexities, calibration scalars).
    Never corpus text, token ids, counts or weights. Shards and the store must therefore
    be reachable *from the workers* (shared filesystem or object store).
``--cluster slurm|pbs --jobs N --cores C --memory M --walltime T``
    ``dask-jobqueue`` (extra ``cluster``) starts a TLS-only scheduler in this process and
    submits N batch jobs of Dask workers (`streamsolve.engine.jobqueue`); then the command
    runs as above on them. ``streamsolve cluster-script`` prints the job script it would
    submit.

The scheduler keeps every task as it was sent, readable by all its clients: credentials
never go into the job (`refuse_credentials_in_job`, `streamsolve.engine.credentials`); the
workers read them from their environment or a user-only ``--storage-secrets`` file
(`streamsolve.engine.storage_secrets`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import time

from .credentials import credential_findings
from .jobqueue import DEFAULT_JOB_MEMORY, job_script, started_cluster
from .runtime import (DEFAULT_CONNECT_TIMEOUT, LOCAL_SCHEDULERS, ClusterError, check_scheduler,
                      connect_client)

logger = logging.getLogger(__name__)

#: Commands that can run as a job on a Dask cluster.
REMOTE_COMMANDS = ("count", "finalize", "solve")
#: Options of the submitting process only: never shipped inside the job.
LOCAL_ONLY_OPTIONS = {"cluster": None, "job_extra": [], "job_prologue": [], "tls_ca_file": None,
                      "tls_cert": None, "tls_key": None, "tls_dir": None,
                      "dashboard_address": None, "storage_secrets": None}


# -- credentials ----------------------------------------------------------------------------
def refuse_credentials_in_job(args, scheduler: str):
    """Stop before a job would carry credentials to ``scheduler`` (a description).

    Everything a job is made of (its task, and every task it submits) is kept by the
    scheduler as it was sent, where any client of that scheduler can read it. So anything
    that looks like a credential (`streamsolve.engine.credentials`) in ``--storage-options``
    or in a URL of the command is refused; the workers must have their own (environment,
    instance role, credentials file) or read them from ``--storage-secrets FILE``.

    Raises
    ------
    ClusterError
        Naming where the credentials are (never their values) and the ways out.
    """
    if getattr(args, "send_credentials", False):
        raise ClusterError("--send-credentials is gone (it left credentials readable by every "
                           "client of the scheduler): put them in a JSON file only you can read "
                           "(chmod 600) on a filesystem the workers see and pass "
                           "--storage-secrets FILE")
    found = credential_findings(_storage_options(args), command_urls(args))
    if found:
        raise ClusterError(
            f"credentials would be sent inside the job to {scheduler}, where any of its "
            f"clients can read them: {', '.join(found)}; put them in a JSON file of storage "
            "options only you can read (chmod 600) on a filesystem the workers see and pass "
            "--storage-secrets FILE, or give the workers their own (environment, e.g. "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, an instance role, a credentials file)")


def _storage_options(args) -> dict | None:
    import json

    try:
        options = json.loads(getattr(args, "storage_options", None) or "null")
    except ValueError:
        return None  # reported by cli.run
    return options if isinstance(options, dict) else None


#: Positional arguments of the commands, as --help names them.
_POSITIONAL_LABELS = {"corpus": "CORPUS", "text": "TEXT"}


def command_urls(args) -> list[tuple[str, str]]:
    """``(label, value)`` of every URL-like argument of a parsed command (CORPUS #2,
    --store, --tokenizer, ...), the scheduler and local-only options aside."""
    found = []
    for name, value in sorted(vars(args).items()):
        if name in LOCAL_ONLY_OPTIONS or name in ("scheduler", "storage_options", "command"):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        strings = [str(v) for v in values if isinstance(v, (str, os.PathLike))]
        label = _POSITIONAL_LABELS.get(name) or (
            "STORE" if name == "store" and args.command not in ("count", "solve")
            else f"--{name.replace('_', '-')}")
        for i, text in enumerate(strings, 1):
            found.append((f"{label} #{i}" if len(strings) > 1 else label, text))
    return found


# -- running a command as a job on the cluster ----------------------------------------------
def execute(args, run):
    """Run a parsed command (``cli.run``) where it asks: locally or as a job on a cluster."""
    if getattr(args, "verbose", 0) < 2:
        for name in ("distributed.scheduler", "distributed.core", "distributed.http.proxy",
                     "distributed.deploy", "dask_jobqueue"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.command == "cluster-script":
        return job_script(args)
    if wants_cluster(args):
        if not getattr(args, "cluster", None):
            check_scheduler(args.scheduler)
        refuse_credentials_in_job(args, f"the Dask scheduler of the --cluster {args.cluster} jobs"
                                  if getattr(args, "cluster", None)
                                  else f"the Dask scheduler at {args.scheduler}")
        secrets_file(args)  # checked here too, when this host sees it
        return run_on_cluster(args, functools.partial(run_checked, run=run))
    return run_checked(args, run)


def run_checked(args, run):
    """``run(args)`` with the ``--storage-secrets`` file applied, after checking that the
    object-store URLs it names can be used."""
    path = getattr(args, "storage_secrets", None)
    previous = None
    if path:
        from .storage_secrets import apply_secrets, restore

        secrets = secrets_file(args, required=True)
        previous = apply_secrets(secrets, _url_protocols(args))
    try:
        check_locations(args)
        return run(args)
    finally:
        if previous is not None:
            restore(previous)


def secrets_file(args, required: bool = False) -> dict | None:
    """The ``--storage-secrets`` options, checked (user-only, a JSON object, no option also
    in ``--storage-options``); None without the option, or when this host cannot see the
    file and ``required`` is false (a cluster's workers may see it where the client cannot).
    """
    path = getattr(args, "storage_secrets", None)
    if not path or (not required and not os.path.exists(path)):
        return None
    from .storage_secrets import check_disjoint, read_secrets

    secrets = read_secrets(path)
    check_disjoint(path, secrets, _storage_options(args))
    if not _url_protocols(args):
        logger.warning("--storage-secrets %s: the command names no remote URL to use it for",
                       path)
    return secrets


def _url_protocols(args) -> list[str]:
    from .storage_secrets import url_protocols

    return url_protocols(text for _, text in command_urls(args))


def check_locations(args) -> None:
    """Check that the store and corpus URLs a parsed command names can be used (one line
    naming the URL and the error otherwise), before any work."""
    for url in [*store_urls(args), *corpus_urls(args)]:
        check_store_location(url, _storage_options(args))


def wants_cluster(args) -> bool:
    """Whether a parsed command line asks to run on a Dask cluster (or names a scheduler
    that is not a local one: `execute` then says what is wrong with it)."""
    scheduler = getattr(args, "scheduler", None)
    return args.command in REMOTE_COMMANDS and (
        bool(getattr(args, "cluster", None))
        or bool(scheduler and scheduler not in LOCAL_SCHEDULERS))


class JobCancelled(BaseException):
    """Raised in a job's thread once its client cancelled it (a Ctrl-C, reaching the job).

    A `BaseException`, like `KeyboardInterrupt`: no ``except Exception`` swallows it, and the
    job unwinds as a local run does on Ctrl-C (locks released, nothing committed, spill
    files removed).
    """


class StopWhenCancelled:
    """Within: stop the job running in this thread once the scheduler releases its task.

    The scheduler releases a job's task when its client cancels it (Ctrl-C, SIGTERM) or
    goes away. A worker cannot stop a running task, so a watcher thread raises `JobCancelled`
    in the job's thread, and only while that thread waits for results of the cluster
    (``Future.result``, ``Client.gather``): at such a point the job holds no half-written
    state, and unwinding closes its client, which releases every task it submitted. A job
    busy in its own thread (training the tokenizer, committing) stops at its next wait.
    """

    POLL_SECONDS = 0.5

    def __init__(self, worker, key):
        import threading

        self.worker, self.key = worker, key
        self.thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self._armed = self._fired = False
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True,
                                         name=f"streamsolve-cancel-{key}")

    def __enter__(self):
        self._armed = True
        self._watcher.start()
        return self

    def __exit__(self, *exc_info):
        with self._lock:
            self._armed = False
            if self._fired:  # raised but maybe not yet delivered: never let it escape later
                _raise_in_thread(self.thread_id, None)
        self._stop.set()
        return False

    def cancelled(self) -> bool:
        """Whether the scheduler no longer wants this job (its task released or forgotten)."""
        task = self.worker.state.tasks.get(self.key)
        return task is None or task.state in ("cancelled", "released", "forgotten")

    def _watch(self):
        told = False
        while not self._stop.wait(self.POLL_SECONDS):
            if not self.cancelled():
                continue
            if not told:
                logger.warning("job %s was cancelled by its client: stopping it", self.key)
                told = True
            with self._lock:
                if not self._armed:
                    return
                condition = _condition_awaiting_cluster_results(self.thread_id)
                if condition is not None:
                    _raise_in_thread(self.thread_id, JobCancelled)
                    self._fired = True
                    with condition:  # wake the wait now: it raises at once
                        condition.notify_all()
                    return


def _condition_awaiting_cluster_results(thread_id: int):
    """The condition a thread waits on inside ``Future.result``/``Client.gather`` (a safe
    stop point), or None when it is doing anything else."""
    import sys
    import threading

    from distributed import Client, Future
    from distributed.utils import sync

    top = frame = sys._current_frames().get(thread_id)
    if frame is None or frame.f_code is not threading.Condition.wait.__code__:
        return None
    codes = set()
    while frame is not None:
        codes.add(frame.f_code)
        frame = frame.f_back
    if sync.__code__ in codes and codes & {Future.result.__code__, Client.gather.__code__}:
        return top.f_locals.get("self")
    return None


def _raise_in_thread(thread_id: int, exception_type):
    """Raise ``exception_type`` in thread ``thread_id`` at its next bytecode (None: clear)."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception_type) if exception_type else None)


def _remote_job(run, args):
    """The task that runs a whole command on a worker (the client only waits for it)."""
    from distributed import get_worker, rejoin, secede

    worker = get_worker()
    args = copy.copy(args)
    args.scheduler = worker.scheduler.address  # shard tasks go to this same cluster
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.getLogger("streamsolve").setLevel(level)
    logger.info("running `streamsolve %s` on worker %s", args.command, worker.address)
    key = worker.get_current_task()
    secede()  # free this worker's thread for the shard tasks while the job waits on them
    try:
        with StopWhenCancelled(worker, key):
            return run(args)
    except JobCancelled:
        logger.warning("`streamsolve %s` (job %s) stopped: cancelled by its client",
                       args.command, key)
        raise ClusterError(f"job {key} was cancelled by its client") from None
    finally:
        rejoin()


def shipped_args(args):
    """The parsed command as the job's task carries it: without the options that only
    matter in this process (batch-job prologue and directives, certificate paths, the
    secrets file, which a worker plugin applies instead)."""
    shipped = copy.copy(args)
    for name, empty in LOCAL_ONLY_OPTIONS.items():
        if hasattr(shipped, name):
            setattr(shipped, name, copy.copy(empty))
    return shipped


def run_on_cluster(args, run):
    """Run a parsed command (``cli.run``) as one job on the cluster it names; its result."""
    with contextlib.ExitStack() as stack:
        security = None
        if getattr(args, "cluster", None):
            cluster, tls = stack.enter_context(started_cluster(args))
            logger.info("submitting %d %s job(s) of Dask workers (%d cores, %s, walltime %s)",
                        args.jobs, args.cluster, args.cores, args.memory or DEFAULT_JOB_MEMORY,
                        args.walltime)
            cluster.scale(jobs=args.jobs)
            address, security = cluster.scheduler_address, tls.security
        else:
            address = args.scheduler
        client = connect_client(address, getattr(args, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
                                security=security)
        stack.callback(client.close)
        if getattr(args, "storage_secrets", None):
            stack.enter_context(_secrets_on_workers(client, args))
        return submit_and_wait(client, run, shipped_args(args))


@contextlib.contextmanager
def _secrets_on_workers(client, args):
    """Within: every worker of ``client``'s cluster (also later ones) applies the
    ``--storage-secrets`` file, which it reads itself (the plugin carries its path)."""
    from .storage_secrets import StorageSecrets

    plugin = StorageSecrets(os.path.abspath(args.storage_secrets), _url_protocols(args))
    name = f"{StorageSecrets.name}-{os.getpid()}-{time.time_ns()}"
    client.register_plugin(plugin, name=name)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the workers go with the cluster anyway
            client.unregister_worker_plugin(name)


def submit_and_wait(client, run, args):
    """Submit ``run(args)`` as one task and wait for its result, forwarding its logs."""
    try:
        client.forward_logging("streamsolve", level=logging.INFO)
    except Exception:  # pragma: no cover - older distributed
        logger.debug("cannot forward worker logs", exc_info=True)
    started = time.perf_counter()
    if not client.scheduler_info().get("workers"):
        logger.info("waiting for Dask workers at %s", client.scheduler.address)
    future = client.submit(_remote_job, run, args, pure=False,
                           key=f"streamsolve-{args.command}-{os.getpid()}-{time.time_ns()}")
    try:
        result = future.result()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM: the job must stop too
        _cancel_job(client, future)
        raise
    except Exception as exc:
        # the job's own errors (CorpusError, StoreError, ...) come back as they were raised;
        # the cluster's (a worker killed, the scheduler gone) get the address added
        from concurrent.futures import CancelledError

        from distributed.scheduler import KilledWorker

        if isinstance(exc, (KilledWorker, CancelledError)):
            raise ClusterError(f"the job on the Dask cluster at {client.scheduler.address} "
                               f"was lost ({type(exc).__name__}: {exc}); see the worker logs "
                               "(out of memory?)") from exc
        raise
    logger.info("cluster job done in %.1fs", time.perf_counter() - started)
    return result


def _cancel_job(client, future):
    """Cancel a submitted job: the scheduler releases it, and the job stops itself."""
    logger.debug("cancelling job %s on %s", future.key, client.scheduler.address)
    try:
        client.cancel([future], force=True)
    except Exception:  # noqa: BLE001 - closing the client releases it as well
        logger.debug("cannot cancel job %s", future.key, exc_info=True)


def remote_call(client, func, *args, **kwargs):
    """Run ``func(*args, **kwargs)`` (e.g. ``streamsolve.api.solve``) as a job on a worker.

    For the Python API: ``remote_call(Client("tcp://..."), ss.solve, ["s3://b/shards/"],
    "s3://b/model.zarr", scheduler="tcp://...")`` reads the shards and writes the store on
    the cluster, and returns only the summary.

    Raises
    ------
    ClusterError
        When ``storage_options`` or a URL argument holds a credential (the scheduler keeps
        the call as sent): register a `streamsolve.engine.storage_secrets.StorageSecrets`
        plugin, or give the workers their own credentials.
    """
    urls = [(f"argument {i}", a) for i, a in enumerate(args, 1) if isinstance(a, str)]
    urls += [(name, v) for name, v in kwargs.items() if isinstance(v, str)]
    found = credential_findings(kwargs.get("storage_options"), urls)
    if found:
        raise ClusterError(f"credentials would be sent inside the job to the Dask scheduler at "
                           f"{client.scheduler.address}: {', '.join(found)}; give the workers "
                           "their own (environment, or a StorageSecrets worker plugin)")
    return client.submit(_call_seceded, func, args, kwargs, pure=False).result()


def _call_seceded(func, args, kwargs):
    from distributed import rejoin, secede

    secede()
    try:
        return func(*args, **kwargs)
    finally:
        rejoin()


# -- object stores ----------------------------------------------------------------------------
def check_store_location(url: str, storage_options: dict | None = None):
    """Fail early, naming the URL, when a store URL's bucket (or parent) cannot be used.

    Checks what can be checked cheaply before counting: the filesystem can be created with
    the storage options, and for object stores the bucket exists and is accessible.

    Raises
    ------
    ClusterError
        With the URL and the underlying fsspec/botocore error message.
    """
    if "://" not in str(url):
        return
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError, TypeError) as exc:
        raise ClusterError(f"cannot open {url}: {exc}") from exc
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"):
        return
    bucket = root.split("/", 1)[0]
    try:
        exists = fs.exists(bucket)
    except Exception as exc:  # credentials, endpoint, permissions: surface with the URL
        raise ClusterError(f"cannot access {url}: {describe_storage_error(exc)}") from exc
    if not exists:
        try:  # exists() hides permission errors: ask once more, loudly
            fs.ls(bucket)
        except FileNotFoundError:
            raise ClusterError(f"bucket {bucket!r} of {url} does not exist (create it first)") \
                from None
        except Exception as exc:
            raise ClusterError(f"cannot access {url}: {describe_storage_error(exc)}") from exc


def describe_storage_error(exc: BaseException) -> str:
    """A one-line description of an fsspec/botocore error (error code and message)."""
    text = str(exc) or type(exc).__name__
    for link in (exc, exc.__cause__, exc.__context__):
        response = getattr(link, "response", None)
        if isinstance(response, dict) and "Error" in response:
            error = response["Error"]
            text = f"{error.get('Code', '')}: {error.get('Message', text)}".strip(": ")
            break
    return f"{type(exc).__name__}: {text}"


def store_urls(args) -> list[str]:
    """The store URL a parsed command line writes or reads."""
    store = getattr(args, "store", None)
    return [store] if store else []


def corpus_urls(args) -> list[str]:
    """The distinct buckets' first URLs among a command's corpus / text / held-out URLs."""
    urls, seen = [], set()
    for name in ("corpus", "text", "calibrate"):
        for url in getattr(args, name, None) or []:
            if "://" in str(url) and not str(url).startswith("builtin://"):
                bucket = str(url).split("://", 1)[1].split("/", 1)[0]
                if bucket not in seen:
                    seen.add(bucket)
                    urls.append(url)
    return urls
