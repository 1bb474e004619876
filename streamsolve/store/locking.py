"""A writer lock per store: one ingest or finalize at a time.

The lock lives beside the store (``STORE.lock``), keyed on the store's canonical location:
the resolved real path for local stores (so a symlink alias, ``STORE/.``, ``STORE/``, a
relative path and a ``file://`` URL all share one lock) and the normalised URL for object
stores.

Local stores (and ``file://`` URLs) are locked with a kernel lock: ``flock(LOCK_EX |
LOCK_NB)`` on the lock file, held for the writer's lifetime. The kernel releases it when the
process ends, however it ends (SIGKILL included, before the process is even reaped), so a
dead writer never blocks the next one and no lock is ever "broken" by hand: holding the
flock is the lock. The file's content only describes the holder (host, pid, process start,
command name, start time; never the command's arguments, which may hold credentials) for the
error message; an empty or unreadable file (e.g. left by a full disk) is not a holder. The
file is created with mode 0600 and opened with ``O_NOFOLLOW``: a symbolic link, a hard-linked
file or anything but a regular file at the lock's path is refused (a writer would otherwise
truncate and overwrite its target). ``flock`` works on local disks and on NFSv4/CIFS mounts;
a file system without it (e.g. Lustre mounted ``noflock``) is refused with a clear error.

Object stores (fsspec URLs) have no kernel: the lock is an object created with a
conditional create (``fs.open(path, "xb")``, an ``If-None-Match`` PUT on S3), then read back
to check our token. Where the backend has no conditional create, a write-then-verify is used,
which narrows but cannot close the race between two writers starting in the same instant.
A holder of this host that is gone (or a zombie, or whose pid was reused) is stale and its
lock is removed with a warning; an empty or unreadable lock object older than
``DEBRIS_SECONDS`` is debris and removed. Removing a stale object lock is still
read-check-remove, so two writers breaking the same stale lock at the same instant can race;
the conditional create then lets only one of them in where the backend supports it. A lock
held from another host cannot be checked from here: it is refused, and ``break_lock=True``
(``--break-lock``) removes it when the user knows its holder is gone.

Waiting (``wait=True`` or a number of seconds) is bounded: ``wait=True`` waits at most
``DEFAULT_WAIT_SECONDS``, then fails naming the holder and the time waited.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import posixpath
import socket
import stat
import threading
import time
import uuid

from fsspec.core import url_to_fs

from .layout import errno_name, is_disk_full

try:
    import fcntl
except ImportError:  # not POSIX: local stores use the conditional create too
    fcntl = None

logger = logging.getLogger(__name__)

DEFAULT_WAIT_SECONDS = 600.0
"""How long ``wait=True`` (plain ``--wait``) waits for another writer at most."""

DEBRIS_SECONDS = 10.0
"""Age after which an empty or unreadable object-store lock is debris, not a holder."""

PROGRESS_SECONDS = 30.0
"""Interval of the "still waiting" log lines."""

LOCK_FILE_MODE = 0o600
"""Mode of a local lock file: readable by its owner only, whatever the umask or --mode."""

_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


#: Locks this process holds: lock URL -> the `StoreLock` (see `held_lock`).
_HELD_BY_THIS_PROCESS: dict[str, "StoreLock"] = {}


class StoreLockedError(RuntimeError):
    """Another live process holds the store's writer lock."""


class LockFileError(RuntimeError):
    """The lock file beside a store cannot be created or locked (not another writer)."""


def _is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs, str) else fs.protocol
    return "file" in protocols


def canonical_store_url(store_url: str, storage_options: dict | None = None) -> str:
    """The one name of a store that every spelling of it resolves to.

    Parameters
    ----------
    store_url : str
        Store path or fsspec URL.
    storage_options : dict, optional
        fsspec options of the URL's file system.

    Returns
    -------
    str
        The resolved real path for local stores (symlinks, ``.``, ``..``, trailing slashes,
        relative paths and ``file://`` resolved); the URL with a normalised path otherwise.
    """
    fs, path = url_to_fs(store_url, **(storage_options or {}))
    if _is_local(fs):
        return os.path.realpath(path)
    return fs.unstrip_protocol(posixpath.normpath(path))


def lock_url(store_url: str, storage_options: dict | None = None) -> str:
    """Where the lock of a store lives: beside its canonical location (``STORE.lock``)."""
    return canonical_store_url(store_url, storage_options) + ".lock"


def wait_seconds(wait: bool | float | None) -> float:
    """Seconds to wait for another writer: ``True`` is `DEFAULT_WAIT_SECONDS`, ``False`` 0."""
    if wait is None or wait is False:
        return 0.0
    if wait is True:
        return DEFAULT_WAIT_SECONDS
    seconds = float(wait)
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"wait must be True, False or a finite number of seconds >= 0, "
                         f"got {wait!r}")
    return seconds


def _process_start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def _is_zombie(pid: int) -> bool:
    try:
        import psutil

        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except Exception:
        return False


def _holder_alive(holder: dict) -> bool | None:
    """True/False for holders on this host; None when it cannot be known (another host)."""
    if holder.get("host") != socket.gethostname():
        return None
    try:
        pid = int(holder.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _is_zombie(pid):
        return False  # killed, not yet reaped by its parent
    started = _process_start_time(pid)
    if started is not None and holder.get("process_start") is not None:
        return abs(started - float(holder["process_start"])) < 1.0  # pid reused otherwise
    return True


def _parse_holder(data: bytes) -> dict:
    """A holder record from lock file bytes; ``{"unreadable": why}`` when it is not one."""
    if not data.strip():
        return {"unreadable": "empty"}
    try:
        holder = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {"unreadable": "not a lock record"}
    return holder if isinstance(holder, dict) else {"unreadable": "not a lock record"}


def describe(holder: dict) -> str:
    """One line naming a lock holder (for messages)."""
    if "unreadable" in holder:
        return f"a writer whose details are unknown (its lock file is {holder['unreadable']})"
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('started')}"
            f" ({holder.get('command', '?')})")


class StoreLock:
    """Exclusive writer lock of a store (a context manager).

    Parameters
    ----------
    store_url : str
        Store path or fsspec URL; every spelling of one store shares its lock.
    storage_options : dict, optional
        fsspec options for URLs.
    wait : bool or float
        Wait for a live holder to finish instead of failing: ``True`` waits at most
        `DEFAULT_WAIT_SECONDS`, a number waits that many seconds, ``False`` (or 0) not at all.
    break_lock : bool
        Remove an object-store lock whose holder cannot be checked (another host). Local
        locks are kernel locks: they cannot be broken and need not be.
    command : str
        What the holder is doing (shown to other writers).
    poll : float
        Seconds between attempts while waiting.

    Raises
    ------
    StoreLockedError
        On entering, when another live writer holds the lock (after waiting, with ``wait``).
    LockFileError
        On entering, when the lock file cannot be created or locked at all.
    """

    def __init__(self, store_url: str, storage_options: dict | None = None, *,
                 wait: bool | float = False, break_lock: bool = False, command: str = "write",
                 poll: float = 0.25):
        self.store_url = store_url
        self.url = lock_url(store_url, storage_options)
        self.fs, self.path = url_to_fs(self.url, **(storage_options or {}))
        self.kernel_lock = fcntl is not None and _is_local(self.fs)
        self.wait_seconds = wait_seconds(wait)
        self.break_lock, self.command, self.poll = break_lock, command, poll
        self.token = uuid.uuid4().hex
        self.held = False
        self.holder_thread: int | None = None  # the thread that acquired it
        self._fd: int | None = None

    def _record(self) -> dict:
        """Who holds the lock: host, pid, process start (to tell a reused pid), start time,
        command name and token; never the command's arguments (they may hold secrets)."""
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "process_start": _process_start_time(os.getpid()),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": self.command, "token": self.token}

    def read_holder(self) -> dict | None:
        """The current lock file's holder record, or None when there is no lock file.

        An empty or unreadable file gives ``{"unreadable": why}``. For local stores the record
        only describes the holder: whether the lock is held is the kernel's to say.
        """
        if self.kernel_lock:
            return self._read_local_holder()
        try:
            with self.fs.open(self.path, "rb") as handle:
                return _parse_holder(handle.read())
        except FileNotFoundError:
            return None

    def _read_local_holder(self) -> dict | None:
        """`read_holder` of a local lock file, never following a link at its path."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return {"unreadable": exc.strerror or "unreadable"}
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return {"unreadable": "not a regular file"}
            return _parse_holder(os.pread(fd, 1 << 16, 0))
        finally:
            os.close(fd)

    # -- local stores: a kernel lock -------------------------------------------------------

    def _open_lock_file(self) -> int:
        """The lock file, created with mode 0600; never a link or anything but a file."""
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, flags, LOCK_FILE_MODE)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR):
                kind = "a symbolic link" if exc.errno == errno.ELOOP else "a directory"
                raise self._unsafe_path(f"is {kind}") from exc
            raise self._create_error(exc) from exc
        info = os.fstat(fd)
        problem = ("is not a regular file" if not stat.S_ISREG(info.st_mode) else
                   f"is a file with {info.st_nlink} hard links" if info.st_nlink > 1 else None)
        if problem:
            os.close(fd)
            raise self._unsafe_path(problem)
        return fd

    def _unsafe_path(self, problem: str) -> "LockFileError":
        return LockFileError(f"refusing the writer lock {self.path} of store {self.store_url}: "
                             f"it {problem}, which a writer would truncate and overwrite; "
                             "nothing was written. Remove it (streamsolve creates the lock "
                             "file itself)")

    def _create_error(self, exc: OSError) -> "LockFileError":
        """The one-line error for a lock file that cannot be created (full disk or else)."""
        if is_disk_full(exc):
            return LockFileError(f"cannot create the writer lock {self.path} beside store "
                                 f"{self.store_url}: the disk is full; free space there and "
                                 f"run the same command again ({errno_name(exc)}; nothing was "
                                 "written)")
        return LockFileError(f"cannot create the writer lock {self.path} beside store "
                             f"{self.store_url}: {exc.strerror or exc} ({errno_name(exc)}); "
                             "the store's parent directory must be writable (and not full)")

    def _try_flock(self) -> bool | None:
        """True: locked; False: a live process holds it; None: retry (file was replaced)."""
        fd = self._open_lock_file()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_FLOCK:
                raise LockFileError(f"cannot lock {self.path}: its file system does not support "
                                    f"flock ({exc.strerror}); put the store on a file system "
                                    "that does (local disk, NFSv4)") from exc
            raise
        # the previous holder may have removed the file between our open and flock: then we
        # locked an orphan inode that nobody else will ever look at, so try again
        if not self._is_lock_file(fd):
            os.close(fd)
            return None
        self._fd = fd
        self._take_over(fd)
        return True

    def _is_lock_file(self, fd: int) -> bool:
        """Whether ``fd`` is (still) the file at the lock's path."""
        try:
            current = os.lstat(self.path)
        except FileNotFoundError:
            return False
        opened = os.fstat(fd)
        return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)

    def _take_over(self, fd: int):
        """Describe ourselves in the lock file (after noting a holder that died holding it)."""
        previous = _parse_holder(os.pread(fd, 1 << 16, 0))
        if "unreadable" not in previous:
            logger.warning("the previous writer of %s ended without releasing its lock (%s); "
                           "the kernel released it, so its lock is taken over",
                           self.store_url, describe(previous))
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != LOCK_FILE_MODE:
                os.fchmod(fd, LOCK_FILE_MODE)  # left by an older version, or by hand
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self._record()).encode("utf-8"), 0)
        except OSError as exc:  # e.g. a full disk: the flock alone is the lock
            logger.warning("could not describe this writer in %s (%s); the lock is held "
                           "all the same", self.path, exc.strerror)

    def _attempt_local(self) -> dict | None:
        """None when the lock is ours; otherwise a description of its live holder."""
        while True:
            locked = self._try_flock()
            if locked:
                return None
            if locked is False:
                if self.break_lock:
                    logger.warning("--break-lock has no effect on %s: it is a kernel lock held "
                                   "by a live process, released when that process ends",
                                   self.path)
                return self.read_holder() or {"unreadable": "being replaced"}

    # -- object stores: a conditional create -----------------------------------------------

    def _try_create(self) -> bool:
        data = json.dumps(self._record()).encode("utf-8")
        try:
            try:
                with self.fs.open(self.path, "xb") as handle:
                    handle.write(data)
            except FileExistsError:
                return False
            except (ValueError, NotImplementedError):  # no conditional create: write-verify
                if self.fs.exists(self.path):
                    return False
                with self.fs.open(self.path, "wb") as handle:
                    handle.write(data)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            with contextlib.suppress(OSError):  # a partial lock file would block every writer
                self.fs.rm(self.path)
            raise self._create_error(exc) from exc
        holder = self.read_holder()
        return bool(holder) and holder.get("token") == self.token

    def _age_seconds(self) -> float:
        try:
            modified = self.fs.modified(self.path)
        except Exception:  # the backend cannot say: an unreadable lock is debris
            return float("inf")
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=datetime.timezone.utc)
        return (datetime.datetime.now(datetime.timezone.utc) - modified).total_seconds()

    def _is_debris_or_stale(self, holder: dict) -> bool:
        if "unreadable" in holder:
            if self._age_seconds() < DEBRIS_SECONDS:
                return False  # may be a lock being written right now
            logger.warning("removing the debris lock of %s: its lock file is %s",
                           self.store_url, holder["unreadable"])
            return True
        alive = _holder_alive(holder)
        if alive is False:
            logger.warning("breaking the stale lock of %s: its holder is gone (%s)",
                           self.store_url, describe(holder))
            return True
        if alive is None and self.break_lock:
            logger.warning("breaking the lock of %s on request (%s)", self.store_url,
                           describe(holder))
            return True
        return False

    def _attempt_object(self) -> dict | None:
        """None when the lock is ours; otherwise a description of its holder."""
        holder: dict = {"unreadable": "being replaced"}
        for _ in range(10):
            if self._try_create():
                return None
            holder = self.read_holder()
            if holder is None:
                continue  # released between our attempt and the read
            if not self._is_debris_or_stale(holder):
                return holder
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self.path)
        return holder

    # -- both ------------------------------------------------------------------------------

    def _refusal(self, holder: dict, waited: float) -> StoreLockedError:
        if not self.kernel_lock and "unreadable" not in holder and _holder_alive(holder) is None:
            hint = ("it is held from another host and cannot be checked from here: pass "
                    "--break-lock if you are sure that job is gone")
        elif self.wait_seconds > 0:
            hint = f"waited {round(waited, 1):g} s for it; pass --wait SECONDS to wait longer"
        else:
            hint = "pass --wait [SECONDS] to wait for it"
        return StoreLockedError(f"store {self.store_url} is locked by another writer: "
                                f"{describe(holder)}; {hint}")

    def acquire(self) -> "StoreLock":
        """Take the lock (waiting up to ``wait`` seconds); returns ``self``."""
        if self.held:
            raise RuntimeError(f"the lock of {self.store_url} is already held by this object")
        started = time.monotonic()
        next_progress = 0.0
        while True:
            holder = self._attempt_local() if self.kernel_lock else self._attempt_object()
            if holder is None:
                self.held = True
                self.holder_thread = threading.get_ident()
                _HELD_BY_THIS_PROCESS[self.url] = self
                return self
            waited = time.monotonic() - started
            if waited >= self.wait_seconds:
                raise self._refusal(holder, waited)
            if waited >= next_progress:
                logger.info("waiting for the lock of %s (%.0f s of at most %g s): %s",
                            self.store_url, waited, self.wait_seconds, describe(holder))
                next_progress = waited + PROGRESS_SECONDS
            time.sleep(min(self.poll, self.wait_seconds - waited))

    def release(self):
        """Give the lock up (removing its file); a no-op when not held."""
        if not self.held:
            return
        self.held = False
        self.holder_thread = None
        if _HELD_BY_THIS_PROCESS.get(self.url) is self:
            del _HELD_BY_THIS_PROCESS[self.url]
        if self._fd is not None:
            # unlink while still holding the flock, then close: a writer that opened the old
            # file meanwhile sees it replaced and retries (see `_try_flock`)
            if self._is_lock_file(self._fd):  # not a file someone put in its place by hand
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            os.close(self._fd)
            self._fd = None
            return
        holder = self.read_holder()
        if holder and holder.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self.path)

    def covers(self, store_url: str, storage_options: dict | None = None) -> bool:
        """Whether this lock is held and is the lock of ``store_url`` (any spelling)."""
        return self.held and self.url == lock_url(store_url, storage_options)

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def held_lock(store_url: str, storage_options: dict | None = None) -> StoreLock | None:
    """The `StoreLock` of ``store_url`` that the calling thread holds, or None.

    For code that runs inside a locked section without being handed the lock (e.g. the
    counts writer under ``count``); `streamsolve.store.transaction` still refuses to start
    when there is none.
    """
    lock = _HELD_BY_THIS_PROCESS.get(lock_url(store_url, storage_options))
    if lock is not None and lock.held and lock.holder_thread == threading.get_ident():
        return lock
    return None
