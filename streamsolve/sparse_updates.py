"""Row-sparse optimizers for the dense tables of `streamsolve.torch.ExplicitLM` (``refine``).

One minibatch of ``B`` positions reads only the ``<= B`` distinct context rows of each
``V x V`` table, so the gradient of a table is zero outside those rows. A dense optimizer
still allocates a dense ``V x V`` gradient and updates its moments and every parameter of
every table each step (``O(R V^2)`` per step, 1.49 s at V = 4096, R = 3 on CPU). With
``nn.Embedding(sparse=True)`` the gradient is a sparse tensor of the touched rows, and the
optimizers here update only those rows (``O(R B V)`` per step):

- `LazyAdam` (as ``torch.optim.SparseAdam`` / TensorFlow's ``LazyAdam``): the moments and
  the parameters of a touched row are updated as Adam would, with the global step count in
  the bias corrections; an untouched row is left as it is (dense Adam would still move it
  by its decaying first moment and decay its moments). On a step touching every row it is
  exactly Adam. Weight decay is *decoupled* (AdamW: ``p <- p (1 - lr wd)`` before the Adam
  step), applied lazily: a row is decayed only in the steps whose batch contains it, so a
  frequent context row is decayed more often than a rare one, where dense AdamW decays
  every row at every step. (Dense ``refine --dense-updates`` keeps Adam's coupled L2.)
- `LazySGD` (momentum as ``torch.optim.SGD``): plain SGD (momentum 0) is *exact*: the
  gradient of an untouched row is zero, so dense SGD leaves it unchanged too. With momentum
  the buffer of a row is applied only when the row is touched (dense SGD keeps moving it
  by its decaying buffer); the first step is exact either way. Weight decay is the L2
  penalty added to the gradient of the touched rows only (exact only when 0).

Parameters whose gradient is dense (the bias) get the dense update of the same rule (Adam
with decoupled decay = AdamW; SGD). Only tensor ops available on CPU and CUDA are used.
"""

from __future__ import annotations

from .extras import import_torch

torch = import_torch()

__all__ = ["LazyAdam", "LazySGD", "sparse_embeddings", "WEIGHT_DECAY_MODES"]

#: How ``weight_decay`` acts, by optimizer, with row-sparse updates (recorded in provenance).
WEIGHT_DECAY_MODES = {"adam": "decoupled, touched rows only",
                      "sgd": "L2 gradient, touched rows only"}


def _rows_and_values(param):
    """``(rows, grad_rows)`` of a parameter's gradient: ``rows`` None for a dense gradient
    (every row), else the distinct touched row indices and their summed gradients."""
    grad = param.grad
    if grad.is_sparse:
        grad = grad.coalesce()  # a table shared by several offsets has repeated rows
        return grad.indices()[0], grad.values()
    return None, grad


def _take(tensor, rows):
    return tensor if rows is None else tensor.index_select(0, rows)


def _put(tensor, rows, values):
    if rows is None:
        tensor.copy_(values)
    else:
        tensor.index_copy_(0, rows, values)


def _add(tensor, rows, delta):
    """``tensor[rows] += delta`` (``rows`` distinct, so deterministic on CUDA too)."""
    if rows is None:
        tensor.add_(delta)
    else:
        tensor.index_add_(0, rows, delta)


class _RowOptimizer(torch.optim.Optimizer):
    """`step` over the parameters that have gradients, each updated by ``_update(p, rows,
    grad, group)`` on its touched rows (`_rows_and_values`)."""

    @torch.no_grad()
    def step(self, closure=None):
        """One step; ``closure`` (optional) re-evaluates the loss with gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, *_rows_and_values(p), group)
        return loss

    def _update(self, p, rows, grad, group) -> None:
        raise NotImplementedError


class LazyAdam(_RowOptimizer):
    """Adam updating only the rows present in a sparse gradient (see the module docstring).

    Parameters
    ----------
    params : iterable of tensors or parameter groups
        Parameters with sparse (``nn.Embedding(sparse=True)``) or dense gradients.
    lr : float
    betas : (float, float)
    eps : float
    weight_decay : float
        Decoupled decay, applied to the touched rows of the step (all of a dense parameter).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if not (lr > 0 and 0 <= betas[0] < 1 and 0 <= betas[1] < 1 and eps > 0
                and weight_decay >= 0):
            raise ValueError(f"invalid LazyAdam hyper-parameters: lr {lr}, betas {betas}, "
                             f"eps {eps}, weight_decay {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _update(self, p, rows, grad, group) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        m = _take(state["exp_avg"], rows).mul_(beta1).add_(grad, alpha=1 - beta1)
        v = _take(state["exp_avg_sq"], rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        _put(state["exp_avg"], rows, m)
        _put(state["exp_avg_sq"], rows, v)
        step = state["step"]
        denom = (v / (1 - beta2 ** step)).sqrt_().add_(eps)
        delta = (m / denom).mul_(-lr / (1 - beta1 ** step))
        if decay:  # decoupled: p (1 - lr decay) - step
            delta.add_(_take(p, rows), alpha=-lr * decay)
        _add(p, rows, delta)


class LazySGD(_RowOptimizer):
    """SGD (optional momentum) updating only the rows present in a sparse gradient.

    Parameters
    ----------
    params : iterable of tensors or parameter groups
    lr, momentum : float
        As ``torch.optim.SGD`` (``buf <- momentum buf + g``, ``p <- p - lr buf``).
    weight_decay : float
        L2: ``g <- g + weight_decay p`` on the touched rows.
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        if not (lr > 0 and 0 <= momentum < 1 and weight_decay >= 0):
            raise ValueError(f"invalid LazySGD hyper-parameters: lr {lr}, momentum "
                             f"{momentum}, weight_decay {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _update(self, p, rows, grad, group) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        if decay:
            grad = grad.add(_take(p, rows), alpha=decay)
        if momentum:  # a fresh buffer is zero: 0 * momentum + g == g, as SGD's first
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = _take(state["momentum_buffer"], rows).mul(momentum).add_(grad)
            _put(state["momentum_buffer"], rows, buf)
            grad = buf
        _add(p, rows, grad.mul(-lr))


def sparse_embeddings(module) -> list:
    """The ``nn.Embedding`` tables of ``module`` whose gradients can be row-sparse: the
    ``tables`` of an `ExplicitLM` (V x V). A factored module's embeddings are small (V x d)
    and its output layer dense, so it gets none (dense updates)."""
    tables = getattr(module, "tables", None)
    return [t for t in tables if isinstance(t, torch.nn.Embedding)] if tables is not None else []
