"""Optional dependencies (PyTorch): import them, or fail with one line naming the extra.

A leaf module (it imports nothing of ours), so every layer may use it.
"""

from __future__ import annotations

import importlib

TORCH_HINT = "pip install 'streamsolve[torch]'"


def import_torch():
    """The ``torch`` module.

    Raises
    ------
    ImportError
        One line naming ``pip install 'streamsolve[torch]'`` when PyTorch is not installed.
    """
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise ImportError(f"PyTorch is not installed (needed for the PyTorch bridge): "
                          f"{TORCH_HINT}") from exc


def torch_device(torch, device=None):
    """``torch.device`` for ``device`` (None: CPU); CUDA without CUDA is one clear error.

    Raises
    ------
    ValueError
        An unknown device name, or a CUDA device when ``torch.cuda.is_available()`` is False.
    """
    try:
        resolved = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda[:N]'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available to "
                         f"PyTorch {torch.__version__}: use device 'cpu' (--device cpu) or "
                         "install a CUDA build of PyTorch")
    return resolved
