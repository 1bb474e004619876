"""Crash safety: SIGKILL an ingest at random moments; the store must always open and hold
exactly the counts from before the ingest or exactly those after it, and re-running the
same command must complete the work (also breaking the dead process's lock)."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamsolve import api
from streamsolve.store.model_store import ModelStore

from ..conftest import pydoc_documents, time_limit

TRIALS = int(os.environ.get("STREAMSOLVE_CRASH_TRIALS", "20"))
#: The ingest's numbered stage banners (`streamsolve.ingest`), and the commit's log line.
STAGE = re.compile(r"=== ([1-5])/5 |(finalized block)|(committed counts generation)")
STAGE_NAMES = {"1": "configuring", "2": "hashing", "3": "counting", "4": "writing",
               "5": "committing"}


def ingest_command(store: Path, shards: list[str]) -> list[str]:
    return [sys.executable, "-m", "streamsolve", "count", *shards, "--store", str(store),
            "--workers", "2"]


def run_and_kill(command: list[str], kill_after: float,
                 stage_starts: dict[str, float] | None = None,
                 after_stage: str = "start") -> tuple[str, bool, float]:
    """Run ``command``, SIGKILL it ``kill_after`` s after stage ``after_stage`` began (its
    banner line was read; ``"start"``: the process start); return (last stage, killed,
    runtime). Anchoring the kill to the stage's banner, not to the process start, keeps it in
    that stage however long the start-up took on a busy machine.

    If ``stage_starts`` is given, it receives the time (s after start) each stage began.
    """
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    stages = ["start"]
    reached = threading.Event()  # the stage began, or the process ended before it
    if after_stage == "start":
        reached.set()

    def read():
        for line in proc.stderr:
            match = STAGE.search(line)
            if match:
                stages.append(STAGE_NAMES.get(match.group(1), "committed"))
                if stages[-1] == after_stage:
                    reached.set()
                if stage_starts is not None:
                    stage_starts.setdefault(stages[-1], time.monotonic() - started)
        reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert reached.wait(time_limit(600)), f"stage {after_stage} never began"
        proc.wait(timeout=kill_after)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    reader.join(timeout=time_limit(5))
    return stages[-1], killed, time.monotonic() - started


@pytest.mark.slow
def test_sigkill_at_random_moments_never_corrupts_the_store(tmp_path, sharded_corpus,
                                                            tokenizer_file):
    shards = sharded_corpus(8, documents=pydoc_documents())
    base_shards, new_shards = shards[:2], shards[2:]

    base = tmp_path / "base.zarr"
    api.count(base_shards, str(base), tokenizer=tokenizer_file, radius=3, rows_per_block=32)
    before = ModelStore(str(base)).read_counts()
    clean = tmp_path / "clean.zarr"
    shutil.copytree(base, clean)
    stage_starts = {"start": 0.0}
    _, killed, clean_seconds = run_and_kill(ingest_command(clean, new_shards), time_limit(600),
                                            stage_starts)
    assert not killed
    after = ModelStore(str(clean)).read_counts()
    assert after.tokens > before.tokens

    rng = random.Random(20261128)
    # each trial kills at a random moment inside one stage (as long as in the clean run,
    # counted from that stage's banner), taking the stages in turn, so every stage is hit
    # however short it is on this machine
    starts = sorted(stage_starts.items(), key=lambda item: item[1])
    ends = [seconds for _, seconds in starts[1:]] + [clean_seconds * 1.05]
    windows = [(stage, end - begin) for (stage, begin), end in zip(starts, ends) if end > begin]
    stages_hit: dict[str, int] = {}
    states = {"before": 0, "after": 0}
    failures = []
    for trial in range(TRIALS):
        store = tmp_path / f"trial{trial}.zarr"
        shutil.copytree(base, store)
        anchor, duration = windows[trial % len(windows)]
        stage, killed, _ = run_and_kill(ingest_command(store, new_shards),
                                        duration * rng.random(), after_stage=anchor)
        stages_hit[stage if killed else "finished"] = stages_hit.get(stage if killed else "finished", 0) + 1
        counts = ModelStore(str(store)).read_counts()  # the store always opens
        if counts.equal_counts(before):
            states["before"] += 1
        elif counts.equal_counts(after):
            states["after"] += 1
        else:
            failures.append((trial, stage, "counts neither before nor after"))
        _, again_killed, _ = run_and_kill(ingest_command(store, new_shards), time_limit(600))
        assert not again_killed
        if not ModelStore(str(store)).read_counts().equal_counts(after):
            failures.append((trial, stage, "re-run did not complete the work"))
        shutil.rmtree(store)
    print(f"\ncrash test: {TRIALS} trials, clean ingest {clean_seconds:.1f}s, stage at kill: "
          f"{stages_hit}, store state after kill: {states}, failures: {len(failures)}")
    assert not failures, failures
    killed_stages = set(stages_hit) - {"finished"}
    # "counting" = read + tokenize + count + tree merge; "writing" = merge with the stored
    # counts + write of the new generation; "committed" = after the atomic switch
    assert {"counting", "writing"} <= killed_stages, stages_hit
