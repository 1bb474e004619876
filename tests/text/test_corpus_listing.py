"""Corpus folders and globs (issues 21.3 and 26): streamsolve's own files are not shards, an
unreadable directory is reported, and a symlink loop is walked once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import fsspec
import numpy as np
import pytest

from streamsolve import api
from streamsolve.cli import main
from streamsolve.engine import spill
from streamsolve.store import layout, locking
from streamsolve.store.locking import StoreLock
from streamsolve.store.model_store import ModelStore
from streamsolve.text import corpus_listing
from streamsolve.text.shards import expand_corpus, expand_shards

from ..conftest import write_text


@pytest.fixture
def folder(tmp_path, documents):
    """A corpus folder of two text files (one in a subfolder)."""
    root = tmp_path / "c"
    (root / "sub").mkdir(parents=True)
    write_text(root / "a.txt", "\n\n".join(documents[:4]) + "\n")
    write_text(root / "sub" / "b.txt", "\n\n".join(documents[4:8]) + "\n")
    return root


def reasons(skipped: list[dict]) -> dict:
    return {entry["path"]: entry["skipped"] for entry in skipped}


def test_a_store_inside_its_corpus_folder_does_not_count_its_lock(folder, tokenizer_file,
                                                                    monkeypatch, capsys):
    """``cd c && streamsolve count . --store model.zarr``, twice: the second run is a no-op,
    not "already ingested with different content: ./model.zarr.lock"."""
    monkeypatch.chdir(folder)
    args = ["count", ".", "--store", "model.zarr", "--json"]
    assert main(args + ["--tokenizer", tokenizer_file, "--radius", "2"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["shards"] == 2
    assert first["skipped_reasons"] == {"./model.zarr.lock": "the lock of the store being written"}
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    again = json.loads(out)
    assert again["new_tokens"] == 0
    assert sorted(again["already_ingested"]) == ["./a.txt", "./sub/b.txt"]
    assert again["skipped_reasons"] == {"./model.zarr": "the store being written",
                                        "./model.zarr.lock": "the lock of the store being written"}


@pytest.mark.parametrize("overwrite", [False, True])
def test_solve_with_its_store_inside_the_corpus_folder(folder, tokenizer_file, monkeypatch,
                                                       capsys, overwrite):
    """Issue 21.3 as reported: ``cd c && streamsolve solve . --store model.zarr`` counts the
    two text files only (not ``./model.zarr.lock``), and the next ``count .`` is a no-op;
    with ``--overwrite`` over an earlier store, neither the old store, its lock nor the
    replacement being built beside it is a shard."""
    monkeypatch.chdir(folder)
    solve = ["solve", ".", "--store", "model.zarr", "--tokenizer", tokenizer_file,
             "--radius", "2", "--quiet"]
    if overwrite:
        assert main(solve) == 0
        solve.append("--overwrite")
    code = main(solve)
    assert code == 0, capsys.readouterr().err
    manifest = ModelStore("model.zarr").meta["shards"]
    assert sorted(entry["path"] for entry in manifest) == ["./a.txt", "./sub/b.txt"], manifest
    capsys.readouterr()
    code = main(["count", ".", "--store", "model.zarr", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    again = json.loads(out)
    assert again["new_tokens"] == 0
    assert sorted(again["already_ingested"]) == ["./a.txt", "./sub/b.txt"]
    assert sorted(os.listdir(".")) == ["a.txt", "model.zarr", "sub"]


def test_other_stores_their_locks_and_spill_directories_are_skipped(folder, tmp_path,
                                                                   tokenizer_file):
    """A streamsolve store is known by its zarr.json whatever its name (e.g. the temporary
    store `solve --overwrite` builds beside its store), and so is its held lock file."""
    built = tmp_path / "built.zarr"
    api.count([str(folder / "a.txt")], str(built), tokenizer=tokenizer_file, radius=2)
    shutil.copytree(built, folder / "model.zarr")
    shutil.copytree(built, folder / "model.zarr-overwrite-4711")
    owner = spill.SpillOwner.of_process()
    spill_dir = folder / owner.directory_name("x1")
    spill_dir.mkdir()
    spill.write_run(str(spill_dir), np.arange(5, dtype=np.int64), np.ones(5, np.int64), 100, 16)
    with StoreLock(str(folder / "model.zarr")), StoreLock(str(folder / "fresh.zarr")):
        shards, skipped = expand_shards([str(folder)])
        globbed, glob_skipped = expand_shards([str(folder / "**")])
        one_level, one_skipped = expand_shards([str(folder / "*" / "*")])
    texts = [str(folder / "a.txt"), str(folder / "sub" / "b.txt")]
    assert shards == texts and globbed == texts
    expected = {str(folder / "model.zarr"): "a streamsolve store",
                str(folder / "model.zarr-overwrite-4711"): "a streamsolve store",
                str(folder / "model.zarr.lock"): "the lock of a streamsolve store",
                str(folder / "fresh.zarr.lock"): "a streamsolve lock file",
                str(spill_dir): "a streamsolve spill directory"}
    assert reasons(skipped) == expected and reasons(glob_skipped) == expected
    assert one_level == [str(folder / "sub" / "b.txt")]
    assert set(reasons(one_skipped)) == {str(folder / "model.zarr"), str(spill_dir),
                                         str(folder / "model.zarr-overwrite-4711")}


def test_the_store_being_written_is_skipped_before_it_exists(folder):
    store = folder / "new.zarr"
    with StoreLock(str(store)):
        shards, skipped = expand_shards([str(folder)], exclude=[str(store)])
    assert shards == [str(folder / "a.txt"), str(folder / "sub" / "b.txt")]
    assert reasons(skipped) == {str(folder / "new.zarr.lock"): "the lock of the store being written"}


def test_stores_in_a_remote_folder_are_skipped(folder, tmp_path, tokenizer_file):
    built = tmp_path / "built.zarr"
    api.count([str(folder / "a.txt")], str(built), tokenizer=tokenizer_file, radius=2)
    fs = fsspec.filesystem("memory")
    fs.put(str(built), "/remote/corpus/model-copy", recursive=True)
    fs.pipe("/remote/corpus/a.txt", b"some text\n")
    fs.pipe("/remote/corpus/model-copy.lock", b"")
    fs.pipe("/remote/corpus/other.lock", json.dumps(StoreLock(str(built))._record()).encode())
    try:
        shards, skipped = expand_shards(["memory://remote/corpus"],
                                        exclude=["memory://remote/corpus/new.zarr"])
    finally:
        fs.rm("/remote", recursive=True)
    assert shards == ["memory:///remote/corpus/a.txt"]
    assert reasons(skipped) == {"memory:///remote/corpus/model-copy": "a streamsolve store",
                                "memory:///remote/corpus/model-copy.lock": "a streamsolve lock file",
                                "memory:///remote/corpus/other.lock": "a streamsolve lock file"}


def test_listing_constants_match_the_store_and_spill_code(tmp_path):
    """text/ may not import store/ or engine/: the markers it knows them by are pinned here."""
    assert corpus_listing.STORE_FORMAT == layout.FORMAT
    assert corpus_listing.SPILL_PREFIX == spill.SPILL_PREFIX
    store = str(tmp_path / "m.zarr")
    assert locking.lock_url(store) == os.path.realpath(store) + corpus_listing.LOCK_SUFFIX
    with StoreLock(store) as lock:
        with open(lock.path, "rb") as handle:
            assert corpus_listing.is_lock_record(handle.read())


# -- unreadable directories and symlink loops --------------------------------------------------

@contextlib.contextmanager
def unprivileged():
    """Run the block as an unprivileged user when the tests run as root (root reads any
    directory); a no-op otherwise."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_an_unreadable_directory_is_reported_not_passed_over(documents):
    root = Path(tempfile.mkdtemp(prefix="streamsolve-unreadable-"))  # reachable unprivileged
    locked = root / "locked"
    try:
        write_text(root / "a.txt", documents[0] + "\n")
        locked.mkdir()
        write_text(locked / "b.txt", documents[1] + "\n")
        for path in (root, root / "a.txt"):
            os.chmod(path, 0o755)
        os.chmod(locked, 0)
        with unprivileged():
            shards, skipped = expand_shards([str(root)])
            globbed, glob_skipped = expand_shards([str(root / "**" / "*.txt")])
    finally:
        if locked.exists():
            os.chmod(locked, 0o755)
        shutil.rmtree(root)
    assert shards == globbed == [str(root / "a.txt")]
    expected = {str(locked): "unreadable directory (Permission denied)"}
    assert reasons(skipped) == expected and reasons(glob_skipped) == expected


def test_a_symlink_loop_is_walked_once(folder):
    """``c/sub/loop -> ..``: each real directory is listed once, in a walk and in a ``**``
    glob (which otherwise follows the loop ~40 levels deep)."""
    os.symlink("..", folder / "sub" / "loop")
    os.symlink("sub", folder / "again")  # a second name of a directory: listed as the real one
    texts = [str(folder / "a.txt"), str(folder / "sub" / "b.txt")]
    shards, skipped = expand_shards([str(folder)])
    assert shards == texts
    assert reasons(skipped) == {
        str(folder / "sub" / "loop"): f"symlink loop (a link to {folder}, which contains it)",
        str(folder / "again"): f"already listed as {folder / 'sub'} (a symlink to the same "
                               "directory)"}
    assert expand_corpus([str(folder / "**" / "*.txt")]) == texts
    assert expand_corpus([str(folder / "**")]) == texts


def test_double_star_globs_match_as_glob_does(folder, monkeypatch):
    (folder / "sub" / "deeper").mkdir()
    write_text(folder / "sub" / "deeper" / "c.md", "text\n")
    write_text(folder / ".hidden.txt", "hidden\n")
    monkeypatch.chdir(folder)
    assert expand_corpus(["**/*.txt"]) == ["a.txt", "sub/b.txt"]
    assert expand_corpus(["sub/**/*.md"]) == ["sub/deeper/c.md"]
    assert expand_corpus(["**/b.tx[st]"]) == ["sub/b.txt"]
    assert expand_corpus(["s?b/**"]) == ["sub/b.txt", "sub/deeper/c.md"]
    assert expand_corpus([str(folder / "**" / "[!b]*")]) == [str(folder / "a.txt"),
                                                            str(folder / "sub" / "deeper" / "c.md")]
