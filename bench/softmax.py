"""The same single softmax layer as the explicit solution, in PyTorch (CPU): R one-hot
context blocks, i.e. ``logits = b + sum_r W_r[c_r]`` (R embedding lookups of V-dim rows)."""

from __future__ import annotations

import numpy as np


def positions(docs, radius: int, bos_id: int):
    """(contexts (N, R), targets (N,)) as int64 tensors, BOS-padded like the counts."""
    import torch

    from streamsolve.core.positions import positions as core_positions

    ctx, tgt = core_positions(docs, radius, bos_id)
    return torch.from_numpy(ctx).long(), torch.from_numpy(tgt).long()


class SoftmaxLayer:
    """Parameters W (R, V, V) and b (V,), zero-initialised."""

    def __init__(self, vocab_size: int, radius: int, dtype=None):
        import torch

        dtype = dtype or torch.float32
        self.W = torch.zeros(radius, vocab_size, vocab_size, dtype=dtype, requires_grad=True)
        self.b = torch.zeros(vocab_size, dtype=dtype, requires_grad=True)

    @property
    def params(self):
        return [self.W, self.b]

    def logits(self, ctx):
        import torch.nn.functional as F

        out = self.b.expand(ctx.shape[0], -1)
        for r in range(ctx.shape[1]):
            out = out + F.embedding(ctx[:, r], self.W[r])
        return out

    def loss_sum(self, ctx, tgt):
        import torch.nn.functional as F

        return F.cross_entropy(self.logits(ctx), tgt, reduction="sum")

    def mean_ce(self, ctx, tgt, chunk: int = 8192) -> float:
        import torch

        total = 0.0
        with torch.no_grad():
            for s in range(0, tgt.shape[0], chunk):
                total += float(self.loss_sum(ctx[s:s + chunk], tgt[s:s + chunk]))
        return total / tgt.shape[0]
