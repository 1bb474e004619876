"""Issue 21 item 1: ``solve --overwrite`` builds the new store beside the old one and swaps it
in only once it is complete, so a run that fails (bad input, a kill) leaves the old model
exactly as it was (byte-identical tree) and readable."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import streamsolve as ss
from streamsolve.cli import main

from .conftest import write_text
from .deploy_helpers import REPO
from .store.test_store_safety import snapshot


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args), "-q"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small(tmp_path, documents) -> Path:
    return write_text(tmp_path / "small.txt", "\n\n".join(documents[:12]) + "\n")


@pytest.fixture
def solved(tmp_path, small, tokenizer_file) -> Path:
    store = tmp_path / "m.zarr"
    ss.solve([str(small)], str(store), tokenizer=tokenizer_file, radius=2, heldout_fraction=0.2)
    return store


def siblings(store: Path) -> list[str]:
    """Everything beside the store other than the store itself and the test's inputs."""
    return sorted(p.name for p in store.parent.iterdir()
                  if p.name.startswith(store.name) and p.name != store.name)


def bad_inputs(tmp_path: Path, tokenizer_file: str) -> dict[str, list[str]]:
    """Arguments of a `solve` that must fail before it could train anything."""
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    corrupt = tmp_path / "broken.txt.gz"
    corrupt.write_bytes(gzip.compress(b"some text\n" * 2000)[:300] + b"\x00garbage")
    fieldless = tmp_path / "records.jsonl"
    fieldless.write_text("\n".join(json.dumps({"body": f"line {i}"}) for i in range(50)) + "\n")
    not_json = tmp_path / "tokenizer-bad.json"
    not_json.write_text("this is not a tokenizer")
    return {"empty": [str(empty), "--tokenizer", tokenizer_file],
            "vocab-size": [str(empty.parent / "small.txt"), "--vocab-size", "5"],
            "tokenizer": [str(empty.parent / "small.txt"), "--tokenizer", str(not_json)],
            "corrupt-gz": [str(corrupt), "--tokenizer", tokenizer_file],
            "jsonl-field": [str(fieldless), "--tokenizer", tokenizer_file]}


@pytest.mark.parametrize("case", ["empty", "vocab-size", "tokenizer", "corrupt-gz",
                                  "jsonl-field"])
def test_a_failed_overwrite_leaves_the_old_store_byte_identical(capsys, tmp_path, solved,
                                                                tokenizer_file, case):
    before = snapshot(solved)
    info_before = ss.info(str(solved))
    code, _, err = run_cli(capsys, "solve", *bad_inputs(tmp_path, tokenizer_file)[case],
                           "--store", solved, "--overwrite")
    assert code == 2 and err.count("\n") == 1, err
    assert snapshot(solved) == before
    assert ss.info(str(solved)) == info_before
    assert siblings(solved) == []  # no temporary store, no lock file left behind


def test_overwrite_replaces_the_store_when_it_succeeds(capsys, tmp_path, solved, documents,
                                                       tokenizer_file):
    other = write_text(tmp_path / "other.txt", "\n\n".join(documents[20:36]) + "\n")
    old = ss.info(str(solved))
    code, out, err = run_cli(capsys, "solve", other, "--store", solved, "--overwrite",
                             "--tokenizer", tokenizer_file, "--radius", "1", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["store"] == str(solved)
    new = ss.info(str(solved))
    assert new["shard_list"] == [str(other)] and new["radius"] == 1
    assert new["tokens"] == summary["tokens"] != old["tokens"]
    assert new["weights"]["calibration"] and not new["weights"]["stale"]
    assert siblings(solved) == []


def test_overwrite_keeps_the_directory_mode_and_a_symlinked_store(capsys, tmp_path, small,
                                                                  solved, tokenizer_file):
    solved.chmod(0o750)
    link = tmp_path / "link.zarr"
    link.symlink_to(solved)
    code, _, err = run_cli(capsys, "solve", small, "--store", link, "--overwrite",
                           "--tokenizer", tokenizer_file, "--radius", "1")
    assert code == 0, err
    assert link.is_symlink() and ss.info(str(link))["radius"] == 1
    assert (solved.stat().st_mode & 0o777) == 0o750
    assert siblings(solved) == []


KILLED_RUN = """
import os, sys
from streamsolve import api

real = api._finalize_locked
def finalize_then_die(model_store, *args, **kwargs):
    model = real(model_store, *args, **kwargs)
    print(model_store.url, flush=True)
    os.kill(os.getpid(), 9)  # killed outright after the new store is finalized, before the swap
api._finalize_locked = finalize_then_die
api.solve([sys.argv[1]], sys.argv[2], tokenizer=sys.argv[3], radius=1, overwrite=True)
"""


def test_a_killed_overwrite_leaves_the_old_store_and_the_next_run_cleans_up(
        capsys, tmp_path, small, solved, tokenizer_file):
    before = snapshot(solved)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, str(small), str(solved),
                           tokenizer_file], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    temporary = Path(done.stdout.strip())
    assert temporary.parent == solved.parent and temporary.is_dir()  # built beside the store
    assert snapshot(solved) == before and ss.info(str(solved))["radius"] == 2
    # a sibling of the user's with a similar name is never ours to remove
    theirs = tmp_path / f"{solved.name}.streamsolve-overwrite-{'0' * 32}"  # our pattern
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine\n")
    code, _, err = run_cli(capsys, "solve", small, "--store", solved, "--overwrite",
                           "--tokenizer", tokenizer_file, "--radius", "1")
    assert code == 0, err
    assert ss.info(str(solved))["radius"] == 1
    assert siblings(solved) == [theirs.name] and (theirs / "notes.txt").read_text() == "mine\n"


def test_make_solve_overwrite_with_an_empty_corpus_keeps_the_store(tmp_path, solved):
    if shutil.which("make") is None:
        pytest.skip("needs make")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    cli = venv / "bin" / "streamsolve"
    cli.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m streamsolve \"$@\"\n")
    cli.chmod(0o755)
    (venv / ".installed").touch()
    time.sleep(0.01)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    before = snapshot(solved)
    done = subprocess.run(["make", "-s", "-C", str(REPO), "solve", f"VENV={venv}",
                           f"STORE={solved}", f"CORPUS={empty}", "OVERWRITE=1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "no text found" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(solved) == before and ss.info(str(solved))["tokens"] > 0


# -- the two-rename swap (file systems without RENAME_EXCHANGE) --------------------------------

def test_without_an_atomic_exchange_the_swap_renames_and_a_crash_between_is_undone(
        capsys, monkeypatch, tmp_path, small, solved, tokenizer_file):
    from streamsolve.store import replacement

    monkeypatch.setattr(replacement, "_exchange", lambda a, b: False)  # e.g. NFS
    code, _, err = run_cli(capsys, "solve", small, "--store", solved, "--overwrite",
                           "--tokenizer", tokenizer_file, "--radius", "1")
    assert code == 0, err
    assert ss.info(str(solved))["radius"] == 1 and siblings(solved) == []
    # a crash between its two renames leaves no store, the old one under the `replaced` name
    before = snapshot(solved)
    renamed = solved.parent / f"{solved.name}{replacement.REPLACED}{'a' * 32}"
    solved.rename(renamed)
    code, _, err = run_cli(capsys, "count", tmp_path / "missing.txt", "--store", solved)
    assert code == 2 and "missing.txt" in err  # the next writer put the old store back first
    assert snapshot(solved) == before and siblings(solved) == []


# -- object stores (fsspec's memory file system: no rename, one object at a time) -------------

@pytest.fixture
def memory_store(small, tokenizer_file):
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/overwrite-{os.getpid()}-{time.monotonic_ns()}"
    url = f"memory://{root}/m.zarr"
    ss.solve([str(small)], url, tokenizer=tokenizer_file, radius=2, heldout_fraction=0.2)
    yield fs, root, url
    fs.rm(root, recursive=True)


def objects(fs, root: str) -> dict:
    """Every object under ``root``: path -> bytes."""
    return {path[len(root):]: fs.cat_file(path) for path in sorted(fs.find(root))}


def test_object_store_overwrite_keeps_the_old_store_on_failure_and_replaces_on_success(
        capsys, tmp_path, memory_store, documents, tokenizer_file):
    fs, root, url = memory_store
    before = objects(fs, root)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    code, _, err = run_cli(capsys, "solve", empty, "--store", url, "--overwrite",
                           "--tokenizer", tokenizer_file)
    assert code == 2 and "no text found" in err
    assert objects(fs, root) == before  # nothing beside it either
    other = write_text(tmp_path / "other.txt", "\n\n".join(documents[20:36]) + "\n")
    code, _, err = run_cli(capsys, "solve", other, "--store", url, "--overwrite",
                           "--tokenizer", tokenizer_file, "--radius", "1")
    assert code == 0, err
    assert ss.info(url)["shard_list"] == [str(other)] and ss.info(url)["radius"] == 1
    assert sorted(fs.ls(root, detail=False)) == [f"{root}/m.zarr"]


def test_object_store_swap_killed_midway_is_completed_by_the_next_writer(
        capsys, monkeypatch, tmp_path, memory_store, documents, tokenizer_file):
    from fsspec.implementations.memory import MemoryFileSystem

    fs, root, url = memory_store
    other = write_text(tmp_path / "other.txt", "\n\n".join(documents[20:36]) + "\n")
    real_copy, copies = MemoryFileSystem.cp_file, []

    def copy_then_die(self, path1, path2, **kwargs):
        if len(copies) == 5:  # the old store is gone, the new one half copied
            raise KeyboardInterrupt
        copies.append(path2)
        return real_copy(self, path1, path2, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "cp_file", copy_then_die)
    code, _, err = run_cli(capsys, "solve", other, "--store", url, "--overwrite",
                           "--tokenizer", tokenizer_file, "--radius", "1")
    monkeypatch.undo()
    assert code == 130 and len(copies) == 5
    assert not fs.exists(f"{root}/m.zarr/zarr.json")  # not a store: never a mix of two
    [committed] = [p for p in fs.ls(root, detail=False) if p.endswith(".commit")]
    code, _, err = run_cli(capsys, "count", tmp_path / "missing.txt", "--store", url)
    assert code == 2 and "missing.txt" in err
    assert ss.info(url)["shard_list"] == [str(other)] and ss.info(url)["radius"] == 1
    assert sorted(fs.ls(root, detail=False)) == [f"{root}/m.zarr"]
