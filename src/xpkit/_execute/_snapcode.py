"""Running a snapshot's code: this process imports the project's modules from a code tree.

A worker of a map or sweep, and the process of ``xp rerun``, call :func:`use_tree` before
they load the stage: every ``sys.path`` entry inside the live project (the working
directory, the script's directory, a ``src/`` folder) is pointed at the same place in the
tree, a package of the project installed editable through setuptools' import finder (which
maps its name to its folder in the live project) is found at the same place in the tree,
and the project's modules already imported from elsewhere (the live tree, another tree: a
reused worker process) are forgotten, so that the next import reads the snapshot. xpkit's
own modules and installed packages are left alone.
"""

from __future__ import annotations

import importlib
import importlib.abc
import os
import sys
from collections.abc import Mapping, Sequence
from importlib.machinery import ModuleSpec, all_suffixes
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType
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
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TreeFinder)]
    places = _editable_places(tree)
    if places:
        sys.meta_path.insert(0, _TreeFinder(places))
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


class _TreeFinder(importlib.abc.MetaPathFinder):
    """The project's packages that an editable install maps into the live project, found at
    the same place in the tree (ahead of the install's own finder)."""

    def __init__(self, places: Mapping[str, Path]) -> None:
        self.places = dict(places)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        place = self.places.get(fullname)
        if place is None:
            return None
        for candidate in [place / "__init__.py", *map(place.with_suffix, all_suffixes())]:
            if candidate.is_file():
                return spec_from_file_location(fullname, candidate)
        return None  # not in the snapshot: the install's finder decides


def _editable_places(tree: CodeTree) -> dict[str, Path]:
    """``{top-level name: its place in the tree}`` for the names that setuptools' editable
    finders (``__editable___*_finder``: a ``MAPPING`` of name to folder) send into the live
    project."""
    places: dict[str, Path] = {}
    for finder in sys.meta_path:
        module_name = getattr(finder, "__module__", None)
        module = sys.modules.get(module_name) if isinstance(module_name, str) else None
        mapping = getattr(module, "MAPPING", None)
        if isinstance(finder, _TreeFinder) or not isinstance(mapping, dict):
            continue
        for name, folder in mapping.items():
            inside = tree.tree_path(folder) if isinstance(folder, str) else None
            if isinstance(name, str) and inside is not None:
                places.setdefault(name, inside)
    return places


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
