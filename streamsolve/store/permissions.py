"""The mode of a local store's files (``--mode``), applied while a command writes the store.

Zarr creates every file through a temporary file renamed into place, with the process's
umask; so the mode is applied as a umask for the time the store is written
(`store_file_mode`), and with it every file this process writes into the store (the
attributes included, which each commit replaces) gets it. Files never get execute bits;
directories get them where the mode gives read (``0640`` -> files ``0640``, directories
``0750``).

- ``--mode MODE``: the store's files and directories get MODE, the existing ones too (so the
  whole store has it).
- Default: the umask, but never looser than an existing store's own mode (that of its
  ``zarr.json``): a store made private stays private when a later command runs under a
  wider umask.
- Object stores: a mode does not apply (access is the bucket's policy); a ``--mode`` given
  for one is reported and ignored. The writer lock is always 0600 (`streamsolve.store.locking`).

The umask is process-wide: local Dask worker threads and processes started meanwhile write with
it too; workers of a distributed cluster use their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat

from .location import is_local, zarr_location

logger = logging.getLogger(__name__)


def parse_mode(text) -> int:
    """An octal file mode (``"0600"``, ``"640"``, ``"0o644"`` or an int) with owner read and
    write (the writer reads back what it writes).

    Raises
    ------
    ValueError
        Naming the value and an example.
    """
    try:
        mode = text if isinstance(text, int) else int(str(text).strip().lower()
                                                      .removeprefix("0o"), 8)
    except ValueError:
        mode = -1
    if not (0 <= mode <= 0o777 and mode & 0o600 == 0o600):
        raise ValueError(f"--mode {text!r} is not an octal file mode with owner read and write "
                         "(e.g. 0600: yours only, 0640: also your group may read)")
    return mode


def directory_mode(mode: int) -> int:
    """The mode directories get for file ``mode``: execute where it gives read."""
    return (mode & 0o666) | ((mode & 0o444) >> 2)


def umask_for(mode: int) -> int:
    """The umask under which new files get ``mode`` (without x) and directories
    `directory_mode`."""
    return 0o777 & ~directory_mode(mode)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _existing_mode(path: str) -> int | None:
    try:
        return stat.S_IMODE(os.stat(os.path.join(path, "zarr.json")).st_mode) & 0o666
    except OSError:
        return None


def _apply_to_existing(path: str, mode: int):
    """Bring an existing store's files and directories to ``mode`` (best effort)."""
    failed = 0
    for root, dirs, files in os.walk(path):
        for name, wanted in [(d, directory_mode(mode)) for d in dirs] + \
                            [(f, mode & 0o666) for f in files]:
            try:
                os.chmod(os.path.join(root, name), wanted, follow_symlinks=False)
            except (OSError, NotImplementedError):
                failed += 1
    try:
        os.chmod(path, directory_mode(mode))
    except OSError:
        failed += 1
    if failed:
        logger.warning("could not set mode %04o on %d entr(ies) of %s (not yours?)", mode,
                       failed, path)


@contextlib.contextmanager
def store_file_mode(url: str, mode: int | None = None):
    """Within: what this process writes into the local store at ``url`` gets ``mode`` (see
    the module's description for the default and object stores).

    Parameters
    ----------
    url : str
        Store path or URL.
    mode : int, optional
        From `parse_mode`; None: the umask, never looser than the existing store's mode.
    """
    if not is_local(url):
        if mode is not None:
            logger.warning("--mode does not apply to the object store %s: access there is "
                           "set by the bucket's policy, not by file modes", url)
        yield
        return
    path = zarr_location(url)
    umask = _current_umask()
    existing = _existing_mode(path)
    if mode is not None:
        umask = umask_for(mode)
        if existing is not None and existing != mode & 0o666:
            _apply_to_existing(path, mode)
    elif existing is not None:
        umask |= umask_for(existing)  # never looser than the store already is
    previous = os.umask(umask)
    try:
        yield
    finally:
        os.umask(previous)
