"""What is at a store's location, and the ownership rules: create only where nothing of
anyone else's is, remove only a store's own entries.

Used by the language-model store (`ModelStore`) and by the classifier's counts store, which
pass their own format name and entries.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from .layout import FORMAT, STORE_ENTRIES, StoreError

logger = logging.getLogger(__name__)


def zarr_location(url: str) -> str:
    """The location to hand to Zarr: a plain path for ``file://`` URLs.

    Zarr opens ``file://`` URLs through fsspec's local filesystem, which does not create
    parent directories, so the first nested write of a new store fails; a plain path uses
    Zarr's own local store, which does.
    """
    url = str(url)
    if url.startswith("file://"):
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem._strip_protocol(url)
    return url


@dataclasses.dataclass
class Location:
    """What is at a store URL.

    Attributes
    ----------
    kind : str
        "absent", "empty", "store" (a store of the asked format) or "other".
    description : str
        What is there, in words (for error messages).
    entries : tuple of str
        A directory's names.
    """

    kind: str
    description: str
    entries: tuple = ()


def filesystem(url: str, storage_options: dict | None):
    """``(fsspec filesystem, root path)`` of a URL (no trailing slash)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
    return fs, root.rstrip("/") or root


def is_local(url: str) -> bool:
    """Whether a URL is a local path (plain or ``file://``)."""
    return "://" not in str(url) or str(url).startswith("file://")


def check_writable(url: str) -> None:
    """Refuse, in one line, a local store path that is a regular file, or a store (or the
    directory it would be created in) this user cannot write; before anything is written.

    Raises
    ------
    StoreError
    """
    if not is_local(url):
        return
    path = os.path.abspath(url.removeprefix("file://"))
    if os.path.isfile(path):
        raise StoreError(f"{url} is a regular file, not a store: choose a new path or an "
                         "empty directory; nothing was changed")
    where = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(where) and not os.access(where, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write to {where} (read-only or not yours): nothing was "
                         "changed; fix its permissions or choose another --store path")


def _describe_directory(fs, root: str, entries: tuple, format_name: str,
                        store_noun: str) -> Location:
    if "zarr.json" not in entries:
        if ".zgroup" in entries or ".zarray" in entries:
            return Location("other", "a Zarr v2 dataset", entries)
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
        return Location("other", f"a directory holding {count} ({shown})", entries)
    try:
        node = json.loads(fs.cat_file(f"{root}/zarr.json"))
        node_type, attrs = node.get("node_type"), node.get("attributes") or {}
        if not isinstance(attrs, dict):
            raise ValueError("attributes are not an object")
    except (OSError, ValueError, AttributeError):
        return Location("other", "a directory with an unreadable zarr.json", entries)
    if node_type != "group":
        return Location("other", f"a Zarr {node_type or 'node'} of another tool", entries)
    if attrs.get("format") == format_name:
        return Location("store", store_noun, entries)
    if "format" in attrs:
        return Location("other", f"a Zarr group with format {attrs['format']!r} (not "
                                 f"{format_name!r}, so not {store_noun})", entries)
    return Location("other", "a Zarr group of another tool", entries)


def _inspect_local(path: str) -> Location | None:
    """What a local path is when it is not a directory (None for a directory)."""
    if not os.path.lexists(path):
        return Location("absent", "nothing")
    if not os.path.exists(path):
        return Location("other", "a dangling symbolic link")
    if os.path.isdir(path):
        return None
    if os.path.isfile(path):
        return Location("other", "a regular file")
    return Location("other", "a special file (neither a regular file nor a directory)")


def inspect_location(url: str, storage_options: dict | None = None, *,
                     format_name: str = FORMAT,
                     store_noun: str = "a streamsolve store") -> Location:
    """Find out what is at a store URL without changing anything.

    Parameters
    ----------
    url : str
        Local path or fsspec URL.
    storage_options : dict, optional
    format_name : str
        The ``format`` attribute that makes a Zarr group "ours" (kind "store").
    store_noun : str
        How such a store is described in messages.

    Returns
    -------
    Location
    """
    fs, root = filesystem(zarr_location(url), storage_options)
    if is_local(url):
        location = _inspect_local(root)
        if location is not None:
            return location
    elif not fs.exists(root):
        return Location("absent", "nothing")
    elif fs.isfile(root):
        return Location("other", "an existing object (a file, not a directory)")
    entries = tuple(sorted(name.rstrip("/").rsplit("/", 1)[-1]
                           for name in fs.ls(root, detail=False)
                           if name.rstrip("/") != root))
    if not entries:
        return Location("empty", "an empty directory")
    return _describe_directory(fs, root, entries, format_name, store_noun)


def creatable_location(url: str, storage_options: dict | None = None) -> Location:
    """What is at ``url``, if a new store may be created there (absent, an empty directory,
    or the debris of an interrupted creation).

    Raises
    ------
    StoreError
        Naming what is there otherwise; nothing is changed.
    """
    location = inspect_location(url, storage_options)
    if location.kind == "other":
        raise StoreError(f"refusing to create a store at {url}: it is {location.description};"
                         " nothing was changed. Choose a new path or an empty directory.")
    return location


def replaceable_location(url: str, storage_options: dict | None, *, format_name: str,
                         store_noun: str, own_entries: tuple) -> Location:
    """What is at ``url``, if a store of ``format_name`` may replace it: nothing, an empty
    directory, or such a store holding nothing but ``own_entries``.

    Raises
    ------
    StoreError
        Naming what is there otherwise (a user's files, another dataset, foreign entries
        beside the store); nothing is changed.
    """
    location = inspect_location(url, storage_options, format_name=format_name,
                                store_noun=store_noun)
    if location.kind == "other":
        raise StoreError(f"refusing to overwrite {url}: it is {location.description}, not "
                         f"{store_noun}; nothing was deleted. Choose a new store path.")
    foreign = [name for name in location.entries if name not in own_entries]
    if location.kind == "store" and foreign:
        raise StoreError(f"refusing to overwrite {url}: besides the store it holds "
                         f"{', '.join(foreign)}; nothing was deleted. Move those out first.")
    return location


def is_inside_store(path: str, store_url: str, storage_options: dict | None = None) -> bool:
    """Whether ``path`` is the store's location or anything inside it (symlinks resolved)."""
    if is_local(path) and is_local(store_url):
        inner = os.path.realpath(zarr_location(path))
        root = os.path.realpath(zarr_location(store_url))
        return os.path.commonpath([inner, root]) == root
    if is_local(path) != is_local(store_url):
        return False
    fs_path, inner = filesystem(path, storage_options)
    fs_store, root = filesystem(store_url, storage_options)
    return (fs_path.protocol == fs_store.protocol
            and (inner.rstrip("/") + "/").startswith(root.rstrip("/") + "/"))


def remove_entries(url: str, storage_options: dict | None, entries: tuple = STORE_ENTRIES):
    """Remove a store's own top-level ``entries``, nothing else."""
    fs, root = filesystem(zarr_location(url), storage_options)
    for name in entries:
        path = f"{root}/{name}"
        if fs.exists(path):
            fs.rm(path, recursive=fs.isdir(path))
