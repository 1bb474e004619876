"""Run a streamsolve command against real write limits, in a child process.

- `run_with_file_size_limit`: ``RLIMIT_FSIZE`` (``ulimit -f``) with SIGXFSZ ignored, so a
  write past the limit fails with ``EFBIG``.
- `run_on_full_disk`: the store copied onto a small tmpfs mounted in a private mount namespace
  (``unshare -rm``), filled up to leave a few bytes free, so writes fail with ``ENOSPC``.
  The tmpfs disappears with the namespace, so the child also records the store's files
  before and after the command and runs ``verify`` there. Skipped where user namespaces or
  tmpfs mounts are not allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import streamsolve

WORKTREE = str(Path(streamsolve.__file__).resolve().parents[1])


def tree(path: Path) -> dict:
    """Every file under ``path`` with the hash of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": WORKTREE}


def run_with_file_size_limit(argv: list, limit: int) -> subprocess.CompletedProcess:
    """``streamsolve ARGV`` with every file it writes limited to ``limit`` bytes."""
    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "streamsolve", *map(str, argv)],
                          capture_output=True, text=True, env=_env(), preexec_fn=limit_files,
                          timeout=600)


_DRIVER = r"""
import hashlib, json, os, shutil, subprocess, sys
from pathlib import Path
spec = json.loads(sys.argv[1])
mount = Path(spec["mount"])
store = mount / "m.zarr"
shutil.copytree(spec["store"], store)

def tree():
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}

def streamsolve(*argv):
    return subprocess.run([sys.executable, "-m", "streamsolve", *argv], capture_output=True,
                          text=True)

before = tree()
stat = os.statvfs(mount)
filler = mount / "filler"
with open(filler, "wb") as handle:
    handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - spec["free"]))
argv = [str(store) if a == "{store}" else a for a in spec["argv"]]
proc = streamsolve(*argv)
filler.unlink()
after = tree()
verify = streamsolve("verify", str(store), "--json", "-q")
again = streamsolve(*argv) if spec["again"] else None
print(json.dumps({"returncode": proc.returncode, "stderr": proc.stderr,
                  "before": before, "after": after, "leftovers": sorted(os.listdir(mount)),
                  "verify": json.loads(verify.stdout) if verify.stdout else verify.stderr,
                  "again": again and [again.returncode, again.stderr]}))
"""


def run_on_full_disk(store: Path, argv: list, free: int, tmp_path: Path,
                     size: str = "16m", again: bool = True) -> dict:
    """``streamsolve ARGV`` ("{store}" for the store) on a copy of ``store`` on a tmpfs of
    ``size`` with ``free`` bytes left; with ``again``, the same command with space freed.

    Returns
    -------
    dict
        ``returncode``, ``stderr``, ``before`` / ``after`` (the store's files and hashes),
        ``leftovers`` (the tmpfs' entries afterwards), ``verify`` (its JSON report) and
        ``again`` (return code and stderr of the second run).
    """
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    spec = {"mount": str(mount), "store": str(store), "free": free,
            "argv": [str(a) for a in argv], "again": again}
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; shift 2; exec "$@"'
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", size, str(mount),
                           sys.executable, "-c", _DRIVER, json.dumps(spec)],
                          capture_output=True, text=True, env=_env(), timeout=900)
    if proc.returncode in (1, 99) and not proc.stdout:
        pytest.skip(f"cannot mount a tmpfs in a private namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
