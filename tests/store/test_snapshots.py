"""Snapshot reads and all-or-nothing finalize (issue 12, items 4 and 5).

A reader resolves the counts generation and the weights version once and reads only those;
a commit retires what it replaces and deletes it only after the grace period. A finalize
(with its calibration) becomes the store's weights in one attribute write at the end, so a
mistyped calibration path or a kill leaves the previous (calibrated) weights in place.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streamsolve import LanguageModel, api
from streamsolve.cli import main
from streamsolve.store.layout import StoreCorruptError, StoreError
from streamsolve.store.model_store import ModelStore

from ..conftest import time_limit, write_text

RADIUS = 2
#: Seconds each looping reader waits between reads (threads share one GIL with the writer).
PAUSE = 2.0
ROWS_PER_BLOCK = 100


@pytest.fixture
def shards(tmp_path, documents) -> list[str]:
    folder = tmp_path / "shards"
    folder.mkdir()
    return [str(write_text(folder / f"s{i:02d}.txt", "\n\n".join(documents[i::20]) + "\n"))
            for i in range(20)]


@pytest.fixture
def heldout(tmp_path) -> str:
    from ..conftest import pydoc_documents

    return str(write_text(tmp_path / "heldout.txt", "\n\n".join(pydoc_documents()[60:80]) + "\n"))


def new_store(tmp_path, shard, tokenizer_file) -> str:
    store = str(tmp_path / "m.zarr")
    api.count([shard], store, tokenizer=tokenizer_file, radius=RADIUS,
              rows_per_block=ROWS_PER_BLOCK)
    return store


def generations_on_disk(store: str) -> set[str]:
    return {p.name for p in (Path(store) / "counts").iterdir() if p.is_dir()}


# -- snapshots and retirement --------------------------------------------------------------

def test_snapshot_keeps_reading_its_generation_after_a_commit(tmp_path, shards, tokenizer_file):
    store = new_store(tmp_path, shards[0], tokenizer_file)
    before = ModelStore(store).read_counts()
    snapshot = ModelStore(store).snapshot()
    api.count([shards[1]], store)
    assert snapshot.read_counts().equal_counts(before), "a snapshot reads only its generation"
    assert ModelStore(store).read_counts().tokens > before.tokens
    retired = ModelStore(store).meta["retired"]
    assert list(retired) == ["counts/g1"] and generations_on_disk(store) == {"g1", "g2"}


def test_retired_data_is_deleted_only_after_the_grace_period(tmp_path, shards, tokenizer_file,
                                                             monkeypatch):
    store = new_store(tmp_path, shards[0], tokenizer_file)
    api.finalize(store)
    first_weights = ModelStore(store).meta["weights"]["id"]
    api.count([shards[1]], store)
    api.finalize(store)
    assert generations_on_disk(store) == {"g1", "g2"}
    assert (Path(store) / "weights" / f"v{first_weights}").is_dir()
    monkeypatch.setenv("STREAMSOLVE_RETIRE_SECONDS", "1")
    time.sleep(1.2)
    api.count([shards[2]], store)  # retires g2; g1 (retired > 1 s ago) is deleted now
    assert generations_on_disk(store) == {"g2", "g3"}
    assert not (Path(store) / "weights" / f"v{first_weights}").exists()
    assert set(ModelStore(store).meta["retired"]) == {"counts/g2"}
    monkeypatch.setenv("STREAMSOLVE_RETIRE_SECONDS", "0")  # no grace: deleted at once
    api.count([shards[3]], store)
    assert generations_on_disk(store) == {"g4"} and ModelStore(store).meta["retired"] == {}
    monkeypatch.setenv("STREAMSOLVE_RETIRE_SECONDS", "-1")
    with pytest.raises(ValueError, match="STREAMSOLVE_RETIRE_SECONDS"):
        api.count([shards[4]], store)


def test_reader_outliving_the_grace_period_is_told_to_run_again(tmp_path, shards, tokenizer_file,
                                                                 monkeypatch):
    store = new_store(tmp_path, shards[0], tokenizer_file)
    snapshot = ModelStore(store).snapshot()
    monkeypatch.setenv("STREAMSOLVE_RETIRE_SECONDS", "0")
    api.count([shards[1]], store)  # g1 is retired and, with no grace, deleted at once
    with pytest.raises(StoreError, match="removed while this reader still used it.*run the "
                                         "command again") as caught:
        snapshot.read_counts()
    assert not isinstance(caught.value, StoreCorruptError), "not damage: the store is fine"
    assert api.verify(store)["ok"]


@pytest.mark.slow
def test_looping_readers_see_one_consistent_state_during_commits_and_finalizes(
        tmp_path, shards, heldout, tokenizer_file, monkeypatch):
    """20 readers (eval, export, info) loop while 20 counts and 20 finalizes commit; every
    read sees exactly one state (export: pair counts that sum to its own unigram; eval: the
    exact cross-entropy of the weights version it resolved) and none fails. The grace period
    is short, so retired data is deleted while the readers run."""
    # readers must finish within the grace period: 8 s on a quiet machine, more on a busy one
    monkeypatch.setenv("STREAMSOLVE_RETIRE_SECONDS", f"{time_limit(8):.1f}")
    store = new_store(tmp_path, shards[0], tokenizer_file)
    api.finalize(store)
    eval_ids = None
    reference: dict[str, float] = {}
    tokens_committed = {ModelStore(store).meta["counts"]["tokens"]}

    def cross_entropy(snapshot) -> tuple[str, float]:
        nonlocal eval_ids
        model = LanguageModel.open(snapshot, allow_stale=True)
        if eval_ids is None:  # a few documents: enough to tell any two weights apart
            eval_ids = api.read_documents([heldout], model)[0][:3]
        return snapshot.meta["weights"]["id"], model.evaluate_ids(eval_ids).cross_entropy

    def record_reference():
        weights_id, ce = cross_entropy(ModelStore(store).snapshot())
        reference[weights_id] = ce

    record_reference()
    done = threading.Event()
    seen, failures = [], []

    def eval_read(n):
        seen.append(("eval", *cross_entropy(ModelStore(store).snapshot())))

    def export_read(n):
        out = str(tmp_path / f"export{n}.npz")
        api.export_counts(store, out, force=True)  # each reader rewrites its own file
        with np.load(out) as arrays:
            unigram = arrays["unigram"]
            sums = [arrays[f"counts_{r}"].sum(axis=0) for r in range(1, RADIUS + 1)]
        seen.append(("export", int(unigram.sum()), all(np.array_equal(s, unigram) for s in sums)))

    def info_read(n):
        summary = api.info(store)
        seen.append(("info", summary["tokens"], summary["weights"]["id"]))

    def looping(n, read):
        def run():
            done.wait(PAUSE * n / 20)  # staggered starts
            try:
                while not done.wait(PAUSE):
                    read(n)
            except BaseException as exc:  # noqa: BLE001 - any failure of a reader is the finding
                failures.append(repr(exc))
        return threading.Thread(target=run, daemon=True)

    readers = [looping(n, [eval_read, export_read, eval_read, export_read, info_read][n % 5])
               for n in range(20)]
    for reader in readers:
        reader.start()
    try:
        for i in range(1, 20):
            api.count([shards[i]], store)
            tokens_committed.add(ModelStore(store).meta["counts"]["tokens"])
            api.finalize(store, mu=[50.0, 400.0, 1000.0][i % 3])
            record_reference()
        api.finalize(store, mu=7.0)  # the 20th finalize
        record_reference()
    finally:
        done.set()
        for reader in readers:
            reader.join(timeout=time_limit(120))
    assert not [reader for reader in readers if reader.is_alive()], "a reader hung"
    assert not failures, failures[:3]
    print(f"{len(seen)} reads during 20 commits and 20 finalizes")
    kinds = {kind for kind, *_ in seen}
    assert kinds == {"eval", "export", "info"}, f"every kind of reader ran: {len(seen)} reads"
    for kind, *values in seen:
        if kind == "eval":
            weights_id, ce = values
            assert ce == pytest.approx(reference[weights_id], rel=1e-12, abs=0), weights_id
        elif kind == "export":
            tokens, consistent = values
            assert consistent and tokens in tokens_committed
        else:
            tokens, weights_id = values
            assert tokens in tokens_committed and weights_id in reference
    assert len(generations_on_disk(store)) < 20, "retired generations were deleted meanwhile"


# -- all-or-nothing finalize -----------------------------------------------------------------

def cli_json(capsys, *argv) -> tuple[int, dict | None]:
    code = main([*argv, "--json", "-q"])
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else None)


@pytest.fixture
def calibrated_store(tmp_path, shards, heldout, tokenizer_file, capsys) -> dict:
    store = new_store(tmp_path, shards[0], tokenizer_file)
    api.count(shards[1:10], store)
    code, _ = cli_json(capsys, "finalize", store, "--calibrate", heldout)
    assert code == 0
    weights = cli_json(capsys, "info", store)[1]["weights"]
    assert weights["calibration"] is not None
    ce = cli_json(capsys, "eval", store, heldout)[1]["cross_entropy"]
    return {"store": store, "weights": weights, "cross_entropy": ce}


def test_mistyped_calibration_path_keeps_the_calibrated_weights(calibrated_store, heldout,
                                                                 tmp_path, capsys):
    store = calibrated_store["store"]
    code = main(["finalize", store, "--mu", "50", "--calibrate", str(tmp_path / "nope.txt"), "-q"])
    assert code == 2
    assert "nope.txt" in capsys.readouterr().err
    assert cli_json(capsys, "info", store)[1]["weights"] == calibrated_store["weights"]
    assert cli_json(capsys, "eval", store, heldout)[1]["cross_entropy"] == \
        calibrated_store["cross_entropy"]


def test_empty_calibration_text_keeps_the_calibrated_weights(calibrated_store, tmp_path, capsys):
    store = calibrated_store["store"]
    empty = write_text(tmp_path / "empty.txt", "")
    assert main(["finalize", store, "--mu", "50", "--calibrate", str(empty), "-q"]) == 2
    capsys.readouterr()
    assert cli_json(capsys, "info", store)[1]["weights"] == calibrated_store["weights"]


def complete_weight_blocks(store: str) -> int:
    count = 0
    for meta_file in (Path(store) / "weights" / "blocks").glob("*/zarr.json"):
        try:
            count += bool(json.loads(meta_file.read_text())["attributes"].get("complete"))
        except (OSError, ValueError):
            pass  # being written
    return count


@pytest.mark.slow
def test_sigkill_during_calibration_keeps_the_first_weights(calibrated_store, heldout, tmp_path,
                                                           capsys):
    """Kill a second ``finalize --calibrate`` once its weight blocks are written (it is then
    reading and fitting the calibration text): the first calibrated weights stay current."""
    store = calibrated_store["store"]
    big = write_text(tmp_path / "big.txt", Path(heldout).read_text() * 12)
    before = complete_weight_blocks(store)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "streamsolve", "finalize", store, "--mu", "50",
                             "--calibrate", str(big), "-q"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + time_limit(120)
        while complete_weight_blocks(store) < 2 * before and time.monotonic() < deadline:
            assert proc.poll() is None, "finalize ended before its weight blocks were seen"
            time.sleep(0.02)
        time.sleep(0.5)  # well into reading / fitting the calibration text
        assert proc.poll() is None, "calibration ended before the kill: make big.txt bigger"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert cli_json(capsys, "info", store)[1]["weights"] == calibrated_store["weights"]
    assert cli_json(capsys, "eval", store, heldout)[1]["cross_entropy"] == \
        calibrated_store["cross_entropy"]
