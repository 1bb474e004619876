"""The PyTorch bridge: torch logits == LanguageModel logits (all forms, calibrated), the
classifier as nn.Linear, the dense budget, CUDA without CUDA, and torch missing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.special import log_softmax

from streamsolve.language_model import LanguageModel

from .conftest import random_explicit_weights

torch = pytest.importorskip("torch")
bridge = pytest.importorskip("streamsolve.torch")

V = 29


def weights_of(radius, aggregation="cat", form="row", smoothing="dirichlet", seed=0):
    return random_explicit_weights(V, radius, aggregation, form, smoothing, seed)


CASES = [(1, "cat", "row", False), (2, "cat", "row", True), (3, "cat", "row", True),
         (2, "cat", "column", True), (3, "cat", "column", False), (3, "sum", "row", True),
         (2, "sum", "column", False)]


@pytest.mark.parametrize("radius,aggregation,form,calibrated", CASES)
def test_dense_module_logits_equal_language_model(radius, aggregation, form, calibrated):
    weights = weights_of(radius, aggregation, form)
    if calibrated:
        weights = weights.with_calibration(np.linspace(0.5, 1.1, len(weights.blocks)), -0.4)
    model = LanguageModel(weights)
    ctx = np.random.default_rng(radius).integers(0, V, size=(64, radius))
    expected = model.logits(ctx)
    module = bridge.load(model)
    assert isinstance(module, bridge.ExplicitLM) and len(module.tables) == len(weights.blocks)
    got = module(torch.as_tensor(ctx)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    exact = bridge.load(weights, dtype=torch.float64)(torch.as_tensor(ctx)).detach().numpy()
    np.testing.assert_allclose(exact, expected, rtol=0, atol=1e-9)
    # the parameters are the minimum-norm representative: rows and columns centred
    exact_table = bridge.load(weights, dtype=torch.float64).tables[0].weight.detach().numpy()
    np.testing.assert_allclose(exact_table.sum(axis=1), 0, atol=1e-9)
    np.testing.assert_allclose(exact_table.sum(axis=0), 0, atol=1e-9)
    module.with_offsets = False   # per-sample constants off: same probabilities
    np.testing.assert_allclose(
        torch.log_softmax(module(torch.as_tensor(ctx)), dim=1).detach().numpy(),
        log_softmax(expected, axis=1), atol=1e-5)


def test_module_trains_from_the_warm_start():
    weights = weights_of(2)
    module = bridge.load(weights)
    ctx = torch.as_tensor(np.random.default_rng(0).integers(0, V, size=(32, 2)))
    loss = module(ctx).logsumexp(dim=1).sum()
    loss.backward()
    assert module.tables[0].weight.grad is not None and module.bias.grad is not None
    assert module.row_offsets.requires_grad is False


def test_dense_over_budget_refused_naming_rank():
    weights = weights_of(3)
    with pytest.raises(ValueError, match=r"rank=d, --rank d") as info:
        bridge.load(weights, max_bytes=3 * V * V * 4 - 1)
    assert "\n" not in str(info.value)
    bridge.load(weights, max_bytes=3 * V * V * 4)   # exactly fits


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_one_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available") as info:
        bridge.load(weights_of(1), device="cuda")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown device"):
        bridge.load(weights_of(1), device="tpu-ish")


def test_missing_torch_names_the_extra():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import streamsolve.torch\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.count("\n") == 0 and "pip install 'streamsolve[torch]'" in out
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from streamsolve import ExplicitSoftmaxClassifier\n"
            "clf = ExplicitSoftmaxClassifier().fit(np.eye(3), [0, 1, 2])\n"
            "try:\n    clf.to_torch()\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.count("\n") == 0 and "pip install 'streamsolve[torch]'" in out


@pytest.mark.parametrize("form", ["column", "row"])
def test_classifier_to_torch_is_a_linear_with_the_same_probabilities(form):
    from sklearn.datasets import load_digits

    from streamsolve import ExplicitSoftmaxClassifier

    X, y = load_digits(return_X_y=True)
    clf = ExplicitSoftmaxClassifier(form=form).fit(X[:800], y[:800]).calibrate(X[800:1000],
                                                                               y[800:1000])
    linear = clf.to_torch(dtype=torch.float64)
    assert isinstance(linear, torch.nn.Linear)
    assert linear.weight.shape == (10, 64) and linear.bias.shape == (10,)
    Xt = X[1000:]
    got = torch.log_softmax(linear(torch.as_tensor(Xt)), dim=1).detach().numpy()
    np.testing.assert_allclose(got, clf.predict_log_proba(Xt), rtol=0, atol=1e-9)
    np.testing.assert_allclose(linear.weight.detach().numpy().sum(axis=0), 0, atol=1e-9)
    got32 = torch.log_softmax(clf.to_torch()(torch.as_tensor(Xt, dtype=torch.float32)), dim=1)
    np.testing.assert_allclose(got32.detach().numpy(), clf.predict_log_proba(Xt), atol=1e-4)


@pytest.mark.parametrize("aggregation", ["cat", "sum"])
def test_factored_module_at_full_rank_equals_the_model(aggregation):
    weights = weights_of(2, aggregation).with_calibration(
        np.full(2 if aggregation == "cat" else 1, 0.8), -0.5)
    ctx = np.random.default_rng(0).integers(0, V, size=(40, 2))
    expected = weights.logits(ctx)
    full = bridge.load(weights, rank=V - 1, dtype=torch.float64)   # centred: rank <= V - 1
    assert isinstance(full, bridge.FactoredLM) and full.rank == V - 1
    assert full.embeddings[0].weight.shape == (V, V - 1)
    assert full.outputs[0].weight.shape == (V, V - 1)
    np.testing.assert_allclose(full(torch.as_tensor(ctx)).detach().numpy(), expected, atol=1e-9)
    small = bridge.load(weights, rank=4)(torch.as_tensor(ctx)).detach().numpy()
    error = np.linalg.norm(small - expected)
    assert 0 < error < np.linalg.norm(expected - expected.mean(axis=1, keepdims=True))
