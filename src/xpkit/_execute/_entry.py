"""Where a stage is defined (run.lock ``entry``), and importing it again from there.

``xp log`` re-applies a stage's loggers to its past runs without re-running them: it
imports the stage from the ``entry`` its runs recorded. A script's module (``__main__`` when
it ran) is imported from its file under its own name, so that its
``if __name__ == "__main__":`` block does not run.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._record._plan import StageInfo
from ..errors import StageImportError

if TYPE_CHECKING:
    from .._catalog._run import Run
    from .._core._settings import Settings

__all__ = ["entry_record", "find_entry", "load_stage", "stage_of_entry", "stage_of_run"]


def find_entry(stage: object, fn: Callable[..., Any]) -> dict[str, str]:
    """``{module, qualname, file}`` of ``stage`` (whose function is ``fn``); file absolute.

    The qualname is the module attribute holding the stage when there is one (the decorated
    name), else the function's qualified name.
    """
    module_name = getattr(fn, "__module__", None) or ""
    module = sys.modules.get(module_name)
    name = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", ""))
    for attr, value in vars(module).items() if module is not None else ():
        if value is stage:
            name = attr
            break
    code = getattr(fn, "__code__", None)
    file = getattr(module, "__file__", None) or getattr(code, "co_filename", None)
    return {"module": module_name, "qualname": name, "file": os.path.abspath(file) if file else ""}


def entry_record(
    entry: Mapping[str, str], settings: Settings, *, base: Path | None = None
) -> dict[str, str]:
    """The run.lock ``entry``: its file relative to the project root, or to ``base`` (the
    code tree the stage was imported from)."""
    file = entry.get("file") or ""
    if file and base is not None and Path(file).is_relative_to(base):
        return {**entry, "file": Path(file).relative_to(base).as_posix()}
    return {**entry, "file": settings.relative(file) if file else ""}


def load_stage(spec: str, settings: Settings) -> StageInfo:
    """The stage named ``module:attribute`` or ``path/to/file.py:attribute``.

    Raises:
        StageImportError: the module cannot be imported or the attribute is not a stage.
    """
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        msg = f"--stage takes MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}"
        raise StageImportError(msg)
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _import_file(settings.resolve(target), settings.root)
    else:
        module = _import_module(target, settings.root)
    return _stage_attr(module, attr, spec)


def stage_of_run(run: Run, settings: Settings) -> StageInfo:
    """Import the stage that made ``run`` from run.lock ``entry`` (module, qualname, file).

    Raises:
        StageImportError: run.lock has no entry, or the stage cannot be imported.
    """
    entry = run.lock.extra.get("entry")
    if not isinstance(entry, Mapping) or not entry.get("qualname"):
        msg = f"{run.dir}: run.lock records no stage entry; give --stage MODULE:FUNCTION"
        raise StageImportError(msg)
    return stage_of_entry(entry, settings.root)


def stage_of_entry(entry: Mapping[str, Any], base: Path) -> StageInfo:
    """Import the stage of a run.lock ``entry`` from the project at ``base`` (its root, or
    a code tree of a snapshot); a relative ``file`` is relative to ``base``.

    Raises:
        StageImportError: the stage cannot be imported from there.
    """
    module_name, file = str(entry.get("module") or ""), str(entry.get("file") or "")
    module: types.ModuleType | None = None
    if module_name and module_name != "__main__":
        try:
            module = _import_module(module_name, base)
        except StageImportError:
            if not file:
                raise
    if module is None:
        module = _import_file(base / file, base)
    return _stage_attr(module, str(entry["qualname"]), f"{file or module_name}:{entry['qualname']}")


def _stage_attr(module: types.ModuleType, attr: str, spec: str) -> StageInfo:
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, StageInfo):
        msg = f"{spec} is not a stage (decorate the function with @xp.stage)"
        raise StageImportError(msg)
    return obj


def _on_path(*dirs: Path) -> None:
    for d in reversed(dirs):
        if str(d) not in sys.path:
            sys.path.insert(0, str(d))


def _import_module(name: str, base: Path) -> types.ModuleType:
    _on_path(base)
    try:
        return importlib.import_module(name)
    except Exception as e:
        msg = f"cannot import stage module {name!r}: {type(e).__name__}: {e}"
        raise StageImportError(msg) from e


def _import_file(path: Path, base: Path) -> types.ModuleType:
    path = path.resolve()
    if not path.is_file():
        msg = f"cannot import stage: no file {path}"
        raise StageImportError(msg)
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded
        name = f"_xpkit_stage_{path.stem}"
    _on_path(path.parent, base)
    import importlib.util  # importing a stage again is rare: not at ``import xpkit``

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        msg = f"cannot import stage from {path}: not a Python file"
        raise StageImportError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        msg = f"cannot import stage from {path}: {type(e).__name__}: {e}"
        raise StageImportError(msg) from e
    return module
