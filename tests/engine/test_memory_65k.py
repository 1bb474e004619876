"""A 65k-token vocabulary (the tokenizer of the ``anthropic`` wheel): finalize and eval of a
small corpus stay within ``--memory`` (peak RSS of the child process, its ``VmHWM``)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import time_limit, write_text
from tests.deploy_helpers import child_env

BUDGET = 400 << 20


def anthropic_tokenizer() -> Path | None:
    spec = importlib.util.find_spec("anthropic")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.json"
    return path if path.exists() else None


def run_measured(args: list[str], timeout: float = 600) -> tuple[subprocess.CompletedProcess, int]:
    """``streamsolve ARGS`` in a child; its result and the kernel's high-water mark of its RSS
    (killed above twice the budget, or after the hang guard ``timeout``, see `time_limit`)."""
    proc = subprocess.Popen([sys.executable, "-m", "streamsolve", *map(str, args)],
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    peak, deadline = 0, time.monotonic() + time_limit(timeout)
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as status:
                fields = dict(line.split(":", 1) for line in status)
            if "VmHWM" in fields:
                peak = max(peak, int(fields["VmHWM"].split()[0]) * 1024)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        if peak > 2 * BUDGET or time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.02)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), peak


@pytest.mark.slow
def test_finalize_and_eval_of_a_65k_vocabulary_stay_within_memory(tmp_path, documents):
    tokenizer = anthropic_tokenizer()
    if tokenizer is None:
        pytest.skip("needs the anthropic wheel's tokenizer.json "
                    "(pip install --no-deps anthropic==0.37.1)")
    train = write_text(tmp_path / "train.txt", "\n\n".join(documents[::2]) + "\n")
    heldout = write_text(tmp_path / "heldout.txt", "\n\n".join(documents[1::2][:200]) + "\n")
    store = tmp_path / "m.zarr"
    done, _ = run_measured(["count", train, "--store", store, "--tokenizer", tokenizer,
                            "--radius", 3, "--json"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["new_tokens"] > 10_000
    info = subprocess.run([sys.executable, "-m", "streamsolve", "info", str(store), "--json"],
                          env=child_env(), capture_output=True, text=True, check=True)
    assert json.loads(info.stdout.splitlines()[-1])["vocab_size"] > 60_000
    done, finalize_peak = run_measured(["finalize", store, "--memory", "400MB", "--json"])
    assert done.returncode == 0, done.stderr[-3000:]
    done, eval_peak = run_measured(["eval", store, heldout, "--memory", "400MB", "--json"])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["tokens"] > 1000 and 0 < result["cross_entropy"] < 12
    assert finalize_peak < BUDGET, f"finalize peak RSS {finalize_peak / 2**20:.0f} MiB"
    print(f"peak RSS: finalize {finalize_peak / 2**20:.0f} MiB, eval {eval_peak / 2**20:.0f} MiB")
    assert eval_peak < BUDGET, f"eval peak RSS {eval_peak / 2**20:.0f} MiB"
