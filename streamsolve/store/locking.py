"""A writer lock per store: one ingest or finalize at a time.

The lock is a small JSON file beside the store (``STORE.lock``) naming its holder: host,
pid, process start time, command and start time. It is created exclusively (``O_EXCL`` on
local disks; on object stores a write-then-verify, which narrows but cannot close the race
between two writers starting in the same instant). A lock whose holder is a process of this
host that no longer exists (or whose pid now belongs to another process) is stale: it is
broken with a warning. A lock held from another host cannot be checked from here; it is
refused, and ``break_lock=True`` (``--break-lock``) removes it when the user knows its
holder is gone.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import sys
import time
import uuid

import fsspec

logger = logging.getLogger(__name__)


class StoreLockedError(RuntimeError):
    """Another live process holds the store's writer lock."""


def lock_url(store_url: str) -> str:
    """Where the lock of a store lives (beside it, so creating the store cannot erase it)."""
    return store_url.rstrip("/") + ".lock"


def _process_start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def _holder_alive(holder: dict) -> bool | None:
    """True/False for holders on this host; None when it cannot be known (another host)."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = _process_start_time(pid)
    if started is not None and holder.get("process_start") is not None:
        return abs(started - float(holder["process_start"])) < 1.0  # pid reused otherwise
    return True


def describe(holder: dict) -> str:
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('started')}"
            f" ({holder.get('command', '?')})")


class StoreLock:
    """Exclusive writer lock of a store (a context manager).

    Parameters
    ----------
    store_url : str
    storage_options : dict, optional
    wait : bool
        Wait for a live holder to finish instead of failing.
    timeout : float
        Seconds to wait at most (with ``wait``).
    break_lock : bool
        Remove a lock whose holder cannot be checked (another host).
    command : str
        What the holder is doing (shown to other writers).
    """

    def __init__(self, store_url: str, storage_options: dict | None = None, *, wait: bool = False,
                 timeout: float = 24 * 3600, break_lock: bool = False, command: str = "write",
                 poll: float = 1.0):
        self.url = lock_url(store_url)
        self.store_url = store_url
        self.fs, _, (self.path,) = fsspec.get_fs_token_paths(self.url,
                                                             storage_options=storage_options or {})
        self.local = "://" not in store_url or store_url.startswith("file://")
        self.wait, self.timeout, self.break_lock = wait, timeout, break_lock
        self.command, self.poll = command, poll
        self.token = uuid.uuid4().hex
        self.held = False

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "process_start": _process_start_time(os.getpid()),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": self.command, "token": self.token,
                "argv": " ".join(sys.argv[:6])}

    def read_holder(self) -> dict | None:
        """The current holder's record, or None when unlocked."""
        try:
            with self.fs.open(self.path, "rb") as handle:
                return json.loads(handle.read().decode("utf-8") or "{}")
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return {"host": "?", "pid": -1, "started": "?", "command": "unreadable lock file"}

    def _try_create(self) -> bool:
        data = json.dumps(self._record()).encode("utf-8")
        if self.local:
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return True
        if self.fs.exists(self.path):
            return False
        with self.fs.open(self.path, "wb") as handle:
            handle.write(data)
        holder = self.read_holder()
        return bool(holder) and holder.get("token") == self.token

    def _remove(self):
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path)

    def acquire(self) -> "StoreLock":
        deadline = time.monotonic() + self.timeout
        announced = False
        while True:
            if self._try_create():
                self.held = True
                return self
            holder = self.read_holder()
            if holder is None:
                continue  # released between our attempt and the read
            alive = _holder_alive(holder)
            if alive is False:
                logger.warning("breaking the stale lock of %s: its holder is gone (%s)",
                               self.store_url, describe(holder))
                self._remove()
                continue
            if alive is None and self.break_lock:
                logger.warning("breaking the lock of %s on request (%s)", self.store_url,
                               describe(holder))
                self._remove()
                continue
            if not self.wait or time.monotonic() > deadline:
                hint = ("; pass --wait to wait for it" if alive else
                        "; it is held from another host and cannot be checked from here: pass "
                        "--break-lock if you are sure that job is gone")
                raise StoreLockedError(f"store {self.store_url} is locked by another writer: "
                                       f"{describe(holder)}{hint}")
            if not announced:
                logger.info("waiting for the lock of %s (%s)", self.store_url, describe(holder))
                announced = True
            time.sleep(self.poll)

    def release(self):
        if self.held:
            holder = self.read_holder()
            if holder and holder.get("token") == self.token:
                self._remove()
            self.held = False

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
