"""``streamsolve train`` (issue 25): the explicit layer plus a zero-initialised residual.

Step 0 equals ``eval``; the residual's output starts at zero; early stopping never writes a
network worse than the explicit model; the safetensors network file loads back whole;
errors are one line with exit 2; a tiny end-to-end run of the command line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamsolve.cli import main

from ..conftest import write_shards, write_text

torch = pytest.importorskip("torch")
from streamsolve.network import command, files  # noqa: E402
from streamsolve.network.data import heldout_positions  # noqa: E402
from streamsolve.network.modules import build_network  # noqa: E402
from streamsolve.network.training import Limits, token_losses, train_network  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory, documents, tokenizer_file):
    """A radius-2 store of real text (V = 400), finalized and calibrated, with its training
    shards and held-out text."""
    tmp = tmp_path_factory.mktemp("train")
    shards = write_shards(tmp / "corpus", 2, "", documents[3:20])
    path = str(tmp / "m.zarr")
    calib = write_text(tmp / "calib.txt", "\n\n".join(documents[20:24]) + "\n")
    assert main(["count", *map(str, shards), "--store", path, "--tokenizer", tokenizer_file,
                 "--radius", "2", "-q"]) == 0
    assert main(["finalize", path, "--calibrate", str(calib), "-q"]) == 0
    heldout = write_text(tmp / "held.txt", "\n\n".join(documents[:3]) + "\n")
    return path, [str(s) for s in shards], str(heldout)


def cli(capsys, *args):
    try:
        code = main([*map(str, args), "--json"])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 and out.strip()
                  else None), err


def opened(store_path, heldout_path, context=4):
    options = command.Options(store=store_path, train=(heldout_path,), heldout=(heldout_path,),
                              context=context)
    o = command.open_store(options)
    held = heldout_positions([heldout_path], o.model, o.read_meta,
                             max(context, o.model.config.radius))
    return options, o, held


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_step_zero_is_the_explicit_model_and_equals_eval(store, capsys, arch):
    path, _, heldout = store
    code, evaluated, _ = cli(capsys, "eval", path, heldout)
    assert code == 0
    options, o, held = opened(path, heldout)
    assert o.model.weights.calibrated
    config = options.network_config(o.model.vocab_size, o.model.config.radius, arch=arch,
                                    width=16, hidden=32, heads=2)
    module = build_network(config, o.model.weights)
    losses = token_losses(module, held)
    assert held.targets.size == evaluated["tokens"]
    assert abs(losses.mean() - evaluated["cross_entropy"]) < 1e-6
    # per token too: the explicit scorer's log-probabilities
    assert np.allclose(losses, command.reference_losses(o.model, held), atol=1e-9)


def test_residual_output_starts_at_zero_and_trains(store):
    path, _, heldout = store
    options, o, held = opened(path, heldout)
    config = options.network_config(o.model.vocab_size, o.model.config.radius, width=16,
                                    hidden=32)
    module = build_network(config, o.model.weights)
    ctx = torch.from_numpy(held.contexts[:64])
    assert torch.count_nonzero(module.residual(ctx[:, :config.context])) == 0
    # the embeddings are the low-rank factors, not zero, and gradients reach the output
    assert module.residual.embed.weight.abs().sum() > 0
    loss = torch.nn.functional.cross_entropy(module(ctx), torch.from_numpy(held.targets[:64]))
    loss.backward()
    assert module.residual.out.weight.grad.abs().sum() > 0
    assert module.scales.grad.abs().sum() > 0
    # random init: the residual is not zero at the start
    random = build_network(options.network_config(o.model.vocab_size, o.model.config.radius,
                                                  width=16, hidden=32, init="random",
                                                  embed_init="random"), o.model.weights)
    assert torch.count_nonzero(random.residual(ctx[:, :config.context])) > 0


def test_early_stopping_keeps_the_start_when_every_step_is_worse(store):
    path, shards, heldout = store
    options, o, held = opened(path, heldout)
    config = options.network_config(o.model.vocab_size, o.model.config.radius, width=16,
                                    hidden=32)
    module = build_network(config, o.model.weights)
    from streamsolve.network.data import training_batches

    batches = training_batches(shards, o.model, o.read_meta, config.columns, 64, epochs=1)
    # a learning rate far too large: the held-out CE goes up at once
    result = train_network("hot", module, batches, held, Limits(steps=6, eval_every=2,
                                                                patience=3), lr=5.0)
    assert [p["heldout_ce"] for p in result.curve[1:]] and \
        min(p["heldout_ce"] for p in result.curve[1:]) > result.start_ce
    assert result.best_step == 0 and result.best_ce == result.start_ce
    assert abs(token_losses(module, held).mean() - result.start_ce) < 1e-9


def test_the_command_writes_nothing_when_nothing_improves(store, tmp_path, capsys):
    path, shards, heldout = store
    out = tmp_path / "nets"
    code, result, _ = cli(capsys, "train", path, *shards, "--heldout", heldout, "--lr", "5",
                          "--steps", "4", "--eval-every", "2", "--width", "8", "--hidden",
                          "16", "--context", "3", "--out", out, "--log", tmp_path / "log.json")
    assert code == 0
    assert result["written"] is None and "nothing written" in result["verdict"]
    assert not out.exists()
    log = json.loads((tmp_path / "log.json").read_text())
    assert [p["step"] for p in log["runs"][0]["curve"]] == [0, 2, 4]
    assert set(log["runs"][0]["curve"][0]) >= {"tokens", "cpu_seconds", "heldout_ce"}


def test_end_to_end_cli_writes_a_network_that_loads_back_whole(store, tmp_path, capsys):
    path, shards, heldout = store
    out = tmp_path / "nets"
    # trained on the held-out text itself, so that a few steps surely beat the explicit
    # model there (this tests the write path, not generalisation: the benchmark does that)
    code, result, _ = cli(capsys, "train", path, heldout, "--heldout", heldout, "--steps", "40",
                          "--eval-every", "20", "--batch", "64", "--lr", "1e-2", "--width",
                          "16", "--hidden", "32", "--context", "4", "--out", out, "--baselines")
    assert code == 0, result
    names = [run["name"] for run in result["runs"]]
    assert names == ["explicit+residual", "random-init", "no-explicit"]
    main_run = result["runs"][0]
    assert main_run["curve"][0]["heldout_ce"] == pytest.approx(result["reference"]["ce"],
                                                               abs=1e-6)
    assert result["written"], result["verdict"]
    assert main_run["best_ce"] < result["reference"]["ce"]
    # the file: safetensors, no pickle; the whole module comes back
    from streamsolve.torch import load_network

    description, state = files.read(result["written"])
    assert description["weights_id"] and description["config"]["arch"] == "mlp"
    module = load_network(result["written"])
    _, o, held = opened(path, heldout)
    assert token_losses(module, held).mean() == pytest.approx(main_run["best_ce"], abs=1e-6)
    # a second network goes to a new file beside the first, never over it
    again = files.save(module, str(out), {**description, "provenance": {}})
    assert again != result["written"] and again.endswith("network-0002.safetensors")
    assert files.read(result["written"])[0] == description


@pytest.mark.parametrize("args, message", [
    (["--arch", "lstm"], "unknown --arch 'lstm': use one of mlp, transformer"),
    (["--init", "xavier"], "unknown --init 'xavier'"),
    (["--width", "0"], "--width must be an integer >= 1"),
    (["--device", "cuda:7"], "cuda"),
])
def test_bad_options_are_one_line(store, capsys, args, message):
    path, shards, heldout = store
    code, _, err = cli(capsys, "train", path, *shards, "--heldout", heldout, *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_store_and_empty_heldout_are_one_line(store, tmp_path, capsys):
    path, shards, heldout = store
    code, _, err = cli(capsys, "train", tmp_path / "nope.zarr", *shards, "--heldout", heldout)
    assert code == 2 and "no streamsolve store at" in err
    assert len(err.strip().splitlines()) == 1
    empty = write_text(tmp_path / "empty.txt", "\n\n")
    code, _, err = cli(capsys, "train", path, *shards, "--heldout", empty)
    assert code == 2 and "held-out text" in err and "no tokens" in err
    assert len(err.strip().splitlines()) == 1


def test_a_network_file_of_other_weights_is_refused(store, tmp_path):
    path, _, heldout = store
    options, o, held = opened(path, heldout)
    config = options.network_config(o.model.vocab_size, o.model.config.radius, width=8,
                                    hidden=16)
    module = build_network(config, o.model.weights)
    written = files.save(module, str(tmp_path / "n"), {"config": config.to_dict(),
                                                       "store": path, "weights_id": "other"})
    with pytest.raises(files.StoreError, match="trained on weights other"):
        files.load(written)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(files.StoreError, match="not a streamsolve network file"):
        files.read(str(tmp_path / "junk.safetensors"))
