"""Replacing a store (``solve --overwrite``): the new store is built beside the old one and
swapped in only once it is complete, so a failed or killed run leaves the old store as it was.

The replacement is built at a sibling location, ``STORE.streamsolve-overwrite-<token>`` (a
random 32-hex token), under the old store's writer lock, which the whole run holds (and
under its own lock, which the counts transaction asks for). Only when it is counted,
finalized and calibrated is it swapped in (`swap_in`):

**Local disks** (and ``file://``): one ``renameat2(RENAME_EXCHANGE)`` swaps the two
directories atomically (Linux; ext4, xfs, btrfs, tmpfs...): ``STORE`` is the old store until
that call and the new one after it, never anything else. The old store, now at the sibling
name, is then removed. A crash before the exchange leaves the old store and a sibling; a
crash after it leaves the new store and a sibling holding the old one: either way the next
writer of the store removes the sibling. Where the exchange is not available, two renames:
``STORE`` to ``STORE.streamsolve-replaced-<token>``, then the new one to ``STORE``; a crash
between them leaves no ``STORE`` (`info` says "no streamsolve store") but the old store
complete under the ``replaced`` name, and the next writer (``count``, ``solve``) renames it
back first.
The directory keeps the old one's permission bits; a symlinked store is swapped at its
target, so the link still points at the store.

**Object stores** have no rename and no multi-object atomic write, and a store's keys are
fixed names (``zarr.json``, ``tokenizer``, ``counts/g1``...), so the new store cannot be
copied under the old one's ``zarr.json`` without clobbering keys it names: the URL cannot
hold a complete store at every instant. The commit order instead keeps the old store intact
until the new one is complete, and makes every crash recoverable:

1. build the new store at ``STORE.streamsolve-overwrite-<token>/`` (crash: the old store is
   intact; the sibling is debris, removed by the next writer);
2. write the commit record ``STORE.streamsolve-overwrite-<token>.commit`` (from here on the
   replacement is decided: a crash is rolled forward);
3. delete ``STORE/zarr.json`` (the URL is no store from here: readers get "no streamsolve
   store", never a mix), then the old ``tokenizer``, ``counts``, ``weights``;
4. copy the new store's objects to ``STORE``, ``zarr.json`` last (a store again, complete);
5. delete the commit record, then the sibling.

A crash in steps 3-5 leaves the commit record and the complete sibling: the next writer of
that store (``count``, ``solve``: any command taking its lock) repeats steps 3-5 before
anything else. Only between steps 3 and 4 (or such a crash and that next writer) is there no
store at the URL.

Leftovers are recognised by name (``STORE.streamsolve-overwrite-`` or ``-replaced-`` and a
32-hex token, their ``.lock`` and ``.commit``) and content (only a streamsolve store's own
entries): anything else, even under such a name, is left alone with a warning.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import posixpath
import re
import stat
import sys
import uuid

from .layout import FORMAT, STORE_ENTRIES, StoreError
from .location import (filesystem, inspect_location, is_local, remove_entries,
                       replaceable_location, zarr_location)
from .locking import StoreLock, StoreLockedError, canonical_store_url

logger = logging.getLogger(__name__)

BUILDING = ".streamsolve-overwrite-"
REPLACED = ".streamsolve-replaced-"
_TOKEN = "[0-9a-f]{32}"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def replace_store(store_url: str, storage_options: dict | None, build, hold):
    """Replace the store at ``store_url`` by the one ``build(target)`` writes at ``target``.

    Call it holding the store's writer lock. ``build`` runs at a new sibling location
    (`replacement_url`) inside ``hold(target)`` (a context manager holding that location's
    own lock); only when it returns is the result swapped in (`swap_in`). Any failure before
    leaves the old store as it was and removes the unfinished one. Where there is no store to
    keep (nothing, an empty directory), ``build`` writes at ``store_url`` itself.

    Returns
    -------
    What ``build`` returned.

    Raises
    ------
    StoreError
        When ``store_url`` holds anything but a streamsolve store (nothing is changed).
    """
    location = replaceable_location(store_url, storage_options, format_name=FORMAT,
                                    store_noun="a streamsolve store", own_entries=STORE_ENTRIES)
    if location.kind != "store":  # nothing to keep
        return build(store_url)
    check_not_mount_point(store_url, storage_options)
    target = replacement_url(store_url, storage_options)
    logger.info("building the new store beside %s (at %s); the old one stays until the new "
                "one is complete", store_url, target)
    try:
        with hold(target):
            result = build(target)
    except BaseException:
        discard(target, storage_options)
        raise
    swap_in(target, store_url, storage_options)
    return result


def replacement_url(store_url: str, storage_options: dict | None = None) -> str:
    """A new sibling location to build the replacement of ``store_url`` at (the old store's
    canonical location plus ``.streamsolve-overwrite-<token>``)."""
    return f"{canonical_store_url(store_url, storage_options)}{BUILDING}{uuid.uuid4().hex}"


def _is_own_debris(url: str, storage_options: dict | None) -> bool:
    """Whether ``url`` holds nothing but a streamsolve store's own entries (or nothing)."""
    if is_local(url) and os.path.islink(zarr_location(url)):
        return False  # never follow a link out of the store's directory
    location = inspect_location(url, storage_options)
    if location.kind in ("absent", "empty"):
        return True
    if not location.entries:  # a file, a dangling link: not a store's directory
        return False
    if location.kind == "other" and "zarr.json" in location.entries:
        return False  # another tool's Zarr data, or an unreadable zarr.json
    return all(name in STORE_ENTRIES for name in location.entries)


def _remove_store_tree(url: str, storage_options: dict | None) -> bool:
    """Remove a store's own entries at ``url`` and (local) its directory; False when it
    holds anything else, which is left untouched."""
    if not _is_own_debris(url, storage_options):
        logger.warning("leaving %s in place: it holds files that are not a streamsolve "
                       "store's own", url)
        return False
    remove_entries(url, storage_options, STORE_ENTRIES)
    fs, root = filesystem(zarr_location(url), storage_options)
    if is_local(url):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(root)
    elif fs.exists(root):
        with contextlib.suppress(FileNotFoundError):
            fs.rm(root, recursive=True)
    return True


def discard(url: str, storage_options: dict | None = None):
    """Remove an unfinished replacement (after a failed build); best effort, logged."""
    try:
        _remove_store_tree(url, storage_options)
    except Exception:  # noqa: BLE001 - the next --overwrite removes it
        logger.warning("could not remove the unfinished replacement %s (the next "
                       "--overwrite removes it)", url, exc_info=True)


# -- leftovers of killed runs ----------------------------------------------------------------

def _leftovers(store_url: str, storage_options: dict | None) -> tuple[list, str, object]:
    """``(names, parent, fs)``: the sibling names of the store that match our patterns."""
    canonical = canonical_store_url(store_url, storage_options)
    fs, root = filesystem(canonical, storage_options)
    parent, name = posixpath.split(root)
    pattern = re.compile(re.escape(name) + f"({re.escape(BUILDING)}|{re.escape(REPLACED)})"
                         f"{_TOKEN}(\\.lock|\\.commit)?")
    try:
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(parent, detail=False)]
    except OSError:  # no parent yet (a new store), or one we cannot list: nothing of ours
        return [], parent, fs
    return sorted(n for n in names if pattern.fullmatch(n)), parent, fs


def recover(store_url: str, storage_options: dict | None = None):
    """Finish or undo what killed ``--overwrite`` runs left beside a store; hold its lock.

    A committed object-store replacement (its ``.commit`` record) is completed; a local store
    renamed away by the two-rename swap is renamed back when ``STORE`` is missing; the rest
    (unfinished replacements, old stores already swapped out, their lock files) is removed —
    only when it holds nothing but a streamsolve store's own entries.
    """
    names, parent, fs = _leftovers(store_url, storage_options)
    if not names:
        return
    canonical = canonical_store_url(store_url, storage_options)
    for name in names:
        if name.endswith(".commit") and name[:-7] in names:
            logger.warning("completing the replacement of %s that a killed --overwrite had "
                           "committed", store_url)
            _roll_forward(fs, f"{parent}/{name[:-7]}", filesystem(canonical, storage_options)[1])
    if is_local(canonical) and not os.path.lexists(canonical):
        for name in names:
            if REPLACED in name and not name.endswith((".lock", ".commit")) \
                    and _is_own_debris(f"{parent}/{name}", None):
                logger.warning("restoring %s, which a killed --overwrite had renamed to %s",
                               canonical, name)
                os.rename(f"{parent}/{name}", canonical)
                break
    for name in _leftovers(store_url, storage_options)[0]:
        _remove_leftover(f"{parent}/{name}", fs, storage_options, canonical)


def _remove_leftover(path: str, fs, storage_options: dict | None, canonical: str):
    """Remove one leftover sibling (a store tree, or a lock file of a replacement that no
    live process holds)."""
    url = path if is_local(canonical) else fs.unstrip_protocol(path)
    if path.endswith(".lock"):
        try:  # a lock file: ours to remove once nobody holds it (releasing removes it)
            with StoreLock(url[:-5], storage_options, command="solve --overwrite (cleanup)"):
                pass
        except (StoreLockedError, OSError) as exc:
            logger.warning("leaving %s: %s", path, exc)
        return
    if path.endswith(".commit"):  # a record whose replacement is gone: nothing to finish
        fs.rm(path)
        return
    if _remove_store_tree(url, storage_options):
        logger.info("removed %s, left by a killed --overwrite of %s", path, canonical)


# -- the swap --------------------------------------------------------------------------------

def swap_in(new_url: str, store_url: str, storage_options: dict | None = None):
    """Make the complete store at ``new_url`` (from `replacement_url`) the store at
    ``store_url``, replacing the old one (see the module docstring for the order)."""
    canonical = canonical_store_url(store_url, storage_options)
    if is_local(canonical):
        _swap_local(zarr_location(new_url), canonical)
        return
    fs, new_root = filesystem(new_url, storage_options)
    _, old_root = filesystem(canonical, storage_options)
    fs.pipe(f"{new_root}.commit", json.dumps({"replaces": canonical}).encode("utf-8"))
    _roll_forward(fs, new_root, old_root)
    logger.info("replaced the streamsolve store %s (--overwrite)", store_url)


def _roll_forward(fs, new_root: str, old_root: str):
    """Steps 3-5 of the object-store commit order (idempotent: a recovery repeats them)."""
    for name in STORE_ENTRIES:  # zarr.json first: from here the URL is not a store
        if fs.exists(f"{old_root}/{name}"):
            fs.rm(f"{old_root}/{name}", recursive=True)
    for name in (*[n for n in STORE_ENTRIES if n != "zarr.json"], "zarr.json"):
        source = f"{new_root}/{name}"
        if not fs.exists(source):
            continue
        files = [source] if fs.isfile(source) else fs.find(source)
        for path in files:  # zarr.json last: a store again only once complete
            fs.copy(path, old_root + path[len(new_root):])
    fs.rm(f"{new_root}.commit")
    fs.rm(new_root, recursive=True)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False when this
    system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # a C library without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), b)


def _sync_directory(path: str):
    """Make a rename in ``path`` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _swap_local(new: str, old: str):
    os.chmod(new, stat.S_IMODE(os.stat(old).st_mode))
    parent = os.path.dirname(old)
    if _exchange(new, old):
        _sync_directory(parent)
        retired = new  # now holds the old store
    else:
        retired = old + REPLACED + new.rsplit(BUILDING, 1)[1]
        os.rename(old, retired)
        try:
            os.rename(new, old)
        except OSError:
            os.rename(retired, old)
            raise
        _sync_directory(parent)
    logger.info("replaced the streamsolve store %s (--overwrite)", old)
    try:
        _remove_store_tree(retired, None)
    except OSError as exc:  # the next --overwrite removes it
        logger.warning("could not remove the replaced store at %s (%s)", retired, exc)


def check_not_mount_point(store_url: str, storage_options: dict | None = None):
    """Refuse, before any work, to replace a local store that is a mount point (it cannot
    be renamed; put the store in a directory of the mount)."""
    canonical = canonical_store_url(store_url, storage_options)
    if is_local(canonical) and os.path.ismount(canonical):
        raise StoreError(f"cannot --overwrite {store_url}: it is a mount point, which cannot be "
                         "replaced by a rename; nothing was changed. Use a store directory "
                         "inside the mount")

