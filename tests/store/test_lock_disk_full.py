"""A full disk while creating the lock file of an object store: one `LockFileError` naming
the lock and the fix, and no partial lock file left to block the next writer (issue 16)."""

from __future__ import annotations

import errno
import os

import fsspec
import pytest

from streamsolve.store.locking import LockFileError, StoreLock


def test_full_disk_while_writing_an_object_store_lock(monkeypatch):
    url = "memory://bucket/full/m.zarr"
    fs = fsspec.filesystem("memory")
    real_open = type(fs).open

    class FullFile:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def write(self, data):
            self.handle.write(data[:3])  # a partial lock file...
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ...then the disk is full

        def __exit__(self, *exc):
            self.handle.close()

    def full_open(self, path, mode="rb", **kwargs):
        handle = real_open(self, path, mode, **kwargs)
        writing_lock = "lock" in path and ("w" in mode or "x" in mode)
        return FullFile(handle) if writing_lock else handle

    monkeypatch.setattr(type(fs), "open", full_open)
    lock = StoreLock(url)
    with pytest.raises(LockFileError, match="the disk is full; free space") as info:
        lock.acquire()
    assert lock.path in str(info.value) and "\n" not in str(info.value)
    assert not fs.exists(lock.path)
    monkeypatch.undo()
    with StoreLock(url):  # the next writer is not blocked
        assert fs.exists(lock.path)
