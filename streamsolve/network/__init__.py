"""A neural network on top of the explicit layer (``streamsolve train``, DESIGN 3c).

``logits(c) = sum_b scale_b * explicit_b(c) + scale_u * log p + g(c)``: the store's explicit
blocks (calibrated; one learnable scale per block and one for the unigram prior) plus a
neural residual ``g`` (an MLP over the last C tokens' embeddings, or a small causal
decoder) whose output layer starts at zero, so step 0 is the explicit model exactly.

- `streamsolve.network.modules`: the torch modules (`ResidualLM`, the residuals);
- `streamsolve.network.data`: positions streamed from text shards, the held-out set;
- `streamsolve.network.training`: the training loop, held-out evaluation, early stopping;
- `streamsolve.network.files`: the network file (safetensors + provenance) and `load`;
- `streamsolve.network.command`: the ``train`` command (Options, Result, run).

PyTorch is imported by the modules that need it, never by this package's ``__init__``.
"""

__all__ = ["load"]


def load(path, store=None, device=None, storage_options=None):
    """The trained network of ``path`` as an ``nn.Module`` (`streamsolve.network.files.load`)."""
    from .files import load as _load

    return _load(path, store=store, device=device, storage_options=storage_options)
