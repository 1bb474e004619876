"""HPC batch-job clusters (``--cluster slurm|pbs``, dask-jobqueue) only their own jobs can join.

The Dask scheduler that ``--cluster`` starts inside the ``streamsolve`` process:

- listens on one interface: ``--interface`` (also the workers'), else the host's primary
  address (the source address of its default route; `primary_address`), never 0.0.0.0;
- speaks TLS only, with mutual authentication: a client or worker without a certificate
  signed by the cluster's CA is refused. The certificate is the user's (``--tls-ca-file``,
  ``--tls-cert``, ``--tls-key``, or Dask's ``distributed.comm.tls`` configuration), else a
  temporary one (``distributed.security.Security.temporary``) written for this run to a new
  directory only the user can enter (mode 0700, files 0600) under ``--tls-dir`` (default
  ``~/.streamsolve/tls``, which must be on a filesystem the compute nodes see, as a home
  directory usually is) and removed when the run ends. The job script carries only the
  certificate *paths* (``--tls-ca-file/--tls-cert/--tls-key`` of ``dask worker``);
- serves its dashboard on 127.0.0.1 only (``--dashboard-address`` to change).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass

from .runtime import ClusterError

logger = logging.getLogger(__name__)

#: --cluster kinds and their dask-jobqueue classes.
JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
DEFAULT_JOB_MEMORY = "4GiB"
DEFAULT_DASHBOARD_ADDRESS = "127.0.0.1:0"
#: Where temporary certificates go (one 0700 directory per run): shared with compute nodes.
DEFAULT_TLS_DIR = "~/.streamsolve/tls"


@dataclass
class ClusterTLS:
    """The TLS settings of a batch-job cluster, and the temporary directory holding them."""

    security: object  # distributed.security.Security (certificate files, never in memory)
    description: str
    directory: str | None = None

    def close(self) -> None:
        """Remove the temporary certificates (nothing for the user's own)."""
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def cluster_tls(args) -> ClusterTLS:
    """The cluster's TLS: ``--tls-*`` files, else Dask's TLS configuration, else a temporary
    certificate in a new user-only directory under ``--tls-dir``."""
    from distributed.security import Security

    given = [getattr(args, name, None) for name in ("tls_ca_file", "tls_cert", "tls_key")]
    if any(given):
        if not all(given):
            raise ClusterError("--tls-ca-file, --tls-cert and --tls-key go together")
        ca, cert, key = given
        for option, path in (("--tls-ca-file", ca), ("--tls-cert", cert)):
            if not os.path.isfile(path):
                raise ClusterError(f"{option} {path}: no such file")
        check_private_file(key, "--tls-key")
        return ClusterTLS(_security_for_every_role(ca, cert, key), f"TLS with {cert}")
    configured = Security()
    roles = ("scheduler", "worker", "client")
    if configured.tls_ca_file and all(getattr(configured, f"tls_{r}_cert") for r in roles):
        for role in roles:
            key = getattr(configured, f"tls_{role}_key")
            if key and "\n" not in key:
                check_private_file(key, f"Dask's distributed.comm.tls.{role}.key")
        configured.require_encryption = True
        return ClusterTLS(configured, "TLS with Dask's distributed.comm.tls certificates")
    return temporary_tls(getattr(args, "tls_dir", None) or DEFAULT_TLS_DIR)


def temporary_tls(parent: str) -> ClusterTLS:
    """A new self-signed certificate and key for this run, in a new directory (mode 0700,
    files 0600) under ``parent``."""
    from distributed.security import Security

    try:
        temporary = Security.temporary()
    except ImportError:
        raise ClusterError("--cluster needs a TLS certificate: pip install 'streamsolve[cluster]' "
                           "(cryptography) for a temporary one, or give --tls-ca-file, "
                           "--tls-cert and --tls-key") from None
    parent = os.path.expanduser(parent)
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
        directory = tempfile.mkdtemp(prefix="run-", dir=parent)  # mode 0700
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        for path, text in ((cert, temporary.tls_ca_file), (key, temporary.tls_scheduler_key)):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(handle, "w") as out:
                out.write(text)
    except OSError as exc:
        raise ClusterError(f"cannot write the cluster's temporary TLS certificate under "
                           f"--tls-dir {parent}: {exc.strerror or exc}") from None
    return ClusterTLS(_security_for_every_role(cert, cert, key),
                      f"TLS with a temporary certificate in {directory}", directory)


def _security_for_every_role(ca: str, cert: str, key: str):
    from distributed.security import Security

    return Security(require_encryption=True, tls_ca_file=ca,
                    **{f"tls_{role}_{part}": path for role in ("scheduler", "worker", "client")
                       for part, path in (("cert", cert), ("key", key))})


def check_private_file(path: str, option: str) -> None:
    """Refuse a missing key file, or one that users other than its owner can read."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise ClusterError(f"{option} {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise ClusterError(f"{option} {path} can be read by other users (mode {mode:04o}): "
                           f"chmod 600 {path}")


def primary_address() -> str:
    """This host's address on its primary network: the source address of its default route
    (no packet is sent), else the first IPv4 address of an interface that is up and not
    loopback, else 127.0.0.1 (a host with no network)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.255", 9))  # TEST-NET-1: routed by the default route, never sent
        address = s.getsockname()[0]
        if address and not address.startswith(("127.", "0.")):
            return address
    import psutil

    stats = psutil.net_if_stats()
    for name, addresses in psutil.net_if_addrs().items():
        if name in stats and stats[name].isup:
            for entry in addresses:
                if entry.family == socket.AF_INET and not entry.address.startswith("127."):
                    return entry.address
    return "127.0.0.1"


def jobqueue_cluster(args, tls: ClusterTLS):
    """A dask-jobqueue cluster (not yet scaled) from ``--cluster`` options, TLS only, its
    scheduler on ``--interface`` or the primary address, its dashboard on 127.0.0.1."""
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ClusterError("--cluster needs dask-jobqueue: pip install 'streamsolve[cluster]'") \
            from exc
    cls = getattr(dask_jobqueue, JOBQUEUE_CLASSES[args.cluster])
    where = {"interface": args.interface} if args.interface else {"host": primary_address()}
    kwargs = dict(cores=args.cores, memory=args.memory or DEFAULT_JOB_MEMORY, walltime=args.walltime,
                  processes=1, job_name="streamsolve",
                  job_extra_directives=list(args.job_extra),
                  job_script_prologue=["export TOKENIZERS_PARALLELISM=true",
                                       *args.job_prologue],
                  security=tls.security, protocol="tls://",
                  scheduler_options={**where, "dashboard_address": _dashboard_address(args)})
    for name in ("queue", "account", "interface"):
        if getattr(args, name, None):
            kwargs[name] = getattr(args, name)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, OSError) as exc:
        raise ClusterError(f"cannot set up a {args.cluster} cluster: {exc}") from exc


def _dashboard_address(args) -> str:
    return getattr(args, "dashboard_address", None) or DEFAULT_DASHBOARD_ADDRESS


def dashboard_link(cluster, dashboard_address: str) -> str:
    """Where the dashboard really listens (``cluster.dashboard_link`` names the scheduler's
    host whatever the dashboard's own address), or "none"."""
    try:
        port = cluster.scheduler.services["dashboard"].port
    except (AttributeError, KeyError):
        return "none"
    host = dashboard_address.rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = cluster.scheduler_address.split("://", 1)[-1].rsplit(":", 1)[0]
    return f"http://{host}:{port}/status"


@contextlib.contextmanager
def started_cluster(args):
    """Within: ``(cluster, tls)``, a batch-job cluster (not yet scaled) and its TLS; closed
    (jobs cancelled, temporary certificates removed) on the way out."""
    tls = cluster_tls(args)
    try:
        cluster = jobqueue_cluster(args, tls)
        try:
            logger.info("Dask scheduler of the %s jobs at %s (%s); dashboard %s", args.cluster,
                        cluster.scheduler_address, tls.description,
                        dashboard_link(cluster, _dashboard_address(args)))
            yield cluster, tls
        finally:
            cluster.close()
    finally:
        tls.close()


def job_script(args) -> dict:
    """The batch script ``--cluster`` would submit for each worker job (with this run's
    scheduler address and certificate paths: a real run makes its own), and where its
    scheduler and dashboard listen."""
    with started_cluster(args) as (cluster, tls):
        return {"cluster": args.cluster, "job_script": cluster.job_script(),
                "scheduler": cluster.scheduler_address,
                "dashboard": dashboard_link(cluster, _dashboard_address(args)),
                "tls": tls.description}
