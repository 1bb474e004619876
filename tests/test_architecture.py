"""The package's shape: import layering, no cycles, module size, a lazy top-level import.

The rules are those of docs/design.md section 7 (packages and what each may import):

- ``core`` imports nothing of ours outside ``core``;
- ``text`` and ``store`` import only ``core`` (and themselves);
- ``engine`` imports only ``core``, ``text`` and ``store`` (and itself);
- ``classifier`` imports only ``core``, ``engine.runtime``, the store's ownership and
  integrity helpers (``store.location``, ``store.integrity``) and itself;
- the top-level modules (``api``, ``cli``, ``language_model``, ...) may import anything above;
- no import cycle, neither at module level nor through imports deferred into functions;
- no module over `MAX_MODULE_LINES` lines.

The graph is read from the source with `ast` (every ``import`` and ``from ... import``, at
module level or inside a function), so the test needs nothing imported. Violations known
when the test was written are listed in `KNOWN_LAYER_VIOLATIONS`, `KNOWN_DEFERRED_CYCLES`
and `KNOWN_OVERSIZED`; their cases are strict xfails, so the entry must be removed once its
fix lands (the case then passes and strict mode reports it).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import time_limit

PACKAGE = "streamsolve"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE
MAX_MODULE_LINES = 600
#: Leaf modules that import nothing of ours: every layer may use them.
SHARED_LEAVES = ("versions", "extras")

#: Layer package -> the parts of the package its modules may import (a dotted prefix
#: relative to the package: "engine.runtime" allows that module only).
ALLOWED_IMPORTS = {
    "core": ("core",),
    "text": ("core", "text"),
    "store": ("core", "store"),
    "engine": ("core", "text", "store", "engine"),
    "classifier": ("core", "engine.runtime", "store.location", "store.integrity", "classifier"),
    "network": ("core", "text", "store", "engine", "documents", "language_model", "refine",
                "network"),
}

#: Module -> why it breaks the layering today (being fixed in parallel with this test).
KNOWN_LAYER_VIOLATIONS: dict[str, str] = {}

#: Module -> the import cycle it sits on through imports deferred into functions.
KNOWN_DEFERRED_CYCLES: dict[str, str] = {}

#: Module -> why it is over MAX_MODULE_LINES today.
KNOWN_OVERSIZED: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    """One import of a module of ours: who imports what, where, and whether at module level."""

    source: str
    target: str
    line: int
    module_level: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULE_PATHS = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}
MODULES = sorted(MODULE_PATHS)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module named by a ``from`` import (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    is_package = MODULE_PATHS[module].name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports_of(module: str) -> list[Import]:
    """Every import of one of our modules in ``module``, module-level or deferred."""
    tree = ast.parse(MODULE_PATHS[module].read_text(encoding="utf-8"))
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, child)
                # ``from .pkg import module`` imports the module; ``from .mod import name`` the module.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULE_PATHS
                           else base for alias in child.names]
            else:
                deferred = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, module_level and not deferred and not _is_type_checking_block(child))
                continue
            for target in dict.fromkeys(targets):
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    found.append(Import(module, target, child.lineno, module_level))

    visit(tree, True)
    return found


IMPORTS = {module: _imports_of(module) for module in MODULES}


def _layer(module: str) -> str | None:
    """The subpackage a module belongs to (None for the top-level modules)."""
    parts = module.split(".")
    package = ".".join(parts[:2])
    is_subpackage = len(parts) >= 2 and MODULE_PATHS[package].name == "__init__.py"
    return parts[1] if is_subpackage else None


def _cycles(module_level_only: bool) -> list[list[str]]:
    """The strongly connected components with more than one module (or a self-import)."""
    graph = {module: sorted({i.target for i in IMPORTS[module]
                             if i.target in MODULE_PATHS and (i.module_level or not module_level_only)})
             for module in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    for module in MODULES:
        if module not in index:
            connect(module)
    return components


def _cases(known: dict[str, str]) -> list:
    """One case per module; the known offenders as strict xfails."""
    return [pytest.param(module, id=module,
                         marks=[pytest.mark.xfail(strict=True, reason=known[module])]
                         if module in known else [])
            for module in MODULES]


def test_graph_sees_the_package():
    assert {"streamsolve.core.counting", "streamsolve.api", "streamsolve.cli"} <= set(MODULES)
    assert any(i.target == "streamsolve.core.counting" for i in IMPORTS["streamsolve.ingest"])
    assert any(not i.module_level for imports in IMPORTS.values() for i in imports)


@pytest.mark.parametrize("known", [KNOWN_LAYER_VIOLATIONS, KNOWN_DEFERRED_CYCLES, KNOWN_OVERSIZED],
                         ids=["layer", "cycle", "size"])
def test_known_violations_name_existing_modules(known):
    """A renamed or deleted module must take its known-violation entry with it."""
    assert set(known) <= set(MODULES)


def test_no_import_cycle_at_module_level():
    assert _cycles(module_level_only=True) == []


@pytest.mark.parametrize("module", _cases(KNOWN_DEFERRED_CYCLES))
def test_module_is_on_no_import_cycle(module):
    """Deferring an import into a function hides a cycle from Python, not from the reader."""
    cycles = [cycle for cycle in _cycles(module_level_only=False) if module in cycle]
    assert cycles == []


@pytest.mark.parametrize("module", _cases(KNOWN_LAYER_VIOLATIONS))
def test_module_imports_only_what_its_layer_may(module):
    layer = _layer(module)
    if layer is None:
        return  # top-level modules (api, cli, ...) may import any layer
    assert layer in ALLOWED_IMPORTS, (f"new package {layer}/: state what it may import in "
                                      "ALLOWED_IMPORTS and in docs/design.md section 7")
    allowed = tuple(f"{PACKAGE}.{prefix}" for prefix in ALLOWED_IMPORTS[layer] + SHARED_LEAVES)
    forbidden = [f"{i.target} (line {i.line})" for i in IMPORTS[module]
                 if not any(i.target == a or i.target.startswith(a + ".") for a in allowed)]
    assert forbidden == [], f"{module} ({layer}/) may import only {ALLOWED_IMPORTS[layer]}"


@pytest.mark.parametrize("module", _cases(KNOWN_OVERSIZED))
def test_module_is_at_most_600_lines(module):
    lines = len(MODULE_PATHS[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES


# -- what importing does ---------------------------------------------------------------------

def _run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter importing this checkout; it prints one JSON value."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent),
                                                      env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=time_limit(120), check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_streamsolve_is_lazy():
    loaded = _run_python(
        "import json, sys, streamsolve\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'streamsolve' or "
        "m.split('.')[0] in ('streamsolve', 'dask', 'zarr', 'tokenizers', 'scipy'))))")
    assert loaded == ["streamsolve"]


def test_torch_bridge_is_an_attribute_imported_on_first_use():
    pytest.importorskip("torch")
    loaded = _run_python(
        "import json, sys, streamsolve\n"
        "before = 'torch' in sys.modules\n"
        "bridge = streamsolve.torch\n"
        "print(json.dumps([before, bridge.__name__, callable(bridge.load)]))")
    assert loaded == [False, "streamsolve.torch", True]


def test_import_classifier_loads_no_language_model_stack():
    loaded = _run_python(
        "import json, sys, streamsolve.classifier\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('streamsolve', 'tokenizers', 'zarr', 'distributed'))))")
    allowed = ("streamsolve.classifier", "streamsolve.core", "streamsolve.engine.runtime")
    assert [m for m in loaded if m not in (PACKAGE, "streamsolve.engine")
            and not any(m == a or m.startswith(a + ".") for a in allowed)] == []


def test_importing_every_module_has_no_side_effects():
    """No allocator tuning, logging configuration or environment change at import time."""
    modules = [m for m in MODULES if m != "streamsolve.__main__"]
    report = _run_python(
        "import importlib, json, logging, os\n"
        "environ = dict(os.environ)\n"
        "handlers = list(logging.getLogger().handlers), logging.getLogger().level\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from streamsolve.engine import memory\n"
        "loggers = [n for n, l in logging.root.manager.loggerDict.items()\n"
        "           if isinstance(l, logging.Logger) and (l.handlers or l.level)]\n"
        "print(json.dumps({'allocator_tuned': memory._ALLOCATOR_TUNED,\n"
        "                  'environ_changed': sorted(k for k in set(environ) | set(os.environ)\n"
        "                                            if environ.get(k) != os.environ.get(k)),\n"
        "                  'root_changed': handlers != (list(logging.getLogger().handlers),\n"
        "                                               logging.getLogger().level),\n"
        "                  'configured_loggers': sorted(n for n in loggers\n"
        "                                               if n.split('.')[0] == 'streamsolve')}))")
    assert report == {"allocator_tuned": False, "environ_changed": [], "root_changed": False,
                      "configured_loggers": []}


def test_public_names_resolve_on_first_use():
    import importlib.metadata

    import streamsolve

    for name in streamsolve.__all__:
        assert getattr(streamsolve, name) is not None
        assert name in dir(streamsolve)
    assert streamsolve.finalize_counts is importlib.import_module("streamsolve.core.weights").finalize
    assert streamsolve.__version__ == importlib.metadata.version("streamsolve")
    with pytest.raises(AttributeError, match="no_such_name"):
        streamsolve.no_such_name  # noqa: B018


def test_shared_leaves_import_nothing_of_ours():
    for leaf in SHARED_LEAVES:
        module = f"{PACKAGE}.{leaf}"
        assert [i.target for i in IMPORTS[module]] == [], f"{module} must stay a leaf"


def test_readme_layout_table_names_every_module():
    """The README's "Layout of the code" table matches the tree: every module is named in it."""
    readme = (PACKAGE_DIR.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Layout of the code", 1)[1].split("\n## ", 1)[0]
    missing = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        relative = path.relative_to(PACKAGE_DIR.parent).as_posix()
        package_row = f"`{relative.rsplit('/', 1)[0]}/`"
        if (f"`{relative}`" not in table and f"`{path.name}`" not in table
                and f"`{path.stem}`" not in table and package_row not in table):
            missing.append(relative)
    assert missing == [], f"README layout table does not name: {missing}"
