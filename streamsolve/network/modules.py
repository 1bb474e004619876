"""The torch modules of ``streamsolve train``: the explicit branch plus a neural residual.

``ResidualLM.forward(contexts)`` takes LongTensor contexts ``(B, K)`` (offset 1 first, as
`streamsolve.core.positions` builds them; ``K = max(C, R)``) and returns float64 logits
``(B, V)``:

    logits = sum_b scales[b] * explicit_b(c) + scales[-1] * log p + g(c[:, :C])

- ``explicit_b(c) = sum_{r: b(r) = b} W^(b)[c_r, :]``, each block's row minus its maximum
  (a per-sample constant: no probability changes), computed from the store's sparse +
  rank-one weights in NumPy float64 (`ExplicitFeatures`); ``scales`` start at the
  calibration (beta per block, gamma for the prior), so with ``g = 0`` the logits are the
  stored model's up to a per-sample constant. The explicit part stays float64 so that
  step 0 equals ``eval`` to rounding.
- ``g`` (`MLPResidual` or `DecoderResidual`) ends in ``out`` (hidden -> d) and ``unembed``
  (d -> V, with a bias); ``init="explicit"`` zeroes ``out`` and the bias, so ``g = 0`` at
  step 0. Embedding and unembedding start from the best rank-d factors of the offset-1
  block's minimum-norm form (`streamsolve.core.low_rank`, DESIGN 3b), the embedding scaled
  to unit RMS (the unembedding takes the inverse scale), or random (``embed_init``).
"""

from __future__ import annotations

import logging

import numpy as np

from ..extras import import_torch

torch = import_torch()
nn = torch.nn

logger = logging.getLogger(__name__)

from .config import ARCHS, EMBED_INITS, INITS, NetworkConfig  # noqa: F401


class ExplicitFeatures:
    """Per-block explicit logits of contexts, each row minus its maximum (NumPy, float64)."""

    def __init__(self, weights):
        self.weights = weights
        config = weights.config
        self.offset_blocks = tuple(weights.block_of_offset(r) for r in range(config.radius))
        self.n_blocks = len(weights.blocks)
        self.vocab_size = config.vocab_size

    def __call__(self, contexts: np.ndarray) -> np.ndarray:
        """``(B, n_blocks, V)`` float64 for contexts ``(B, >= R)``."""
        out = np.zeros((contexts.shape[0], self.n_blocks, self.vocab_size))
        for r, b in enumerate(self.offset_blocks):
            out[:, b] += self.weights.blocks[b].rows(contexts[:, r])
        out -= out.max(axis=2, keepdims=True)
        return out


class MLPResidual(nn.Module):
    """``g(c) = unembed(out(MLP(concat(embed(c_1), ..., embed(c_C)))))``."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        d, H = config.width, config.hidden
        self.embed = nn.Embedding(config.vocab_size, d)
        layers, width = [], config.context * d
        for _ in range(config.layers):
            layers += [nn.Linear(width, H), nn.GELU()]
            width = H
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(H, d)
        self.unembed = nn.Linear(d, config.vocab_size)

    def forward(self, contexts):
        x = self.embed(contexts).flatten(1)
        return self.unembed(self.out(self.body(x)))


class DecoderResidual(nn.Module):
    """A small causal decoder over the last C tokens (oldest first); the last position's
    output (layer-normed) goes through ``out`` and ``unembed``."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        d = config.width
        self.embed = nn.Embedding(config.vocab_size, d)
        self.position = nn.Parameter(torch.randn(config.context, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, config.heads, dim_feedforward=config.hidden,
                                           dropout=0.0, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, d)
        self.unembed = nn.Linear(d, config.vocab_size)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(
            config.context), persistent=False)

    def forward(self, contexts):
        x = self.embed(contexts.flip(1)) + self.position
        h = self.blocks(x, mask=self.mask.to(x.dtype), is_causal=True)[:, -1]
        return self.unembed(self.out(self.norm(h)))


class ResidualLM(nn.Module):
    """The explicit branch (learnable scales) plus a residual; see the module docstring.

    Attributes
    ----------
    config : NetworkConfig
    residual : MLPResidual or DecoderResidual
    scales : nn.Parameter (n_blocks + 1,), float64, or None without the explicit branch
    """

    def __init__(self, config: NetworkConfig, weights=None):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.residual = (MLPResidual if config.arch == "mlp" else DecoderResidual)(config)
        self.explicit = None
        self.scales = None
        if config.explicit:
            if weights is None:
                raise ValueError("the explicit branch needs the store's weights")
            self.explicit = ExplicitFeatures(weights)
            start = np.r_[np.asarray(weights.beta, dtype=np.float64), float(weights.gamma)]
            self.scales = nn.Parameter(torch.as_tensor(start, dtype=torch.float64))
            self.register_buffer("log_unigram", torch.as_tensor(
                np.asarray(weights.log_unigram, dtype=np.float64)))

    def explicit_logits(self, contexts):
        """The explicit branch's float64 logits ``(B, V)`` (None without it)."""
        if self.explicit is None:
            return None
        R = self.config.radius
        feats = torch.from_numpy(self.explicit(contexts[:, :R].cpu().numpy()))
        feats = feats.to(self.scales.device)
        return (torch.einsum("bkv,k->bv", feats, self.scales[:-1])
                + self.scales[-1] * self.log_unigram)

    def forward(self, contexts):
        contexts = contexts.long()
        if contexts.dim() != 2 or contexts.shape[1] < self.config.columns:
            raise ValueError(f"contexts must have shape (B, >= {self.config.columns}), got "
                             f"{tuple(contexts.shape)}")
        out = self.residual(contexts[:, :self.config.context]).double()
        explicit = self.explicit_logits(contexts)
        return out if explicit is None else out + explicit


def lowrank_tables(weights, width: int, seed: int = 0):
    """Embedding (V x d) and unembedding (d x V) from the offset-1 block's best rank-d
    factors (minimum-norm form); the embedding scaled to unit RMS, the unembedding by the
    inverse, so their product is the rank-d block."""
    from ..core.low_rank import low_rank_factors
    from ..core.warm_start import min_norm_weights

    warm = min_norm_weights(weights)
    E, B = low_rank_factors(warm.blocks[warm.offset_blocks[0]], width, n_iter=4, seed=seed)
    rms = float(np.sqrt(np.mean(E ** 2))) or 1.0
    return E / rms, B * rms


def build_network(config: NetworkConfig, weights=None, for_loading: bool = False) -> ResidualLM:
    """A `ResidualLM` initialised as ``config`` says (``for_loading``: parameters to be
    overwritten by a state dict, so no low-rank factors are computed).

    ``weights`` (`ExplicitWeights`) is needed by the explicit branch and by
    ``embed_init="lowrank"``.
    """
    torch.manual_seed(config.seed)
    module = ResidualLM(config, weights)
    if for_loading:
        return module
    residual = module.residual
    with torch.no_grad():
        if config.init == "explicit" and config.embed_init == "lowrank":
            if weights is None:
                raise ValueError("--embed-init lowrank needs the store's explicit weights")
            E, B = lowrank_tables(weights, config.width, config.seed)
            residual.embed.weight.copy_(torch.as_tensor(E, dtype=torch.float32))
            residual.unembed.weight.copy_(torch.as_tensor(B.T, dtype=torch.float32))
        if config.init == "explicit":
            residual.out.weight.zero_()
            residual.out.bias.zero_()
            residual.unembed.bias.zero_()
    return module
