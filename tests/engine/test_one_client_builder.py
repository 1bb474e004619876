"""One place connects to a Dask scheduler: `streamsolve.engine.runtime.connect_client`
(its timeout, TLS check and one-line errors); nothing else builds a ``distributed.Client``
(issue 16)."""

from __future__ import annotations

import ast
from pathlib import Path

import streamsolve

PACKAGE = Path(streamsolve.__file__).parent


def _client_builders() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else \
                    func.attr if isinstance(func, ast.Attribute) else None
                if name in ("Client", "get_client"):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_only_the_runtime_builds_a_dask_client():
    builders = _client_builders()
    # connect_client (a new connection) and task_client (a task's own worker client)
    assert len(builders) == 2 and all(b.startswith("engine/runtime.py:") for b in builders), \
        builders


def test_cluster_connects_through_the_runtime():
    from streamsolve.engine import cluster, runtime

    assert cluster.connect_client is runtime.connect_client
