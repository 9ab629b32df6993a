"""Reload the project's own modules edited since the last console run (IPython only).

Uses IPython's autoreload machinery (``superreload`` also patches functions and classes
already imported elsewhere), restricted to modules that live in the project: neither the
standard library nor installed packages are ever reloaded.
"""

from __future__ import annotations

import contextlib
import os
import site
import sys
import sysconfig
import time
from typing import Any

from .._core._paths import PACKAGE_DIR
from .._core._settings import find_project_root

__all__ = ["enable_project_reload", "project_modules"]

_reloader: Any = None
_cell_started_s = 0.0


def enable_project_reload(shell: Any) -> None:
    """Check project modules for edits before every cell the console runs (idempotent)."""
    global _reloader, _cell_started_s
    if _reloader is None:
        from IPython.extensions.autoreload import ModuleReloader

        # records the mtime of every module imported so far
        _reloader = ModuleReloader(shell)  # type: ignore[no-untyped-call]  # IPython is untyped
        _reloader.enabled = True
        _reloader.check_all = False
        _cell_started_s = time.time()
        shell.events.register("pre_run_cell", _before_cell)
        shell.events.register("post_run_cell", _after_cell)
    _remember_new_modules()


def _before_cell(*_: Any) -> None:
    global _cell_started_s
    _remember_new_modules()
    _drop_stale_bytecode()
    _reloader.check()
    _cell_started_s = time.time()


def _drop_stale_bytecode() -> None:
    """Remove the cached bytecode of each module about to be reloaded.

    Python trusts a ``.pyc`` whose recorded source size and mtime (in whole seconds) match:
    a module edited within the second it was imported, its size unchanged (``N = 1000`` ->
    ``N = 2000``), would be reloaded from its old bytecode.
    """
    import importlib.util

    for name, baseline in list(_reloader.modules_mtimes.items()):
        file, mtime = _reloader.filename_and_mtime(sys.modules.get(name))
        if file and mtime is not None and mtime > baseline:
            with contextlib.suppress(OSError, ValueError, NotImplementedError):
                os.remove(importlib.util.cache_from_source(file))


def _after_cell(*_: Any) -> None:
    _remember_new_modules()


def _remember_new_modules() -> None:
    """Mark project modules reloadable and note the mtime of those imported since last time.

    ``ModuleReloader.check`` takes the mtime of a module it has never seen as its baseline,
    so a module first imported by a run (e.g. inside the stage body) and edited before the
    next cell would never be reloaded. Its baseline is the cell's start at the latest: a
    file written after the import was (possibly) done counts as edited.
    """
    for name in project_modules():
        _reloader.mark_module_reloadable(name)
        if name not in _reloader.modules_mtimes:
            _, mtime_s = _reloader.filename_and_mtime(sys.modules.get(name))
            if mtime_s is not None:
                _reloader.modules_mtimes[name] = min(mtime_s, _cell_started_s)


def project_modules() -> list[str]:
    """Names of imported modules whose file is inside the project root (not installed)."""
    root = str(find_project_root()) + os.sep
    skip = tuple(_installed_dirs())
    package = PACKAGE_DIR + os.sep
    names = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or name in ("__main__", "__mp_main__"):
            continue
        path = os.path.abspath(file)
        if path.startswith(root) and not path.startswith(skip) and not path.startswith(package):
            names.append(name)
    return names


def _installed_dirs() -> list[str]:
    dirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    dirs.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    return [os.path.abspath(d) + os.sep for d in dirs]
