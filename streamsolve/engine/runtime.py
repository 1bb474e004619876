"""Running Dask graphs: the tree reduction shared by the language model and the classifier."""

from __future__ import annotations


def tree_reduce(tasks: list, combine, split_every: int = 4, **kwargs):
    """Reduce a list of Dask delayed objects with a tree of ``combine`` nodes."""
    import dask

    if not tasks:
        raise ValueError("nothing to reduce")
    level = list(tasks)
    depth = 0
    while len(level) > 1:
        depth += 1
        level = [
            dask.delayed(combine, pure=True)(*level[i:i + split_every], **kwargs,
                                             dask_key_name=f"merge-{depth}-{i // split_every}-{tokenize_key(level[i:i + split_every])}")
            for i in range(0, len(level), split_every)
        ]
    return level[0]


def tokenize_key(objs) -> str:
    from dask.base import tokenize

    return tokenize(*[getattr(o, "key", o) for o in objs])
