"""Issue 21 items 6 and 7's neighbours, issue 26: the ``streamsolve`` process as a shell sees
it. Output into a pipe whose reader is gone ends quietly with exit 0 (``| head``); Ctrl-C at
any moment of start-up ends with one line and exit 130, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import streamsolve as ss

from .conftest import write_text
from .deploy_helpers import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
CLI = [sys.executable, "-m", "streamsolve"]


@pytest.fixture(scope="module")
def solved(tmp_path_factory, documents, tokenizer_file) -> tuple[str, str]:
    """``(store, text)``: a small solved store and a text of about 20k tokens to score."""
    root = tmp_path_factory.mktemp("pipes")
    corpus = write_text(root / "corpus.txt", "\n\n".join(documents[:20]) + "\n")
    store = str(root / "m.zarr")
    ss.solve([str(corpus)], store, tokenizer=tokenizer_file, radius=2, heldout_fraction=0.2)
    text = write_text(root / "text.txt", "\n\n".join(documents[:40]) + "\n")
    return store, str(text)


def into_closed_pipe(args: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI with stdout a pipe whose reader has already gone: every write fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([*CLI, *args], stdout=write, stderr=subprocess.PIPE, text=True,
                              env=ENV, timeout=300)
    finally:
        os.close(write)


def into_head(args: list[str]) -> tuple[int, str, str]:
    """``streamsolve ARGS | head -1``: (streamsolve's exit status, head's output, its stderr)."""
    producer = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=ENV)
    head = subprocess.run(["head", "-1"], stdin=producer.stdout, capture_output=True,
                          text=True, timeout=300)
    producer.stdout.close()
    err = producer.stderr.read()
    return producer.wait(timeout=300), head.stdout, err


def test_score_per_token_into_head_exits_quietly(solved):
    store, text = solved
    code, first, err = into_head(["score", store, text, "--per-token", "-q"])
    assert first.startswith('{"document": 0') and err == "" and code == 0


@pytest.mark.parametrize("command", ["score", "info", "info-json", "export", "generate",
                                     "eval"])
def test_every_command_writing_stdout_exits_quietly_when_it_is_closed(solved, tmp_path,
                                                                      command):
    store, text = solved
    args = {"score": ["score", store, text],
            "info": ["info", store],
            "info-json": ["info", store, "--json"],
            "export": ["export", store, str(tmp_path / "w.npz"), "--weights"],
            "generate": ["generate", store, "The ", "--tokens", "5"],
            "eval": ["eval", store, text]}[command]
    done = into_closed_pipe([*args, "-q"])
    assert done.stderr == "" and done.returncode == 0, done.stderr


def test_a_broken_pipe_elsewhere_is_not_taken_for_a_closed_stdout(tmp_path):
    """Only a closed stdout is quiet: stdout to a file, an EPIPE of another pipe stays an
    error (the process does not pretend success)."""
    code = ("import sys\nfrom streamsolve.cli_process import run_guarded\n"
            "def body(command):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "sys.exit(run_guarded(body))\n")
    with open(tmp_path / "out.txt", "w") as out:
        done = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE,
                              text=True, env=ENV, timeout=60)
    assert done.returncode == 1 and "BrokenPipeError" in done.stderr


def test_loading_the_command_line_imports_nothing_before_main():
    """Everything heavy (Dask, Zarr, NumPy...) is imported inside `main`, where Ctrl-C is
    handled: loading the entry module adds only itself and its package."""
    code = ("import sys\nbefore = set(sys.modules)\nimport streamsolve.cli\n"
            "print(' '.join(sorted(set(sys.modules) - before)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=ENV, timeout=120, cwd=REPO)
    assert done.stdout.split() == ["streamsolve", "streamsolve.cli"], done.stdout[:500]


#: The console script ``streamsolve`` (``from streamsolve.cli import main; sys.exit(main())``)
#: with a mark on stderr just before ``main`` starts: Ctrl-C is handled from there on. Before
#: it, the interpreter starts (its ``site`` imports) and finds ``streamsolve.cli``, which
#: imports nothing but ``os`` and ``sys``: a SIGINT in those first tens of milliseconds is the
#: interpreter's to report, before any streamsolve code runs.
LAUNCHER = ("import sys\nfrom streamsolve.cli import main\n"
            "print('started', file=sys.stderr, flush=True)\nsys.exit(main())\n")


def start(args: list[str]) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    assert process.stderr.readline() == "started\n"
    return process


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0])
def test_ctrl_c_at_any_moment_of_start_up_is_one_line(solved, delay):
    store, text = solved
    process = start(["eval", store, text])
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert "Traceback" not in err, err
    if process.returncode == 0:  # finished before the signal came
        return
    lines = err.strip().splitlines()
    assert process.returncode == 130, (process.returncode, err)
    assert lines[-1] == "streamsolve eval: interrupted" or lines == ["streamsolve: interrupted"]


def test_sigterm_during_start_up_is_one_line(solved):
    store, text = solved
    process = start(["eval", store, text])
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert "Traceback" not in err and process.returncode == 143, err
    assert err.strip().splitlines()[-1] in ("streamsolve eval: terminated",
                                            "streamsolve: terminated")
