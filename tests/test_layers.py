"""The package's layers: which layer may import which, and no import cycle anywhere.

Every import counts: at module level, inside functions and under ``TYPE_CHECKING``.
docs/architecture.md draws the same table.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "xpkit"

# layer -> the layers it may import (besides itself); "errors" is the exceptions module
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_core": {"errors"},
    "_catalog": {"errors", "_core"},
    "_record": {"errors", "_core", "_catalog"},
    "_execute": {"errors", "_core", "_catalog", "_record"},
    "_share": {"errors", "_core", "_catalog", "_record"},
    "_tracking": {"errors", "_core", "_catalog", "_record", "_execute"},
    "_parallel": {"errors", "_core", "_catalog", "_record", "_execute"},
    "_api": {"errors", "_core", "_catalog", "_record", "_execute", "_tracking", "_parallel"},
    "_cli": {
        *("errors", "_core", "_catalog", "_record", "_execute"),
        *("_tracking", "_parallel", "_share", "_api", "__init__"),
    },
    "__init__": {"errors", "_core", "_catalog", "_record", "_execute", "_tracking", "_share"}
    | {"_api"},
    "__main__": {"_cli"},
}
# integrations (imported lazily where used) a layer may reach; the core never reaches them
INTEGRATIONS = {"mlflow", "joblib", "submitit", "fsspec", "rich", "pandas", "IPython"}
MAY_USE = {
    "_core": {"rich"},  # the progress bar, when a terminal shows it
    "_catalog": {"pandas"},  # Runs.to_pandas
    "_parallel": {"joblib", "submitit"},
    "_tracking": {"mlflow"},
    "_share": {"fsspec"},
    "_api": {"IPython"},
    "_cli": {"rich"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, as absolute names (relative imports resolved)."""
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


@functools.cache
def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules} - {name} for name, path in modules.items()
    }


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_belongs_to_a_layer() -> None:
    """``ls src/xpkit`` shows the architecture: every module sits in a known layer."""
    unknown = {m for m in _graph() if _layer(m) not in ALLOWED}
    assert not unknown


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_the_layers_below(layer: str) -> None:
    """A layer imports only the layers it stands on (imports inside functions included)."""
    wrong = {
        (module, target)
        for module, targets in _graph().items()
        if _layer(module) == layer
        for target in targets
        if _layer(target) not in ALLOWED[layer] | {layer}
    }
    assert not wrong


@pytest.mark.parametrize("layer", sorted(set(ALLOWED) - {"__init__", "__main__"}))
def test_integrations_only_where_used(layer: str) -> None:
    """mlflow, joblib, submitit, fsspec, rich, pandas and IPython only in their layers."""
    used = {
        (path.name, name)
        for path in (PACKAGE / layer).glob("*.py")
        if layer != "errors"
        for name in _imports(path)
        if name.split(".")[0] in INTEGRATIONS - MAY_USE.get(layer, set())
    }
    assert not used


def test_no_import_cycle() -> None:
    """No module imports itself through others, not even through imports inside functions."""
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles
