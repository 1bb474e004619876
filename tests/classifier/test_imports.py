"""Importing the classifier loads neither the language-model stack nor Zarr, tokenizers or
Dask's distributed scheduler, and does not tune the C allocator."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Modules the classifier package must not load at import time.
FORBIDDEN = ("tokenizers", "zarr", "distributed", "sklearn", "streamsolve.text",
             "streamsolve.store", "streamsolve.engine.tasks", "streamsolve.ingest", "streamsolve.engine.memory",
             "streamsolve.language_model", "streamsolve.api", "streamsolve.core.counting",
             "streamsolve.core.native", "streamsolve.core.weights")

PROBE = r"""
import ctypes, importlib.util, json, sys, types
loaded_libraries = []
real_cdll = ctypes.CDLL
def spy(name, *args, **kwargs):          # records every shared library loaded by ctypes
    loaded_libraries.append(str(name))
    return real_cdll(name, *args, **kwargs)
ctypes.CDLL = spy
if sys.argv[1] == "package-only":       # the classifier package alone: a bare parent package
    location = importlib.util.find_spec("streamsolve").submodule_search_locations
    parent = types.ModuleType("streamsolve")
    parent.__path__ = list(location)
    sys.modules["streamsolve"] = parent
__import__(sys.argv[2])
print(json.dumps({"modules": sorted(sys.modules), "libraries": loaded_libraries}))
"""


def probe(mode: str, module: str) -> dict:
    """Modules and ctypes libraries loaded by importing ``module`` in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", PROBE, mode, module], check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout)


def forbidden_loaded(modules: list[str]) -> list[str]:
    return sorted(m for m in modules
                  if any(m == name or m.startswith(name + ".") for name in FORBIDDEN))


def test_classifier_package_needs_no_language_model_stack():
    """What the classifier package itself imports (its parent package's __init__ left out)."""
    loaded = probe("package-only", "streamsolve.classifier")
    assert "streamsolve.classifier.estimator" in loaded["modules"]
    assert forbidden_loaded(loaded["modules"]) == []
    assert not [lib for lib in loaded["libraries"] if "libc" in lib], loaded["libraries"]


def test_import_streamsolve_classifier_is_lean():
    """``python -c "import streamsolve.classifier"``, through the real package __init__."""
    top = probe("normal", "streamsolve")
    if forbidden_loaded(top["modules"]):
        pytest.skip("streamsolve/__init__.py still imports the LM stack eagerly (made lazy "
                    "in another slice of issue 13); the package-only test covers the classifier")
    loaded = probe("normal", "streamsolve.classifier")
    assert forbidden_loaded(loaded["modules"]) == []
    assert not [lib for lib in loaded["libraries"] if "libc" in lib], loaded["libraries"]
