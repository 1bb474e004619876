"""Storage credentials from a file only the user can read, applied where the I/O happens.

``--storage-secrets FILE`` names a JSON object of fsspec storage options, the secret part of
``--storage-options`` (``{"key": ..., "secret": ...}``, ``{"client_kwargs": {"headers":
{"Authorization": ...}}}``). The file must be readable by its owner only (mode 0600 or
0400). Its options become fsspec's configuration defaults (``fsspec.config.conf``) for the
protocols of the command's URLs, in every process that opens them, so no task ever carries
them: this process (and the local ``processes`` scheduler's workers, which get this
process's fsspec configuration), and on a Dask cluster each worker, which reads the file
itself: a `StorageSecrets` worker plugin holds only the file's *path* and the protocols.
So on a cluster the file must be on a filesystem the workers see (a home directory shared
with the compute nodes), and the scheduler never sees more than its path.

fsspec applies these defaults under the explicit options: an option in both
``--storage-options`` and the file is refused (`check_disjoint`), because fsspec would use the
command line's and drop the file's (nested dicts such as ``client_kwargs`` are not merged).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable

from distributed.diagnostics.plugin import WorkerPlugin

from .runtime import ClusterError

logger = logging.getLogger(__name__)

#: Protocols that are this machine's files: no credentials to apply.
LOCAL_PROTOCOLS = frozenset({"file", "local", "builtin", "memory"})


def read_secrets(path: str) -> dict:
    """The storage options in ``path``, after checking that only its owner can read it.

    Raises
    ------
    ClusterError
        The file is missing, readable by other users, or not a JSON object (one line naming
        the file and the fix; never its content).
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise ClusterError(f"--storage-secrets {path} can be read by other users (mode "
                               f"{stat.S_IMODE(mode):04o}): chmod 600 {path}")
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ClusterError(f"cannot read --storage-secrets {path}: "
                           f"{exc.strerror or type(exc).__name__}") from None
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ClusterError(f"--storage-secrets {path} is not valid JSON (line {exc.lineno}): "
                           "give a JSON object of fsspec storage options") from None
    if not isinstance(options, dict):
        raise ClusterError(f"--storage-secrets {path} must hold a JSON object of fsspec "
                           "storage options")
    return options


def url_protocols(urls: Iterable[str]) -> list[str]:
    """The remote fsspec protocols of ``urls`` (each part of a ``a::b://`` chain)."""
    found = []
    for url in urls:
        for part in str(url).split("::"):
            protocol = part.split("://", 1)[0].lower() if "://" in part else None
            if protocol and protocol not in LOCAL_PROTOCOLS and protocol not in found:
                found.append(protocol)
    return found


def check_disjoint(path: str, secrets: dict, storage_options: dict | None) -> None:
    """Refuse options given both on the command line and in the secrets file."""
    both = sorted(set(secrets) & set(storage_options or {}))
    if both:
        raise ClusterError(f"--storage-options and --storage-secrets {path} both set "
                           f"{', '.join(both)}: give each option in one of them")


def apply_secrets(secrets: dict, protocols: Iterable[str]) -> dict:
    """Make ``secrets`` fsspec's defaults for ``protocols`` in this process; the previous
    configuration of those protocols (to give back to `restore`)."""
    import fsspec.config

    previous = {}
    for protocol in protocols:
        previous[protocol] = fsspec.config.conf.get(protocol)
        fsspec.config.conf[protocol] = {**(previous[protocol] or {}), **secrets}
    return previous


def restore(previous: dict) -> None:
    """Undo `apply_secrets`, and drop filesystems cached with the secrets."""
    import fsspec
    import fsspec.config

    for protocol, conf in previous.items():
        if conf is None:
            fsspec.config.conf.pop(protocol, None)
        else:
            fsspec.config.conf[protocol] = conf
        try:
            fsspec.get_filesystem_class(protocol).clear_instance_cache()
        except (ImportError, ValueError):
            pass


class StorageSecrets(WorkerPlugin):
    """A worker plugin applying a ``--storage-secrets`` file on each worker of a cluster
    (also those that join later) for as long as it is registered.

    It holds the file's path and the protocols, never the secrets: the scheduler keeps
    plugins as they were sent. Each worker reads and checks the file itself.

    Parameters
    ----------
    path : str
        The secrets file, as the workers see it (shared filesystem).
    protocols : list of str
        The protocols its options apply to.

    Examples
    --------
    >>> client.register_plugin(StorageSecrets("/home/me/.s3.json", ["s3"]))  # doctest: +SKIP
    """

    name = "streamsolve-storage-secrets"

    def __init__(self, path: str, protocols: Iterable[str]):
        self.path, self.protocols = str(path), list(protocols)
        self._previous: dict = {}

    def setup(self, worker):
        try:
            self._previous = apply_secrets(read_secrets(self.path), self.protocols)
        except ClusterError as exc:
            raise ClusterError(f"on worker {worker.address}: {exc}") from None
        logger.info("worker %s: storage secrets of %s applied to %s", worker.address,
                    self.path, ", ".join(self.protocols))

    def teardown(self, worker):
        restore(self._previous)
