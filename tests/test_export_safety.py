"""Issue 21 item 2 and issue 26: `export` never replaces a file unless ``--force``, and writes
through a temporary file renamed into place, so a write error or a damaged store leaves the
previous output intact and no partial output behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streamsolve as ss
from streamsolve.cli import main
from streamsolve.export import read_export

from .conftest import write_text
from .deploy_helpers import REPO
from .store.test_integrity import counts_block, damage

pytest.importorskip("safetensors")

KINDS = {"weights": ("w.safetensors", ["--weights"]),
         "weights-npz": ("w.npz", ["--weights"]),
         "counts": ("c.npz", ["--counts"]),
         "tokenizer": ("t.json", None)}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, documents, tokenizer_file) -> Path:
    """A radius-2 store of real text, solved (counted, finalized, calibrated)."""
    root = tmp_path_factory.mktemp("export-safety")
    corpus = write_text(root / "corpus.txt", "\n\n".join(documents[:20]) + "\n")
    ss.solve([str(corpus)], str(root / "m.zarr"), tokenizer=tokenizer_file, radius=2,
             heldout_fraction=0.2)
    return root / "m.zarr"


@pytest.fixture
def store(tmp_path, pristine) -> str:
    """A copy of the pristine store for each test (some damage theirs)."""
    shutil.copytree(pristine, tmp_path / "m.zarr")
    return str(tmp_path / "m.zarr")


def export_args(store: str, kind: str, out: Path) -> list[str]:
    _, flags = KINDS[kind]
    return [store, "--tokenizer", str(out)] if flags is None else [store, str(out), *flags]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args), "-q"])
    out, err = capsys.readouterr()
    return code, out, err


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("kind", KINDS)
def test_export_never_replaces_an_existing_file_unless_forced(capsys, tmp_path, store, kind):
    out = tmp_path / "out" / KINDS[kind][0]
    out.parent.mkdir()
    out.write_text("my notes\n")
    code, _, err = run_cli(capsys, "export", *export_args(store, kind, out))
    assert code == 2 and err.count("\n") == 1 and str(out) in err and "--force" in err, err
    assert out.read_text() == "my notes\n" and listing(out.parent) == [out.name]
    code, _, err = run_cli(capsys, "export", *export_args(store, kind, out), "--force")
    assert code == 0, err
    assert listing(out.parent) == [out.name]  # no temporary file left beside it
    if kind == "tokenizer":
        assert out.read_text(encoding="utf-8").startswith("{")
    elif kind == "counts":
        with np.load(out) as arrays:
            assert "unigram" in arrays.files
    else:
        assert read_export(str(out))[1]["layout"] == "sparse-rank-one"


def test_a_refused_second_output_writes_neither(capsys, tmp_path, store):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    weights = tmp_path / "w.safetensors"
    code, _, err = run_cli(capsys, "export", store, weights, "--weights", "--tokenizer", notes)
    assert code == 2 and "notes.txt" in err and err.count("\n") == 1
    assert not weights.exists() and notes.read_text() == "mine\n"


def test_a_damaged_store_leaves_no_output_and_the_previous_one_intact(capsys, tmp_path, store):
    out = tmp_path / "out" / "c.npz"
    out.parent.mkdir()
    assert run_cli(capsys, "export", store, out, "--counts")[0] == 0
    good = out.read_bytes()
    damage(store, counts_block(store, r=2, k=0), "flip")  # unigram and counts_1 are written first
    code, _, err = run_cli(capsys, "export", store, out, "--counts", "--force")
    assert code == 2 and err.count("\n") == 1 and "r2" in err, err
    assert out.read_bytes() == good and listing(out.parent) == ["c.npz"]
    fresh = tmp_path / "out" / "fresh.npz"
    code, _, err = run_cli(capsys, "export", store, fresh, "--counts")
    assert code == 2 and not fresh.exists() and listing(out.parent) == ["c.npz"]


WRITE_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from streamsolve.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("kind", ["weights", "counts", "tokenizer"])
def test_a_write_error_keeps_the_previous_output(capsys, tmp_path, store, kind):
    out = tmp_path / "out" / KINDS[kind][0]
    out.parent.mkdir()
    assert run_cli(capsys, "export", *export_args(store, kind, out))[0] == 0
    good = out.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", WRITE_LIMITED, str(len(good) // 2), "export",
                           *export_args(store, kind, out), "--force", "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "cannot write" in done.stderr and str(out) in done.stderr
    assert out.read_bytes() == good and listing(out.parent) == [out.name]


def test_stdout_and_the_same_file_twice_are_refused(capsys, tmp_path, store):
    code, _, err = run_cli(capsys, "export", store, "-", "--weights")
    assert code == 2 and "- is not stdout" in err and not (tmp_path / "-").exists()
    twice = tmp_path / "w.json"
    code, _, err = run_cli(capsys, "export", store, twice, "--weights", "--tokenizer", twice)
    assert code == 2 and "given twice" in err and not twice.exists()
