"""A model that grows: open (or create) a store, add shards as they arrive, re-finalize.

    from streamsolve import Model
    model = Model.open("m.zarr").add(["day-42.txt.gz"])
    lm = model.finalize()                 # recomputes only row blocks whose inputs changed
    model.evaluate(["held-out.txt"]).perplexity

Counts after any sequence of additions equal the counts of one build over all shards, bit
for bit; re-adding a shard already ingested is a no-op (see `streamsolve.api.count`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from . import api
from .language_model import Evaluation, LanguageModel
from .store.layout import StoreError
from .store.model_store import ModelStore

logger = logging.getLogger(__name__)


class Model:
    """A store of counts (and weights) that can be added to.

    Parameters
    ----------
    store : str
        Store path or fsspec URL.
    storage_options : dict, optional
    **count_options
        Options for the first `add` when the store does not exist yet (``tokenizer``,
        ``vocab_size``, ``radius``, ``aggregation``, ``documents``, ...).

    Attributes
    ----------
    last_result : CountResult or None
        What the last `add` did (tokens added, shards skipped as already ingested, ...).
    """

    def __init__(self, store: str, storage_options: dict | None = None, **count_options):
        self.store = str(store)
        self.storage_options = storage_options
        self.count_options = count_options
        self.last_result = None

    @classmethod
    def open(cls, store: str, storage_options: dict | None = None) -> "Model":
        """Open an existing store (raises `StoreError` when there is none)."""
        if not ModelStore(store, storage_options).exists():
            raise StoreError(f"no streamsolve store with counts at {store}")
        return cls(store, storage_options)

    @classmethod
    def create(cls, store: str, storage_options: dict | None = None, **count_options) -> "Model":
        """A model whose store is created by the first `add` (refuses an existing store)."""
        if ModelStore(store, storage_options).exists():
            raise StoreError(f"a streamsolve store already exists at {store}: use Model.open")
        return cls(store, storage_options, **count_options)

    def add(self, paths: Sequence[str] | str, *, allow_changed: bool = False,
            wait: bool | float = False, **options) -> "Model":
        """Count shards into the store (atomically); returns ``self`` for chaining."""
        kwargs = {**self.count_options, **options}
        self.last_result = api.count(paths, self.store, storage_options=self.storage_options,
                                     allow_changed=allow_changed, wait=wait, **kwargs)
        return self

    update = add

    def finalize(self, **options) -> LanguageModel:
        """Explicit weights of the current counts (see `streamsolve.api.finalize`)."""
        return api.finalize(self.store, storage_options=self.storage_options, **options)

    def evaluate(self, texts: Sequence[str], uncalibrated: bool = False) -> Evaluation:
        """Held-out cross-entropy of the finalized weights on text files."""
        return api.evaluate(self.store, texts, self.storage_options, uncalibrated)

    def language_model(self) -> LanguageModel:
        """The finalized model (refuses stale weights)."""
        return LanguageModel.open(self.store, self.storage_options)

    def info(self) -> dict:
        return api.info(self.store, self.storage_options)

    def __repr__(self) -> str:
        return f"Model({self.store!r})"
