"""PyTorch bridge: a stored explicit language model as an ``nn.Module`` (optional ``[torch]``).

`load` returns a module whose ``forward(contexts)`` on a LongTensor ``(B, R)`` (offset 1
first, as `LanguageModel.logits`) gives the logits ``(B, V)`` of the stored model, calibration
included. Its parameters are the *minimum-norm* representative of the explicit weights
(`streamsolve.core.warm_start`, DESIGN 3b): per offset block a double-centred table, and a
centred bias. The per-sample constants left over (a per-row offset of each block and one
scalar) are buffers, not parameters: they change no probability, only make the logits
equal to the explicit model's. ``module.with_offsets = False`` drops them.

- Dense (default): one ``nn.Embedding(V, V)`` per weight block (``cat``: one per offset;
  ``sum``: one shared by all offsets), refused above ``max_bytes`` (default half the RAM)
  with a message naming ``rank``.
- ``rank=d``: per block an ``nn.Embedding(V, d)`` and an output ``nn.Linear(d, V)`` from the
  best rank-d approximation of the centred block (`streamsolve.core.low_rank`), at any V.

Importing this module without PyTorch raises an ImportError naming
``pip install 'streamsolve[torch]'``.
"""

from __future__ import annotations

import logging

import numpy as np

from .core.warm_start import WarmStart, check_dense_fits, min_norm_weights
from .extras import import_torch, torch_device

torch = import_torch()
nn = torch.nn

logger = logging.getLogger(__name__)

__all__ = ["ExplicitLM", "FactoredLM", "load", "load_weights"]

#: Rows of a V x V table filled per step (bounds the float64 staging array).
FILL_ROWS = 1024


class _OffsetLM(nn.Module):
    """The bias and the per-sample constants shared by the dense and factored modules."""

    def __init__(self, warm: WarmStart, dtype):
        super().__init__()
        self.offset_blocks = tuple(int(b) for b in warm.offset_blocks)
        self.vocab_size = int(warm.bias.size)
        self.bias = nn.Parameter(torch.as_tensor(warm.bias, dtype=dtype))
        self.register_buffer("row_offsets", torch.as_tensor(warm.row_offsets, dtype=dtype))
        self.register_buffer("offset", torch.tensor(float(warm.offset), dtype=dtype))
        self.with_offsets = True

    def _check(self, contexts):
        if contexts.dim() != 2 or contexts.shape[1] != len(self.offset_blocks):
            raise ValueError(f"contexts must have shape (B, {len(self.offset_blocks)}), got "
                             f"{tuple(contexts.shape)}")
        return contexts.long()

    def _finish(self, out, contexts):
        out = out + self.bias
        if self.with_offsets:
            shift = sum(self.row_offsets[b][contexts[:, r]]
                        for r, b in enumerate(self.offset_blocks)) + self.offset
            out = out + shift.unsqueeze(1)
        return out


class ExplicitLM(_OffsetLM):
    """Dense explicit LM: ``logits = bias + sum_r tables[b(r)](c_r)`` (+ per-sample constants).

    Attributes
    ----------
    tables : nn.ModuleList of nn.Embedding(V, V)
        The minimum-norm (double-centred, calibration-scaled) weight blocks.
    bias : nn.Parameter (V,)
    """

    def __init__(self, warm: WarmStart, dtype=None):
        dtype = dtype or torch.float32
        super().__init__(warm, dtype)
        V = self.vocab_size
        tables = []
        for block in warm.blocks:
            table = torch.empty(V, V, dtype=dtype)
            for start in range(0, V, FILL_ROWS):
                rows = np.arange(start, min(V, start + FILL_ROWS))
                table[start:rows[-1] + 1] = torch.from_numpy(block.rows(rows))
            tables.append(nn.Embedding.from_pretrained(table, freeze=False))
        self.tables = nn.ModuleList(tables)

    def forward(self, contexts):
        contexts = self._check(contexts)
        out = sum(self.tables[b](contexts[:, r]) for r, b in enumerate(self.offset_blocks))
        return self._finish(out, contexts)


class FactoredLM(_OffsetLM):
    """Low-rank LM: ``logits = bias + sum_r outputs[b(r)](embeddings[b(r)](c_r))``.

    Attributes
    ----------
    embeddings : nn.ModuleList of nn.Embedding(V, d)
    outputs : nn.ModuleList of nn.Linear(d, V, bias=False)
    bias : nn.Parameter (V,)
    """

    def __init__(self, warm: WarmStart, factors: list, dtype=None):
        dtype = dtype or torch.float32
        super().__init__(warm, dtype)
        embeddings, outputs = [], []
        for E, B in factors:
            embeddings.append(nn.Embedding.from_pretrained(torch.as_tensor(E, dtype=dtype),
                                                           freeze=False))
            out = nn.Linear(B.shape[0], B.shape[1], bias=False, dtype=dtype)
            with torch.no_grad():
                out.weight.copy_(torch.as_tensor(B.T, dtype=dtype))
            outputs.append(out)
        self.embeddings = nn.ModuleList(embeddings)
        self.outputs = nn.ModuleList(outputs)
        self.rank = int(factors[0][0].shape[1])

    def forward(self, contexts):
        contexts = self._check(contexts)
        out = sum(self.outputs[b](self.embeddings[b](contexts[:, r]))
                  for r, b in enumerate(self.offset_blocks))
        return self._finish(out, contexts)


def load_weights(store, storage_options: dict | None = None, allow_stale: bool = False):
    """`ExplicitWeights` of a store path / URL, a `ModelStore`, a `LanguageModel` or weights."""
    from .core.weights import ExplicitWeights
    from .language_model import LanguageModel

    if isinstance(store, ExplicitWeights):
        return store
    weights = store.weights if isinstance(store, LanguageModel) else \
        LanguageModel.open(store, storage_options, allow_stale=allow_stale).weights
    if hasattr(weights, "ngram_parts"):  # issue 24 hook
        raise ValueError("the store has n-gram blocks (--ngram): streamsolve.torch does not "
                         "build them yet; `streamsolve export --weights` writes them (sparse)")
    if not isinstance(weights, ExplicitWeights):  # refined by `streamsolve refine`
        raise ValueError("the store holds refined weights (streamsolve refine), not explicit "
                         "ones: run `streamsolve finalize` to load the explicit model")
    return weights


def default_max_bytes() -> int:
    """The default memory budget of dense tables: half the machine's RAM."""
    from .engine.memory import total_ram

    return total_ram() // 2


def load(store, device=None, rank: int | None = None, max_bytes: int | None = None,
         dtype=None, storage_options: dict | None = None, allow_stale: bool = False,
         n_iter: int = 7, seed: int = 0):
    """The stored explicit model as an ``nn.Module`` initialised to its minimum-norm weights.

    Parameters
    ----------
    store : str, ModelStore, LanguageModel or ExplicitWeights
        A finalized store (path or fsspec URL), or a model / weights in memory.
    device : str or torch.device, optional
        None: CPU. ``"cuda"`` without CUDA raises ValueError.
    rank : int, optional
        Build a `FactoredLM` of this rank (any V); None: a dense `ExplicitLM`.
    max_bytes : int, optional
        Budget for the dense tables (default half the RAM); above it, ValueError naming
        ``rank=``.
    dtype : torch.dtype, optional
        Parameter type (default float32).
    storage_options : dict, optional
        fsspec options for a store URL.
    allow_stale : bool
        Accept weights older than the store's counts.
    n_iter, seed : int
        Power iterations and seed of the randomized SVD (``rank`` only).

    Returns
    -------
    ExplicitLM or FactoredLM
        ``forward(contexts)``: contexts a LongTensor (B, R), logits (B, V) equal to
        ``LanguageModel.logits`` (exactly up to float rounding for the dense module).
    """
    dtype = dtype or torch.float32
    resolved = torch_device(torch, device)
    weights = load_weights(store, storage_options, allow_stale)
    warm = min_norm_weights(weights)
    V = weights.config.vocab_size
    if rank is None:
        budget = default_max_bytes() if max_bytes is None else int(max_bytes)
        itemsize = torch.empty((), dtype=dtype).element_size()
        needed = check_dense_fits(V, len(warm.blocks), itemsize, budget)
        logger.info("dense explicit LM: %d table(s) of %d x %d (%.1f MiB)", len(warm.blocks),
                    V, V, needed / 2**20)
        module = ExplicitLM(warm, dtype)
    else:
        from .core.low_rank import low_rank_factors

        factors = [low_rank_factors(block, rank, n_iter=n_iter, seed=seed)
                   for block in warm.blocks]
        module = FactoredLM(warm, factors, dtype)
    return module.to(resolved)


def load_network(path, store=None, device=None, storage_options: dict | None = None):
    """The whole network ``streamsolve train`` wrote (explicit branch + residual) as an
    ``nn.Module``: `streamsolve.network.files.load` (issue 25)."""
    from .network.files import load as load_file

    return load_file(path, store=store, device=device, storage_options=storage_options)
