"""streamsolve: single-layer softmax models without backpropagation.

Stream a corpus once into sparse co-occurrence counts, then turn them into the model's
explicit weights (see docs/design.md: sparse + rank-one weight blocks, optional calibration).

Importing the package does nothing else: each public name below is imported from its module
on first use (PEP 562), so ``import streamsolve`` loads neither Dask, Zarr, tokenizers nor
SciPy, and ``__version__`` is read from the installed distribution's metadata when asked for.
"""

import importlib

#: Public name -> (module relative to this package, attribute in that module).
_PUBLIC_NAMES = {
    "count": (".api", "count"),
    "evaluate": (".api", "evaluate"),
    "export_counts": (".api", "export_counts"),
    "finalize": (".api", "finalize"),
    "info": (".api", "info"),
    "solve": (".api", "solve"),
    "verify": (".api", "verify"),
    "CountConfig": (".core.counting", "CountConfig"),
    "Counts": (".core.counting", "Counts"),
    "count_token_documents": (".core.counting", "count_token_documents"),
    "Model": (".incremental", "Model"),
    "LanguageModel": (".language_model", "LanguageModel"),
    "ModelStore": (".store.model_store", "ModelStore"),
    "ExplicitWeights": (".core.weights", "ExplicitWeights"),
    "finalize_counts": (".core.weights", "finalize"),
    "ExplicitSoftmaxClassifier": (".classifier.estimator", "ExplicitSoftmaxClassifier"),
}

__all__ = sorted(_PUBLIC_NAMES) + ["__version__"]

#: Optional submodules reachable as attributes (``streamsolve.torch`` needs the ``[torch]`` extra).
_SUBMODULES = ("torch",)


def _installed_version() -> str:
    """The installed distribution's version (``"unknown"`` in a checkout that is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("streamsolve")
    except metadata.PackageNotFoundError:
        return "unknown"


def __getattr__(name: str):
    """Import a public name's module on first use and cache the name in this module."""
    if name == "__version__":
        value = _installed_version()
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _PUBLIC_NAMES:
        module_name, attribute = _PUBLIC_NAMES[name]
        value = getattr(importlib.import_module(module_name, __name__), attribute)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's own names plus the lazily imported public ones."""
    return sorted(set(globals()) | set(__all__))
