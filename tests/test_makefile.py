"""``make solve`` keeps an existing store unless ``OVERWRITE=1`` (issue 16).

Runs the real Makefile with a stand-in venv whose ``streamsolve`` records its arguments.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import time_limit
from .deploy_helpers import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(tmp_path, *variables):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    fake = venv / "bin" / "streamsolve"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'called'}\n")
    fake.chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: `setup` is up to date
    return subprocess.run(["make", "-s", "-C", str(REPO), "solve", f"VENV={venv}", *variables],
                          capture_output=True, text=True, timeout=time_limit(60))


def test_make_solve_keeps_an_existing_store_unless_overwrite(tmp_path):
    store = tmp_path / "out" / "model.zarr"
    called = tmp_path / "called"
    first = _make(tmp_path, f"STORE={store}")
    assert first.returncode == 0, first.stderr
    assert called.read_text().split() == ["solve", "--store", str(store)]  # no --overwrite
    store.mkdir()
    called.unlink()
    again = _make(tmp_path, f"STORE={store}")
    assert again.returncode != 0 and not called.exists()
    [line] = [ln for ln in again.stderr.splitlines() if ln.startswith("make solve:")]
    assert str(store) in line and "OVERWRITE=1" in line
    replaced = _make(tmp_path, f"STORE={store}", "OVERWRITE=1")
    assert replaced.returncode == 0, replaced.stderr
    assert called.read_text().split() == ["solve", "--store", str(store), "--overwrite"]
