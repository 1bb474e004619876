"""The shape of a ``streamsolve train`` network (no PyTorch needed: checked when made)."""

from __future__ import annotations

import dataclasses

ARCHS = ("mlp", "transformer")
INITS = ("explicit", "random")
EMBED_INITS = ("lowrank", "random")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The shape of a network (stored with it; JSON-able)."""

    arch: str = "mlp"
    context: int = 8          # C: tokens the residual sees
    width: int = 64           # d: embedding width (the transformer's model width)
    hidden: int = 256         # MLP hidden units (transformer: feed-forward width)
    layers: int = 1           # MLP hidden layers / decoder layers
    heads: int = 2            # decoder attention heads
    explicit: bool = True     # with the explicit branch
    init: str = "explicit"    # explicit: residual output zero; random: all of g random
    embed_init: str = "lowrank"
    vocab_size: int = 0
    radius: int = 0           # R of the store's explicit model
    seed: int = 0

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown --arch {self.arch!r}: use one of {', '.join(ARCHS)}")
        if self.init not in INITS:
            raise ValueError(f"unknown --init {self.init!r}: use one of {', '.join(INITS)}")
        if self.embed_init not in EMBED_INITS:
            raise ValueError(f"unknown --embed-init {self.embed_init!r}: use one of "
                             f"{', '.join(EMBED_INITS)}")
        for name in ("context", "width", "hidden", "layers", "heads"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"--{name} must be an integer >= 1, got {value!r}")
        if self.arch == "transformer" and self.width % self.heads:
            raise ValueError(f"--width ({self.width}) must be a multiple of --heads "
                             f"({self.heads})")

    @property
    def columns(self) -> int:
        """K: context columns the network reads (the residual's C and the explicit R)."""
        return max(self.context, self.radius if self.explicit else 0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
