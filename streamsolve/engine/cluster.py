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
    ``dask-jobqueue`` (extra ``cluster``) starts a scheduler in this process and submits
    N batch jobs of Dask workers; then the command runs as above on them.
    ``streamsolve cluster-script`` prints the job script it would submit.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import time

from .runtime import DEFAULT_CONNECT_TIMEOUT, ClusterError, connect_client, is_address

logger = logging.getLogger(__name__)

#: Commands that can run as a job on a Dask cluster.
REMOTE_COMMANDS = ("count", "finalize", "solve")
#: --cluster kinds and their dask-jobqueue classes.
JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
DEFAULT_JOB_MEMORY = "4GiB"


def jobqueue_cluster(args):
    """A dask-jobqueue cluster (not yet scaled) from ``--cluster`` options."""
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ClusterError("--cluster needs dask-jobqueue: pip install 'streamsolve[cluster]'") \
            from exc
    cls = getattr(dask_jobqueue, JOBQUEUE_CLASSES[args.cluster])
    kwargs = dict(cores=args.cores, memory=args.memory or DEFAULT_JOB_MEMORY, walltime=args.walltime,
                  processes=1, job_name="streamsolve",
                  job_extra_directives=list(args.job_extra),
                  job_script_prologue=["export TOKENIZERS_PARALLELISM=true",
                                       *args.job_prologue])
    for name in ("queue", "account", "interface"):
        if getattr(args, name, None):
            kwargs[name] = getattr(args, name)
    if not kwargs.get("interface"):
        kwargs["scheduler_options"] = {"dashboard_address": ":0"}
    else:
        kwargs["scheduler_options"] = {"dashboard_address": ":0", "interface": args.interface}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, OSError) as exc:
        raise ClusterError(f"cannot set up a {args.cluster} cluster: {exc}") from exc


def job_script(args) -> str:
    """The batch script ``--cluster`` would submit for each worker job."""
    cluster = jobqueue_cluster(args)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


# -- credentials ----------------------------------------------------------------------------
#: Storage option names that are credentials, as a whole (``key`` of s3fs) or by a part.
CREDENTIAL_OPTION_NAMES = frozenset({"key", "access_key", "access_key_id", "aws_access_key_id"})
CREDENTIAL_OPTION_WORDS = ("secret", "password", "passwd", "token", "credential", "private",
                           "account_key", "sas", "connection_string", "api_key", "apikey",
                           "auth", "signature")
#: Values of a credential-named option that name a mechanism, not a secret (gcsfs ``token``).
CREDENTIAL_MODES = frozenset({"anon", "google_default", "cloud", "browser", "cache"})


def _is_credential(name: str, value) -> bool:
    if value is None or isinstance(value, bool) or (isinstance(value, str)
                                                    and value in CREDENTIAL_MODES):
        return False
    name = str(name).lower()
    return name in CREDENTIAL_OPTION_NAMES or any(w in name for w in CREDENTIAL_OPTION_WORDS)


def credential_option_names(options, prefix: str = "") -> list[str]:
    """Names (dotted, for nested options) of the storage options that hold credentials."""
    found = []
    for name, value in (options or {}).items():
        if isinstance(value, dict):
            found += credential_option_names(value, f"{prefix}{name}.")
        elif _is_credential(name, value):
            found.append(f"{prefix}{name}")
    return found


def refuse_credentials_in_job(args, scheduler: str):
    """Stop before a job would carry credentials in clear to ``scheduler`` (a description).

    Everything a job is made of (its task, and every task it submits) is kept by the
    scheduler as it was sent, where any client of that scheduler can read it. So unless
    ``--send-credentials`` is given, credentials in ``--storage-options`` or in a URL
    (``scheme://user:password@host``) are refused; the workers must have their own
    (environment, instance role, credentials file).

    Raises
    ------
    ClusterError
        Naming the options or URLs and the two ways out.
    """
    import json
    from urllib.parse import urlsplit

    try:
        options = json.loads(getattr(args, "storage_options", None) or "null")
    except ValueError:
        options = None  # reported by cli.run
    found = credential_option_names(options) if isinstance(options, dict) else []
    found += [f"the password in {_redact(url)}" for url in _command_urls(args)
              if _url_password(urlsplit, url)]
    if not found:
        return
    if getattr(args, "send_credentials", False):
        logger.warning("sending credentials (%s) inside the job: %s keeps them in clear while "
                       "the job runs", ", ".join(found), scheduler)
        return
    raise ClusterError(
        f"credentials in the command ({', '.join(found)}) would be sent in clear to "
        f"{scheduler}, where any of its clients can read them: give the workers "
        "their own credentials (environment, e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
        "an instance role or a credentials file on each worker) and leave them out of the "
        "command, or pass --send-credentials to send them anyway")


def _command_urls(args) -> list[str]:
    urls = [*store_urls(args)]
    for name in ("corpus", "text", "calibrate"):
        urls += [str(u) for u in getattr(args, name, None) or []]
    return [u for u in urls if "://" in u]


def _url_password(urlsplit, url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def _redact(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[-1]}"


# -- running a command as a job on the cluster ----------------------------------------------
def execute(args, run):
    """Run a parsed command (``cli.run``) where it asks: locally or as a job on a cluster."""
    if getattr(args, "verbose", 0) < 2:
        for name in ("distributed.scheduler", "distributed.core", "distributed.http.proxy",
                     "distributed.deploy", "dask_jobqueue"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.command == "cluster-script":
        return {"cluster": args.cluster, "job_script": job_script(args)}
    if wants_cluster(args):
        refuse_credentials_in_job(args, f"the Dask scheduler of the --cluster {args.cluster} jobs"
                                  if getattr(args, "cluster", None)
                                  else f"the Dask scheduler at {args.scheduler}")
        return run_on_cluster(args, functools.partial(run_checked, run=run))
    return run_checked(args, run)


def run_checked(args, run):
    """``run(args)`` after checking that the object-store URLs it names can be used."""
    check_locations(args)
    return run(args)


def check_locations(args) -> None:
    """Check that the store and corpus URLs a parsed command names can be used (one line
    naming the URL and the error otherwise), before any work."""
    import json

    try:
        options = json.loads(getattr(args, "storage_options", None) or "null")
    except ValueError:
        options = None  # cli.run reports malformed options itself
    if not isinstance(options, dict):
        options = None
    for url in [*store_urls(args), *corpus_urls(args)]:
        check_store_location(url, options)


def wants_cluster(args) -> bool:
    """Whether a parsed command line asks to run on a Dask cluster."""
    return args.command in REMOTE_COMMANDS and (
        bool(getattr(args, "cluster", None)) or is_address(getattr(args, "scheduler", None)))


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
    args.cluster = None
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


def run_on_cluster(args, run):
    """Run a parsed command (``cli.run``) as one job on the cluster it names; its result."""
    cluster = None
    if getattr(args, "cluster", None):
        cluster = jobqueue_cluster(args)
        logger.info("submitting %d %s job(s) of Dask workers (%d cores, %s, walltime %s); "
                    "scheduler at %s", args.jobs, args.cluster, args.cores, args.memory or DEFAULT_JOB_MEMORY,
                    args.walltime, cluster.scheduler_address)
        cluster.scale(jobs=args.jobs)
        address = cluster.scheduler_address
    else:
        address = args.scheduler
    try:
        client = connect_client(address, getattr(args, "connect_timeout", DEFAULT_CONNECT_TIMEOUT))
        try:
            return submit_and_wait(client, run, args)
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


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
    """
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
