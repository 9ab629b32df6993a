"""``xp log``: sync runs into MLflow, re-applying the stages' loggers (``xp ui``: ``_ui_cli``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._catalog._run import Run
from .._catalog._runs import find_run_dirs, resolve_runs
from .._core._settings import Settings, load_settings
from .._execute._entry import load_stage
from ..errors import LockError

__all__ = ["log_command"]


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
    from .._tracking._batch import sync_many
    from .._tracking._mlflow import tracking_uri

    report = sync_many(
        runs,
        settings=settings,
        loggers=None if loggers else (),
        stage=forced,
        progress=None if len(runs) > 1 and not quiet else False,
    )
    for problem in filter(None, report.problems):
        print(f"xp log: {problem}", file=sys.stderr)
    if not quiet:
        failed = f"; {len(report.problems)} problem(s)" if report.problems else ""
        print(
            f"xp log: synced {len(report.ids)} run(s) ({report.created} new, {report.points}"
            f" metric points) into {tracking_uri(settings)}{failed}",
            file=sys.stderr,
        )
    return 1 if report.problems else 0
