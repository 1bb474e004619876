"""``streamsolve export --weights / --tokenizer``: exact round trips of the store's weights
(safetensors and npz), the low-rank and dense layouts, the torch module from a store, and
one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from streamsolve.cli import main
from streamsolve.engine.finalize import read_store_weights
from streamsolve.export import read_export
from streamsolve.language_model import LanguageModel
from streamsolve.store.model_store import ModelStore

from .conftest import write_shards, write_text

pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def store(tmp_path_factory, documents, tokenizer_file) -> str:
    """A radius-3 store of real text, finalized and calibrated."""
    root = tmp_path_factory.mktemp("export")
    shards = write_shards(root / "corpus", 2, "", documents[3:20])
    path = str(root / "m.zarr")
    assert main(["count", *map(str, shards), "--store", path, "--tokenizer", tokenizer_file,
                 "--radius", "3", "-q"]) == 0
    heldout = write_text(root / "held.txt", "\n\n".join(documents[:3]) + "\n")
    assert main(["finalize", path, "--calibrate", str(heldout), "-q"]) == 0
    return path


def cli(capsys, *args):
    code = main([*map(str, args), "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def logits_from_export(arrays, meta, contexts):
    """``bias + sum_r beta W^(b(r))[c_r]`` from the exported sparse + rank-one parts."""
    import scipy.sparse as sp

    V = meta["config"]["vocab_size"]
    out = np.broadcast_to(arrays["bias"], (len(contexts), V)).copy()
    for r, b in enumerate(meta["offset_blocks"]):
        S = sp.csr_array((arrays[f"block{b}.data"], arrays[f"block{b}.indices"],
                          arrays[f"block{b}.indptr"]), shape=(V, V))
        rows = S[contexts[:, r]].toarray() + arrays[f"block{b}.row_terms"][contexts[:, r]][:, None]
        out += meta["beta"][b] * (rows + arrays[f"block{b}.col_terms"])
    return out


@pytest.mark.parametrize("suffix", ["safetensors", "npz"])
def test_weights_round_trip_exactly(capsys, tmp_path, store, suffix):
    out = tmp_path / f"w.{suffix}"
    code, result, err = cli(capsys, "export", store, out, "--weights")
    assert code == 0, err
    assert result["format"] == suffix and result["layout"] == "sparse-rank-one"
    arrays, meta = read_export(str(out))
    weights = read_store_weights(ModelStore(store))
    assert weights.calibrated and meta["calibrated"]
    assert meta["beta"] == list(weights.beta) and meta["gamma"] == weights.gamma
    assert meta["params"] == json.loads(json.dumps(weights.params()))
    for b, block in enumerate(weights.blocks):
        np.testing.assert_array_equal(arrays[f"block{b}.indptr"], block.sparse.indptr)
        np.testing.assert_array_equal(arrays[f"block{b}.indices"], block.sparse.indices)
        np.testing.assert_array_equal(arrays[f"block{b}.data"], block.sparse.data)
        np.testing.assert_array_equal(arrays[f"block{b}.row_terms"], block.row_terms)
        np.testing.assert_array_equal(arrays[f"block{b}.col_terms"], block.col_terms)
    np.testing.assert_array_equal(arrays["bias"], weights.bias)
    np.testing.assert_array_equal(arrays["log_unigram"], weights.log_unigram)
    ctx = np.random.default_rng(0).integers(0, 400, size=(50, 3))
    np.testing.assert_allclose(logits_from_export(arrays, meta, ctx),
                               LanguageModel.open(store).logits(ctx), rtol=0, atol=1e-10)


def test_low_rank_dense_and_tokenizer_exports(capsys, tmp_path, store):
    code, result, err = cli(capsys, "export", store, tmp_path / "f.safetensors", "--weights",
                            "--rank", 16, "--tokenizer", tmp_path / "tok.json")
    assert code == 0, err
    arrays, meta = read_export(str(tmp_path / "f.safetensors"))
    assert meta["layout"] == "low-rank" and meta["rank"] == 16
    assert arrays["embedding0"].shape == (400, 16) and arrays["output2"].shape == (16, 400)
    assert arrays["bias"].shape == (400,) and arrays["row_offsets"].shape == (3, 400)
    stored = ModelStore(store).snapshot().tokenizer_text()
    assert (tmp_path / "tok.json").read_text(encoding="utf-8") == stored
    assert result["tokenizer"] == str(tmp_path / "tok.json")

    code, result, err = cli(capsys, "export", store, tmp_path / "d.npz", "--weights", "--dense")
    assert code == 0, err
    arrays, meta = read_export(str(tmp_path / "d.npz"))
    assert meta["layout"] == "dense" and arrays["table1"].shape == (400, 400)
    np.testing.assert_allclose(arrays["table1"].sum(axis=1), 0, atol=1e-3)

    code, _, err = cli(capsys, "export", store, "--tokenizer", tmp_path / "only.json")
    assert code == 0, err and (tmp_path / "only.json").read_text(encoding="utf-8") == stored


def test_bad_exports_are_one_line_exit_2(capsys, tmp_path, store):
    code, _, err = cli(capsys, "export", store, tmp_path / "d.npz", "--weights", "--dense",
                       "--memory", "1MB", "--force-memory")
    assert code == 2 and err.count("\n") == 1 and "--rank d" in err
    code, _, err = cli(capsys, "export", store)
    assert code == 2 and "nothing to export" in err and err.count("\n") == 1
    code, _, err = cli(capsys, "export", store, "--weights")
    assert code == 2 and "needs an OUT path" in err
    code, _, err = cli(capsys, "export", store, tmp_path / "c.npz", "--counts", "--rank", 4)
    assert code == 2 and "apply to --weights only" in err
    code = ("import sys; sys.modules['safetensors'] = None; sys.modules['safetensors.numpy'] = None\n"
            "from streamsolve.cli import main\n"
            f"sys.exit(main(['export', {store!r}, {str(tmp_path / 'x.safetensors')!r}, "
            "'--weights', '-q']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "pip install 'streamsolve[torch]'" in done.stderr


def test_torch_module_from_a_store_equals_the_language_model(store):
    torch = pytest.importorskip("torch")
    import streamsolve.torch as bridge

    model = LanguageModel.open(store)
    ctx = np.random.default_rng(1).integers(0, 400, size=(64, 3))
    module = bridge.load(store)
    np.testing.assert_allclose(module(torch.as_tensor(ctx)).detach().numpy(), model.logits(ctx),
                               rtol=1e-5, atol=1e-5)


def test_export_counts_refuses_by_the_memory_it_needs(capsys, tmp_path, store):
    """The same store exports or is refused by ``--memory`` (not by a fixed V), and the
    refusal names a call that exists."""
    import streamsolve
    from streamsolve.api import dense_export_bytes, info

    meta = info(store)
    need = dense_export_bytes(meta["vocab_size"], meta["nnz"])
    out = tmp_path / "c.npz"
    code, _, err = cli(capsys, "export", store, out, "--counts", "--memory", str(need - 1),
                       "--force-memory")
    assert code == 2 and err.count("\n") == 1 and "over the memory budget" in err, err
    assert f"streamsolve.ModelStore({store!r}).read_count_block(r)" in err and not out.exists()
    reader = streamsolve.ModelStore(store)  # the call it names works
    assert reader.read_count_block(0).shape == (meta["vocab_size"],) * 2
    code, _, err = cli(capsys, "export", store, out, "--counts", "-S", str(need),
                       "--force-memory")
    assert code == 0, err
    with np.load(out) as arrays:
        blocks = len(meta["nnz"])
        assert sorted(arrays.files) == [f"counts_{r + 1}" for r in range(blocks)] + ["unigram"]
        np.testing.assert_array_equal(arrays["unigram"], reader.read_unigram())
        for r in range(blocks):
            np.testing.assert_array_equal(arrays[f"counts_{r + 1}"],
                                          reader.read_count_block(r).toarray())
