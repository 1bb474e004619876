"""Row-sparse updates of the dense tables (`streamsolve.sparse_updates`): sparse SGD equals
dense SGD, lazy Adam equals Adam / AdamW on a step touching every row, untouched rows stay,
a table shared by offsets (``sum``) sums its rows' gradients, and `fit` restores the tables."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
refine = pytest.importorskip("streamsolve.refine")
sparse_updates = pytest.importorskip("streamsolve.sparse_updates")

V = 23


@pytest.fixture(params=["cat", "sum"])
def module(request):
    from .conftest import random_explicit_weights

    weights = random_explicit_weights(V, 2, aggregation=request.param)
    return refine.initial_module(weights, "random", seed=1)


def _step(module, optimizer, contexts, targets, sparse):
    for table in module.tables:
        table.sparse = sparse
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(module(contexts), targets).backward()
    if sparse:
        assert module.tables[0].weight.grad.is_sparse
    optimizer.step()


def _batch(n, seed, rows=V):
    rng = np.random.default_rng(seed)
    return (torch.as_tensor(rng.integers(0, rows, size=(n, 2))),
            torch.as_tensor(rng.integers(0, V, size=n)))


def _assert_same(a, b, atol=1e-6):
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=name)


def test_sparse_sgd_steps_equal_dense_sgd(module):
    """Plain SGD: an untouched row has zero gradient, so several row-sparse steps (batches
    touching a few rows) equal dense SGD's to float32 rounding."""
    dense = copy.deepcopy(module)
    lazy = sparse_updates.LazySGD(module.parameters(), lr=0.7)
    full = torch.optim.SGD(dense.parameters(), lr=0.7)
    for seed in range(4):
        contexts, targets = _batch(16, seed, rows=9)  # rows 9.. are never touched
        _step(module, lazy, contexts, targets, sparse=True)
        _step(dense, full, contexts, targets, sparse=False)
    _assert_same(module, dense)
    assert torch.equal(module.tables[0].weight[9:], dense.tables[0].weight[9:])


def test_sparse_sgd_with_momentum_first_step_equals_dense(module):
    dense = copy.deepcopy(module)
    lazy = refine.make_optimizer(list(module.parameters()), "sgd", 0.3, 0.0, sparse=True)
    full = refine.make_optimizer(list(dense.parameters()), "sgd", 0.3, 0.0)
    contexts, targets = _batch(32, 7)
    _step(module, lazy, contexts, targets, sparse=True)
    _step(dense, full, contexts, targets, sparse=False)
    _assert_same(module, dense)


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_lazy_adam_touching_every_row_equals_adam(module, decay):
    """First step on a batch whose contexts cover every row at every offset: lazy Adam ==
    Adam (no decay) / AdamW (decoupled decay)."""
    dense = copy.deepcopy(module)
    lazy = sparse_updates.LazyAdam(module.parameters(), lr=0.01, weight_decay=decay)
    full = (torch.optim.AdamW(dense.parameters(), lr=0.01, weight_decay=decay) if decay
            else torch.optim.Adam(dense.parameters(), lr=0.01))
    contexts = torch.stack([torch.arange(V), torch.arange(V).flip(0)], dim=1).repeat(3, 1)
    targets = torch.as_tensor(np.random.default_rng(0).integers(0, V, size=3 * V))
    _step(module, lazy, contexts, targets, sparse=True)
    _step(dense, full, contexts, targets, sparse=False)
    _assert_same(module, dense)


def test_lazy_adam_moves_only_the_touched_rows(module):
    """Rows absent from a step's batch keep their value and moments (dense Adam would move
    them by their first moment); the touched rows get Adam's update with the global step."""
    lazy = sparse_updates.LazyAdam(module.parameters(), lr=0.01)
    _step(module, lazy, *_batch(64, 1), sparse=True)  # touches (nearly) every row
    table = module.tables[0].weight
    before = table.detach().clone()
    moments = lazy.state[table]["exp_avg"].clone()
    contexts, targets = _batch(8, 2, rows=5)
    _step(module, lazy, contexts, targets, sparse=True)
    assert torch.equal(table[5:], before[5:])
    assert torch.equal(lazy.state[table]["exp_avg"][5:], moments[5:])
    touched = torch.unique(contexts[:, 0] if module.offset_blocks == (0, 1) else contexts)
    assert bool((table[touched] != before[touched]).any(dim=1).all())
    assert lazy.state[table]["step"] == 2


def test_fit_row_sparse_by_default_and_restores_the_tables(module):
    ctx, tgt = _batch(256, 5)
    held = (ctx, tgt)
    batches = refine.position_batches(lambda: iter([(ctx.numpy(), tgt.numpy())]), 64,
                                      epochs=None)
    result = refine.fit(module, batches, held, lr=0.05, max_steps=6, eval_every=3,
                        patience=None)
    assert result.updates == "row-sparse" and result.best_ce < result.start_ce
    assert not any(table.sparse for table in module.tables)
    assert refine.resolve_updates(module, "lbfgs") == "dense"
    assert refine.resolve_updates(module, "adam", "dense") == "dense"
    with pytest.raises(ValueError, match="row-sparse"):
        refine.resolve_updates(module, "lbfgs", "row-sparse")


def test_heldout_sample_is_uniform_seeded_and_capped():
    assert refine.heldout_sample(100, None) is None and refine.heldout_sample(100, 100) is None
    a, b = refine.heldout_sample(1000, 50, seed=3), refine.heldout_sample(1000, 50, seed=3)
    assert np.array_equal(a, b) and a.size == np.unique(a).size == 50
    assert np.all(np.diff(a) > 0) and not np.array_equal(a, refine.heldout_sample(1000, 50, 4))


def test_lazy_sgd_weight_decay_is_l2_on_the_touched_rows(module):
    """Touching every row: SGD with L2 exactly; touching a few: the others keep their value
    (dense SGD would shrink them by ``1 - lr wd``)."""
    dense = copy.deepcopy(module)
    lazy = sparse_updates.LazySGD(module.parameters(), lr=0.2, weight_decay=0.3)
    full = torch.optim.SGD(dense.parameters(), lr=0.2, weight_decay=0.3)
    contexts = torch.stack([torch.arange(V), torch.arange(V).flip(0)], dim=1)
    targets = torch.arange(V).roll(1)
    _step(module, lazy, contexts, targets, sparse=True)
    _step(dense, full, contexts, targets, sparse=False)
    _assert_same(module, dense)
    before = module.tables[0].weight.detach().clone()
    _step(module, lazy, *_batch(8, 3, rows=4), sparse=True)
    assert torch.equal(module.tables[0].weight[4:], before[4:])
