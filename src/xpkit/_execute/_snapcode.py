"""Running a snapshot's code: this process imports the project's modules from a code tree.

A worker of a map or sweep, and the process of ``xp rerun``, call :func:`use_tree` before
they load the stage: every ``sys.path`` entry inside the live project (the working
directory, the script's directory, a ``src/`` folder) is pointed at the same place in the
tree, and the project's modules already imported from elsewhere (the live tree, another
tree: a reused worker process) are forgotten, so that the next import reads the snapshot.
xpkit's own modules and installed packages are left alone.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._core._paths import PACKAGE_DIR
from .._record._codetree import CodeTree
from .._record._plan import StageInfo
from ._entry import stage_of_entry

__all__ = ["stage_in_tree", "use_tree"]

_ENV_DIRS = frozenset({"site-packages", "dist-packages", ".venv", "venv", ".tox", ".nox"})
_current: list[Path] = []  # the tree this process imports from, once switched


def use_tree(tree: CodeTree) -> None:
    """Make this process import the project's code from ``tree`` (idempotent)."""
    if _current == [tree.dir] and str(tree.dir) in sys.path:
        return
    sys.path[:] = list(dict.fromkeys(_mapped(entry, tree) for entry in sys.path))
    if str(tree.dir) not in sys.path:
        sys.path.insert(0, str(tree.dir))
    for name in _stale_modules(tree):
        del sys.modules[name]
    importlib.invalidate_caches()
    _current[:] = [tree.dir]


def stage_in_tree(entry: Mapping[str, Any], tree: CodeTree) -> StageInfo:
    """The stage of a run.lock ``entry``, imported from ``tree`` (after :func:`use_tree`).

    Raises:
        StageImportError: the stage cannot be imported from the tree.
    """
    use_tree(tree)
    file = str(entry.get("file") or "")
    if file and os.path.isabs(file):  # recorded outside the project: its place in the tree
        inside = tree.tree_path(file)
        entry = {**entry, "file": str(inside) if inside is not None else file}
    return stage_of_entry(entry, tree.dir)


def _mapped(entry: str, tree: CodeTree) -> str:
    """A ``sys.path`` entry, pointed into the tree when it lies in the live project."""
    path = Path(os.path.abspath(entry or os.curdir))
    if _installed(path) or str(path).startswith(PACKAGE_DIR):
        return entry
    trees = tree.worktree.parent
    if path.is_relative_to(trees):  # a tree (this one, or another: a reused worker)
        rel = path.relative_to(trees).parts[1:]
        inside: Path | None = tree.worktree.joinpath(*rel)
    else:
        inside = tree.tree_path(path)
    return str(inside) if inside is not None and inside.is_dir() else entry


def _installed(path: Path) -> bool:
    return bool(_ENV_DIRS.intersection(path.parts))


def _stale_modules(tree: CodeTree) -> list[str]:
    """Modules imported from the live project or another tree, not from ``tree``."""
    live, trees = str(tree.root), str(tree.worktree.parent)
    stale = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name == "__main__" or not isinstance(file, str):
            continue
        path = os.path.abspath(file)
        if path.startswith(PACKAGE_DIR) or _installed(Path(path)):
            continue
        if path.startswith((live + os.sep, trees + os.sep)) and not path.startswith(
            str(tree.dir) + os.sep
        ):
            stale.append(name)
    return stale
