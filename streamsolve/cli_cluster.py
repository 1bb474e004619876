"""The command line's cluster options: ``--scheduler``, ``--connect-timeout``, ``--cluster``
and the batch jobs' sizes, network and TLS (`streamsolve.engine.cluster` and
`streamsolve.engine.jobqueue` read them), and the numeric argument types every command uses.
"""

from __future__ import annotations

import argparse
import os

from .engine.jobqueue import JOBQUEUE_CLASSES
from .engine.runtime import DEFAULT_CONNECT_TIMEOUT


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def add_scheduler_argument(parser: argparse.ArgumentParser):
    """``--scheduler`` for commands that do not count locally (finalize)."""
    parser.add_argument("--scheduler", default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
                        help="run on the dask.distributed scheduler at tls://HOST:PORT or "
                             "tcp://HOST:PORT (also DASK_SCHEDULER_ADDRESS)")


def add_jobqueue_arguments(parser: argparse.ArgumentParser, required: bool = False):
    """``--cluster slurm|pbs`` and the batch-job sizes (dask-jobqueue)."""
    group = parser.add_argument_group("HPC batch jobs (dask-jobqueue, extra 'cluster')")
    group.add_argument("--cluster", choices=sorted(JOBQUEUE_CLASSES), required=required,
                       help="start Dask workers as SLURM or PBS batch jobs")
    group.add_argument("--jobs", type=positive_int, default=1,
                       help="batch jobs to submit (default %(default)s)")
    group.add_argument("--cores", type=positive_int, default=1,
                       help="cores per job (default %(default)s)")
    # --memory (with --cluster also each job's memory) is in the main options (`_add_memory`)
    group.add_argument("--walltime", default="01:00:00",
                       help="wall time per job (default %(default)s)")
    group.add_argument("--queue", help="partition (SLURM) or queue (PBS)")
    group.add_argument("--account", help="account/project to charge")
    group.add_argument("--interface", help="network interface of scheduler and workers "
                                           "(e.g. ib0; default: the scheduler listens on this "
                                           "host's primary address, never 0.0.0.0)")
    group.add_argument("--dashboard-address", metavar="HOST:PORT",
                       help="where the scheduler's dashboard listens (default 127.0.0.1:0: "
                            "this host only, a free port)")
    group.add_argument("--tls-ca-file", metavar="PEM",
                       help="CA certificate of the cluster's TLS (with --tls-cert and --tls-key; "
                            "default: Dask's distributed.comm.tls configuration, else a "
                            "temporary certificate for this run)")
    group.add_argument("--tls-cert", metavar="PEM", help="certificate of scheduler, workers "
                                                         "and client")
    group.add_argument("--tls-key", metavar="PEM", help="its private key (mode 0600)")
    group.add_argument("--tls-dir", metavar="DIR",
                       help="where a temporary certificate is written, in a new user-only "
                            "directory removed at the end; must be shared with the compute "
                            "nodes (default ~/.streamsolve/tls)")
    group.add_argument("--job-extra", action="append", default=[], metavar="DIRECTIVE",
                       help="extra #SBATCH/#PBS directive, e.g. '--gres=gpu:0' (repeatable)")
    group.add_argument("--job-prologue", action="append", default=[], metavar="COMMAND",
                       help="shell command run before the worker starts, e.g. "
                            "'source venv/bin/activate' (repeatable)")


def add_cluster_arguments(parser: argparse.ArgumentParser, scheduler: bool = False):
    """All cluster options of count/finalize/solve (``scheduler``: add ``--scheduler`` too)."""
    if scheduler:
        add_scheduler_argument(parser)
    add_connect_timeout(parser)
    # removed (credentials inside a job are readable by every client of the scheduler):
    # kept only to say so, and to name --storage-secrets
    parser.add_argument("--send-credentials", action="store_true", help=argparse.SUPPRESS)
    add_jobqueue_arguments(parser)


def add_connect_timeout(parser: argparse.ArgumentParser):
    """``--connect-timeout SECONDS``."""
    parser.add_argument("--connect-timeout", type=positive_float, default=DEFAULT_CONNECT_TIMEOUT,
                        metavar="SECONDS",
                        help="give up reaching the scheduler after this long "
                             "(default %(default)s)")
