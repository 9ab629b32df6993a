"""``xp log``: sync runs into MLflow, re-applying the stages' loggers (``xp ui``: ``_ui_cli``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._catalog._run import Run
from .._catalog._runs import find_run_dirs, resolve_runs
from .._core._lock import load_lock
from .._core._progress import ProgressBar
from .._core._settings import Settings, load_settings
from ..errors import LockError, StageImportError

__all__ = ["load_stage", "log_command", "stage_of_run"]


# --- importing a stage again -----------------------------------------------------------


def load_stage(spec: str, settings: Settings) -> Any:
    """The stage named ``module:attribute`` or ``path/to/file.py:attribute``.

    Raises:
        StageImportError: the module cannot be imported or the attribute is not a stage.
    """
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        msg = f"--stage takes MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}"
        raise StageImportError(msg)
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _import_file(settings.resolve(target), settings)
    else:
        module = _import_module(target, settings)
    return _stage_attr(module, attr, spec)


def stage_of_run(run: Run, settings: Settings) -> Any:
    """Import the stage that made ``run`` from run.lock ``entry`` (module, qualname, file).

    A script's module (``__main__`` when it ran) is imported from its file under its own
    name, so its ``if __name__ == "__main__":`` block does not run.

    Raises:
        StageImportError: run.lock has no entry, or the stage cannot be imported.
    """
    entry = run.lock.extra.get("entry")
    if not isinstance(entry, Mapping) or not entry.get("qualname"):
        msg = f"{run.dir}: run.lock records no stage entry; give --stage MODULE:FUNCTION"
        raise StageImportError(msg)
    module_name, file = str(entry.get("module") or ""), str(entry.get("file") or "")
    module: types.ModuleType | None = None
    if module_name and module_name != "__main__":
        try:
            module = _import_module(module_name, settings)
        except StageImportError:
            if not file:
                raise
    if module is None:
        module = _import_file(settings.resolve(file), settings)
    return _stage_attr(module, str(entry["qualname"]), f"{file or module_name}:{entry['qualname']}")


def _stage_attr(module: types.ModuleType, attr: str, spec: str) -> Any:
    from .._api._stage import Stage

    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, Stage):
        msg = f"{spec} is not a stage (decorate the function with @xp.stage)"
        raise StageImportError(msg)
    return obj


def _on_path(*dirs: Path) -> None:
    for d in reversed(dirs):
        if str(d) not in sys.path:
            sys.path.insert(0, str(d))


def _import_module(name: str, settings: Settings) -> types.ModuleType:
    _on_path(settings.root)
    try:
        return importlib.import_module(name)
    except Exception as e:
        msg = f"cannot import stage module {name!r}: {type(e).__name__}: {e}"
        raise StageImportError(msg) from e


def _import_file(path: Path, settings: Settings) -> types.ModuleType:
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
    _on_path(path.parent, settings.root)
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


# --- xp log ----------------------------------------------------------------------------


def log_command(argv: list[str]) -> int:
    """``xp log [RUN...] [--stage MODULE:FUNCTION] [--all]``."""
    parser = argparse.ArgumentParser(
        prog="xp log",
        description=(
            "Sync runs into MLflow (idempotent: one MLflow run per run directory; only what is "
            "new is sent) and call each stage's @main.logger functions again on every run, "
            "without re-running the stage."
        ),
    )
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="run directory, directory of runs (results/train) or run id prefix "
        "(default: every run under the results directory)",
    )
    parser.add_argument(
        "--stage",
        metavar="MODULE:FUNCTION",
        help="take the loggers from this stage (MODULE:FUNCTION or FILE.py:FUNCTION) instead "
        "of importing each run's stage from run.lock; without RUN, only its runs",
    )
    parser.add_argument("--all", action="store_true", help="every run under the results directory")
    parser.add_argument("--no-loggers", action="store_true", help="sync only, call no logger")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    args = parser.parse_args(argv)
    if args.all and args.runs:
        parser.error("--all takes no RUN")
    settings = load_settings()
    forced = load_stage(args.stage, settings) if args.stage else None
    if args.runs:
        runs = resolve_runs(args.runs, settings=settings)
    else:
        runs = [Run(d) for d in find_run_dirs(None, settings=settings)]
        if forced is not None and not args.all:
            runs = [r for r in runs if _stage_name(r) == forced.name]
    return _log_runs(runs, settings, forced=forced, loggers=not args.no_loggers, quiet=args.quiet)


def _stage_name(run: Run) -> str | None:
    try:
        return run.stage
    except LockError:
        return None


def _log_runs(
    runs: list[Run], settings: Settings, *, forced: Any, loggers: bool, quiet: bool
) -> int:
    from .._tracking._mlflow import Syncer, reported, tracking_uri

    def say(text: str) -> None:
        print(f"xp log: {text}", file=sys.stderr)

    good = [r for r in runs if _stage_name(r) is not None]
    for bad in set(runs) - set(good):
        say(f"skipped {bad.dir}: {_lock_error(bad)}")
    failed = len(runs) - len(good)
    syncer = Syncer(settings=settings)
    syncer.prefetch({r.stage for r in good})
    stage_loggers = _loggers_for(good, settings, forced) if loggers else {}
    for stage, (_, problem) in stage_loggers.items():
        if problem is not None:
            failed += 1
            say(f"loggers of stage {stage!r} not applied: {problem}")
    created = points = 0
    shown = None if len(good) > 1 and not quiet else False
    with syncer.batch(), ProgressBar("xp log", total=len(good), enabled=shown) as bar:
        for run in good:
            fns = stage_loggers.get(run.stage, ([], None))[0]
            try:
                report = syncer.sync(run, loggers=fns)
                created += report.created
                points += report.metrics
            except Exception as e:
                failed += 1
                if not reported(e):  # a logger's failure was said with its name
                    say(f"{run.dir}: {type(e).__name__}: {e}")
            bar.advance()
    if not quiet:
        say(
            f"synced {len(good)} run(s) ({created} new, {points} metric points) "
            f"into {tracking_uri(settings)}" + (f"; {failed} problem(s)" if failed else "")
        )
    return 1 if failed else 0


def _lock_error(run: Run) -> str:
    try:
        load_lock(run.paths.lock)
    except LockError as e:
        return str(e)
    return "unreadable run.lock"


def _loggers_for(
    runs: list[Run], settings: Settings, forced: Any
) -> dict[str, tuple[list[Callable[..., Any]], str | None]]:
    """Per stage name: its loggers, or the reason they could not be imported."""
    out: dict[str, tuple[list[Callable[..., Any]], str | None]] = {}
    for run in runs:
        if run.stage in out:
            continue
        if forced is not None:
            out[run.stage] = (
                (list(forced.loggers), None) if forced.name == run.stage else ([], None)
            )
            continue
        if not isinstance(run.lock.extra.get("entry"), Mapping):
            out[run.stage] = ([], None)  # made before entries were recorded: nothing to apply
            continue
        try:
            out[run.stage] = (list(stage_of_run(run, settings).loggers), None)
        except StageImportError as e:
            out[run.stage] = ([], str(e))
    return out
