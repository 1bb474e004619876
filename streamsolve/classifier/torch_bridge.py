"""The classifier as a PyTorch ``nn.Linear`` (optional ``[torch]`` extra)."""

from __future__ import annotations

from ..core.warm_start import min_norm_classifier


def to_torch(self, device=None, dtype=None):
    """The weights in use as an ``nn.Linear(n_features, n_classes)``, minimum-norm.

    ``weight`` is ``coef_`` with each feature centred across classes and ``bias`` the
    centred ``intercept_`` (`streamsolve.core.warm_start.min_norm_classifier`): the logits
    differ from ``x coef_^T + intercept_`` by a per-sample constant only, so the
    log-probabilities (``log_softmax``) equal `predict_log_proba`. A class with prior zero
    keeps the bias ``-inf``.

    Parameters
    ----------
    device : str or torch.device, optional
        None: CPU; ``"cuda"`` without CUDA raises ValueError.
    dtype : torch.dtype, optional
        Default float32.

    Returns
    -------
    torch.nn.Linear

    Raises
    ------
    ImportError
        Without PyTorch, naming ``pip install 'streamsolve[torch]'``.
    """
    from ..extras import import_torch, torch_device   # deferred: torch only on request

    torch = import_torch()
    resolved = torch_device(torch, device)
    dtype = dtype or torch.float32
    coef, intercept = min_norm_classifier(self.coef_, self.intercept_)
    linear = torch.nn.Linear(coef.shape[1], coef.shape[0], dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coef, dtype=dtype))
        linear.bias.copy_(torch.as_tensor(intercept, dtype=dtype))
    return linear.to(resolved)
