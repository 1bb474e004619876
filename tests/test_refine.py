"""``streamsolve refine``: backpropagation from the explicit weights, early stopping that never
writes worse-than-start weights, the refined weights version (provenance, a fresh process,
eval / score / generate / info / verify), ``finalize`` afterwards, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from streamsolve.cli import main
from streamsolve.core.dense_lm import RefinedWeights
from streamsolve.language_model import LanguageModel
from streamsolve.store.model_store import ModelStore

from .conftest import write_shards, write_text

torch = pytest.importorskip("torch")
refine = pytest.importorskip("streamsolve.refine")


@pytest.fixture
def store(tmp_path, documents, tokenizer_file):
    """A radius-2 store of real text (V = 400), finalized, and its train / held-out files."""
    shards = write_shards(tmp_path / "corpus", 2, "", documents[3:20])
    path = str(tmp_path / "m.zarr")
    assert main(["count", *map(str, shards), "--store", path, "--tokenizer", tokenizer_file,
                 "--radius", "2", "-q"]) == 0
    assert main(["finalize", path, "-q"]) == 0
    heldout = write_text(tmp_path / "held.txt", "\n\n".join(documents[:3]) + "\n")
    return path, [str(s) for s in shards], str(heldout)


def cli(capsys, *args):
    try:
        code = main([*map(str, args), "--json"])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 and out.strip()
                  else None), err


def heldout_positions(path, heldout):
    model = LanguageModel.open(path)
    meta = ModelStore(path).meta.get("read_options", {})
    pairs = list(refine.text_positions([heldout], model, meta))
    return (torch.from_numpy(np.concatenate([c for c, _ in pairs])),
            torch.from_numpy(np.concatenate([t for _, t in pairs])))


def test_fit_keeps_the_best_state_and_never_ends_worse(store):
    path, shards, heldout = store
    held = heldout_positions(path, heldout)
    module = refine.initial_module(LanguageModel.open(path).weights, "explicit")
    start = refine.heldout_cross_entropy(module, held)
    # a learning rate far too large: every step makes held-out CE worse
    batches = refine.position_batches(
        lambda: iter([(held[0].numpy(), held[1].numpy())]), 64, epochs=None)
    result = refine.fit(module, batches, held, lr=5.0, max_steps=6, eval_every=2, patience=10)
    assert result.start_ce == pytest.approx(start, abs=1e-12)
    assert result.best_ce <= result.start_ce
    assert [point[0] for point in result.curve] == [0, 2, 4, 6]
    assert refine.heldout_cross_entropy(module, held) == pytest.approx(result.best_ce, abs=1e-9)
    assert result.best_step == 0 or result.best_ce < result.start_ce


def test_refine_writes_a_version_eval_equals_the_module(store, capsys):
    path, shards, heldout = store
    before = ModelStore(path).meta["weights"]["id"]
    code, result, err = cli(capsys, "refine", path, *shards, "--heldout", heldout,
                            "--steps", "30", "--eval-every", "10", "--batch", "128",
                            "--lr", "0.01", "-q")
    assert code == 0, err
    assert result["best_ce"] <= result["start_ce"]
    meta = ModelStore(path).meta
    weights = meta["weights"]
    assert weights["kind"] == "refined" and weights["id"] == result["weights_id"] != before
    provenance = weights["refined"]
    for key, value in (("init", "explicit"), ("optimizer", "adam"), ("lr", 0.01),
                       ("weight_decay", 0.0), ("from_weights", before), ("device", "cpu")):
        assert provenance[key] == value
    assert provenance["steps"] <= 30 and provenance["tokens"] > 0
    assert provenance["curve"][0][0] == 0 and len(provenance["curve"]) >= 2
    assert meta["history"][-1]["event"] == "refined"
    # eval of the stored version == the best held-out CE the fit measured (float32 tables)
    code, evaluated, err = cli(capsys, "eval", path, heldout)
    assert code == 0, err
    assert evaluated["cross_entropy"] == pytest.approx(result["best_ce"], abs=2e-5)
    assert evaluated["cross_entropy"] <= result["start_ce"] + 2e-5
    # ... and == the module rebuilt from the stored arrays, computed directly in torch
    model = LanguageModel.open(path)
    assert isinstance(model.weights, RefinedWeights)
    held = heldout_positions(path, heldout)
    logits = torch.as_tensor(model.weights.logits(held[0].numpy()))
    direct = float(torch.nn.functional.cross_entropy(logits, held[1]))
    assert evaluated["cross_entropy"] == pytest.approx(direct, abs=1e-9)
    # score, generate, info, verify use / show it
    code, _, err = cli(capsys, "score", path, heldout)
    assert code == 0, err
    assert main(["generate", path, "The", "--tokens", "5", "--json"]) == 0
    capsys.readouterr()
    code, info, _ = cli(capsys, "info", path)
    assert info["weights"]["kind"] == "refined" and info["weights"]["refined"]["init"] == "explicit"
    code, verified, _ = cli(capsys, "verify", path)
    assert code == 0 and verified["ok"] and verified["weights_id"] == result["weights_id"]


def test_refined_version_read_by_a_fresh_process_and_finalize_restores(store, capsys):
    path, shards, heldout = store
    code, result, err = cli(capsys, "refine", path, *shards, "--heldout", heldout,
                            "--steps", "10", "--eval-every", "5", "--init", "zeros",
                            "--lr", "0.05", "-q")
    assert code == 0, err
    assert result["start_ce"] == pytest.approx(np.log(400), abs=1e-6)  # zeros: uniform
    script = ("import json, sys\nfrom streamsolve.language_model import LanguageModel\n"
              "from streamsolve.store.model_store import ModelStore\n"
              "m = LanguageModel.open(sys.argv[1])\n"
              "print(json.dumps({'kind': type(m.weights).__name__, "
              "'provenance': ModelStore(sys.argv[1]).meta['weights']['refined']}))")
    done = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    fresh = json.loads(done.stdout)
    assert fresh["kind"] == "RefinedWeights" and fresh["provenance"]["init"] == "zeros"
    assert fresh["provenance"]["steps"] == result["steps"]
    assert main(["finalize", path, "-q"]) == 0
    weights = ModelStore(path).meta["weights"]
    assert weights.get("kind") is None and weights["blocks"]
    assert type(LanguageModel.open(path).weights).__name__ == "ExplicitWeights"


def test_factored_refine(store, capsys):
    path, shards, heldout = store
    code, result, err = cli(capsys, "refine", path, *shards, "--heldout", heldout,
                            "--steps", "6", "--eval-every", "3", "--rank", "8", "-q")
    assert code == 0, err
    weights = ModelStore(path).meta["weights"]
    assert weights["layout"] == "factored" and weights["rank"] == 8
    code, evaluated, err = cli(capsys, "eval", path, heldout)
    assert evaluated["cross_entropy"] == pytest.approx(result["best_ce"], abs=2e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_one_line(store, capsys):
    path, shards, heldout = store
    code, _, err = cli(capsys, "refine", path, *shards, "--heldout", heldout,
                       "--device", "cuda")
    assert code == 2 and err.count("\n") == 1 and "CUDA is not available" in err


def test_bad_inputs_are_one_line(store, tmp_path, capsys):
    path, shards, heldout = store
    empty = write_text(tmp_path / "empty.txt", "\n")
    weights_before = ModelStore(path).meta["weights"]["id"]
    cases = [
        (["--heldout", str(empty)], "no tokens"),
        (["--heldout", str(tmp_path / "missing.txt")], "missing.txt"),
        (["--heldout", heldout, "--steps", "3", "--rank", "0"], "--rank"),
        (["--heldout", heldout, "--device", "tpu-ish"], "unknown device"),
    ]
    for extra, needle in cases:
        code, _, err = cli(capsys, "refine", path, *shards, *extra)
        assert code == 2 and err.count("\n") == 1 and needle in err, (extra, err)
    # dense over the memory budget names --rank
    import streamsolve.torch as bridge

    original = bridge.default_max_bytes
    bridge.default_max_bytes = lambda: 1000
    try:
        code, _, err = cli(capsys, "refine", path, *shards, "--heldout", heldout)
    finally:
        bridge.default_max_bytes = original
    assert code == 2 and err.count("\n") == 1 and "--rank d" in err
    assert ModelStore(path).meta["weights"]["id"] == weights_before


def test_missing_torch_is_one_line(store):
    path, shards, heldout = store
    script = ("import sys\nsys.modules['torch'] = None\n"
              "from streamsolve.cli import main\n"
              f"sys.exit(main(['refine', {path!r}, {shards[0]!r}, '--heldout', {heldout!r}]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "pip install 'streamsolve[torch]'" in done.stderr


def test_diverging_refine_writes_the_start_weights(store, capsys):
    path, shards, heldout = store
    code, start, _ = cli(capsys, "eval", path, heldout)
    code, result, err = cli(capsys, "refine", path, *shards, "--heldout", heldout,
                            "--steps", "4", "--eval-every", "1", "--lr", "50", "-q")
    assert code == 0, err
    assert result["start_ce"] == pytest.approx(start["cross_entropy"], abs=2e-5)
    assert result["best_ce"] <= result["start_ce"]
    assert all(ce > result["start_ce"] for _, _, _, ce in result["curve"][1:])
    assert result["best_step"] == 0
    code, after, _ = cli(capsys, "eval", path, heldout)
    assert after["cross_entropy"] <= start["cross_entropy"] + 2e-5


def test_export_of_refined_weights_round_trips(store, tmp_path, capsys):
    from streamsolve.export import read_export

    path, shards, heldout = store
    code, _, err = cli(capsys, "refine", path, *shards, "--heldout", heldout, "--steps", "3",
                       "--eval-every", "3", "-q")
    assert code == 0, err
    out = tmp_path / "refined.safetensors"
    code, result, err = cli(capsys, "export", path, out, "--weights")
    assert code == 0, err
    assert result["layout"] == "refined-dense"
    arrays, metadata = read_export(str(out))
    weights = LanguageModel.open(path).weights
    np.testing.assert_array_equal(arrays["table0"], weights.tables[0])
    assert metadata["params"]["refined"]["steps"] == 3
    code, _, err = cli(capsys, "export", path, out, "--weights", "--rank", "4")
    assert code == 2 and err.count("\n") == 1 and "refined" in err


def _random_positions(n, V=29, R=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, size=(n, R)), rng.integers(0, V, size=n)


def test_position_batches_emit_every_position_once_per_epoch():
    ctx, tgt = _random_positions(1000)
    chunks = [(ctx[i:i + 70], tgt[i:i + 70]) for i in range(0, 1000, 70)]
    batches = list(refine.position_batches(lambda: iter(chunks), 64, epochs=2,
                                           shuffle_positions=200, seed=1))
    assert all(c.shape[0] == t.shape[0] <= 64 for c, t in batches)
    assert sum(t.shape[0] for _, t in batches) == 2000
    rows = np.concatenate([np.column_stack([c.numpy(), t.numpy()]) for c, t in batches])
    expected = np.column_stack([ctx, tgt])
    for half in (rows[:1000], rows[1000:]):   # each epoch: the same multiset of positions
        np.testing.assert_array_equal(np.unique(half, axis=0, return_counts=True)[1],
                                      np.unique(expected, axis=0, return_counts=True)[1])
    assert not np.array_equal(rows[:1000], expected)   # shuffled
    with pytest.raises(ValueError, match="no tokens"):
        list(refine.position_batches(lambda: iter([]), 8))


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.05), ("sgd", 0.5), ("lbfgs", 1.0)])
def test_fit_with_each_optimizer_improves_train_fit(optimizer, lr):
    from .conftest import random_explicit_weights

    weights = random_explicit_weights(29, 2)
    module = refine.initial_module(weights, "zeros")
    ctx, tgt = _random_positions(512, seed=3)
    held = (torch.as_tensor(ctx), torch.as_tensor(tgt))
    batches = refine.position_batches(lambda: iter([(ctx, tgt)]), 512, epochs=None)
    result = refine.fit(module, batches, held, optimizer=optimizer, lr=lr, max_steps=8,
                        eval_every=4, patience=None)
    assert result.start_ce == pytest.approx(np.log(29), abs=1e-6)
    assert result.best_ce < result.start_ce - 0.05 and result.steps == 8
    assert refine.heldout_cross_entropy(module, held) == pytest.approx(result.best_ce, abs=1e-9)


def test_random_init_is_seeded():
    from .conftest import random_explicit_weights

    weights = random_explicit_weights(29, 2)
    a = refine.initial_module(weights, "random", seed=4)
    b = refine.initial_module(weights, "random", seed=4)
    c = refine.initial_module(weights, "random", seed=5)
    assert torch.equal(a.tables[0].weight, b.tables[0].weight)
    assert not torch.equal(a.tables[0].weight, c.tables[0].weight)
    assert float(a.row_offsets.abs().sum()) == 0.0


def test_training_positions_are_the_counted_positions(store):
    """The minibatches see exactly the (context, target) pairs counting counted."""
    path, shards, heldout = store
    model = LanguageModel.open(path)
    model_store = ModelStore(path)
    pairs = list(refine.text_positions(shards, model, model_store.meta["read_options"]))
    ctx = np.concatenate([c for c, _ in pairs])
    tgt = np.concatenate([t for _, t in pairs])
    V = model.vocab_size
    assert tgt.size == model_store.meta["counts"]["tokens"]
    for r in range(model.config.radius):
        dense = np.zeros((V, V), dtype=np.int64)
        np.add.at(dense, (ctx[:, r], tgt), 1)
        np.testing.assert_array_equal(dense, model_store.read_count_block(r).toarray())


def test_commit_refused_when_the_store_changed_while_training(store, monkeypatch):
    path, shards, heldout = store
    fit = refine.fit

    def fit_then_finalize(*args, **kwargs):
        result = fit(*args, **kwargs)
        assert main(["finalize", path, "-q", "--smoothing", "dirichlet"]) == 0  # a new version
        return result

    monkeypatch.setattr(refine, "fit", fit_then_finalize)
    with pytest.raises(Exception, match="changed while refining") as info:
        refine.refine_store(path, shards, [heldout], steps=2, eval_every=1)
    assert "\n" not in str(info.value)
    assert ModelStore(path).meta["weights"].get("kind") is None


def test_row_sparse_refine_records_updates_caps_heldout_and_never_writes_worse(store, capsys):
    """Default (row-sparse) refine with a diverging learning rate: the start weights are
    written; the held-out cap samples N positions; ``info`` summarises the curve."""
    path, shards, heldout = store
    code, start, _ = cli(capsys, "eval", path, heldout)
    code, result, err = cli(capsys, "refine", path, *shards, "--heldout", heldout,
                            "--steps", "3", "--eval-every", "1", "--lr", "50",
                            "--heldout-tokens", "40", "-q")
    assert code == 0, err
    assert result["updates"] == "row-sparse" and "touched rows" in result["weight_decay_mode"]
    assert result["heldout_tokens"] == 40 < result["heldout_positions"]
    assert result["best_ce"] <= result["start_ce"] and result["best_step"] == 0
    code, after, _ = cli(capsys, "eval", path, heldout)
    assert after["cross_entropy"] <= start["cross_entropy"] + 2e-5
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    refined = [line for line in out.splitlines() if line.startswith("refined ")]
    assert len(refined) == 1 and "row-sparse updates" in refined[0]
    assert f"({len(result['curve'])} points on 40 tokens)" in refined[0]
    assert f"first {result['curve'][0][3]:.5f}" in refined[0]


def test_dense_updates_flag_and_api_refine(store):
    from streamsolve import api

    path, shards, heldout = store
    result = api.refine(path, shards, heldout, steps=2, eval_every=1, updates="dense", lr=0.01)
    provenance = ModelStore(path).meta["weights"]["refined"]
    assert result["updates"] == provenance["updates"] == "dense"
    assert provenance["weight_decay_mode"] == "L2 gradient"
    assert main(["finalize", path, "-q"]) == 0
    with pytest.raises(ValueError, match="row-sparse updates need dense tables"):
        api.refine(path, shards, heldout, steps=1, rank=3, updates="row-sparse")
