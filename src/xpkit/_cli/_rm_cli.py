"""``xp rm`` and ``xp store rm``: delete runs, showing first what goes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._api._rm import apply_rm, in_use_message, plan_rm
from .._core._settings import load_settings
from ..errors import RunInUseError

__all__ = ["rm_command", "store_rm_command"]

_LISTED = 20


def rm_command(argv: list[str]) -> int:
    """``xp rm RUN... [--force] [--dry-run] [--yes]`` or ``xp rm --where EXPR [PATH...]``."""
    p = argparse.ArgumentParser(
        prog="xp rm",
        description="Delete runs (their directories and their MLflow mirror). A run that a "
        "kept run lists as upstream is refused unless --force.",
        epilog="EXPR is the language of xp ls --where. Example: "
        "xp rm --where 'status == failed' --dry-run",
    )
    p.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="run directory, id prefix, or a directory of runs; with --where: where to look",
    )
    p.add_argument("-w", "--where", metavar="EXPR", help="delete the runs matching EXPR")
    p.add_argument("--force", action="store_true", help="delete runs that kept runs consumed")
    p.add_argument(
        "-n", "--dry-run", action="store_true", help="show what would go, delete nothing"
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")
    p.add_argument("--keep-mlflow", action="store_true", help="leave the MLflow mirror")
    args = p.parse_args(argv)
    settings = load_settings()
    removal = plan_rm(
        args.runs,
        where=args.where,
        dry_run=args.dry_run,
        mlflow=not args.keep_mlflow,
        settings=settings,
    )
    if not removal.runs:
        print("xp rm: no run matches; nothing deleted")
        return 0
    lines = [f"{_shown(run.dir)}  {run.id}  {run.stage}  {run.status}" for run in removal.runs]
    mirror = f" and {len(removal.mlflow_runs)} MLflow run(s)" if removal.mlflow_runs else ""
    what = f"{len(removal.runs)} run(s){mirror}"
    _listing(f"would delete {what}:" if args.dry_run else f"to delete: {what}:", lines)
    if removal.kept_by:
        message = in_use_message(removal.kept_by)
        if not args.force:
            raise RunInUseError(message)
        print(f"xp rm: --force: {message.split(';')[0]}", file=sys.stderr)
    if args.dry_run or not _confirmed(args, len(removal.runs)):
        return 0
    apply_rm(removal, settings=settings)
    print(f"deleted {len(removal.runs)} run(s){mirror}")
    return 0


def store_rm_command(argv: list[str]) -> int:
    """``xp store rm RUN... [--store URL] [--where EXPR] [--force] [--dry-run] [--yes]``."""
    from .._share._store_rm import store_rm

    p = argparse.ArgumentParser(
        prog="xp store rm",
        description="Delete runs from a store. A run that a kept stored run lists as "
        "upstream is refused unless --force; code bundles stay.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN_ID", help="id prefixes of stored runs")
    p.add_argument("--store", metavar="URL", help="a directory or an fsspec URL")
    p.add_argument("-w", "--where", metavar="EXPR", help="the runs matching EXPR (xp ls --where)")
    p.add_argument("--force", action="store_true", help="delete runs that kept runs need")
    p.add_argument(
        "-n", "--dry-run", action="store_true", help="show what would go, delete nothing"
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")
    args = p.parse_args(argv)
    plan = store_rm(args.runs, store=args.store, where=args.where, force=args.force, dry_run=True)
    if not plan.runs:
        print("xp store rm: no run matches; nothing deleted")
        return 0
    lines = [f"{rid}  {m.get('stage', '?')}  {m.get('dir', '?')}" for rid, m in plan.runs.items()]
    what = f"{len(plan.runs)} run(s) from {plan.store}"
    _listing(f"would delete {what}:" if args.dry_run else f"to delete: {what}:", lines)
    if args.dry_run or not _confirmed(args, len(plan.runs)):
        return 0
    store_rm(list(plan.runs), store=args.store, force=args.force)
    print(f"deleted {len(plan.runs)} run(s) from {plan.store}")
    return 0


def _listing(head: str, lines: Sequence[str]) -> None:
    print(head)
    for line in lines[:_LISTED]:
        print(f"  {line}")
    if len(lines) > _LISTED:
        print(f"  ... and {len(lines) - _LISTED} more")


def _confirmed(args: argparse.Namespace, count: int) -> bool:
    """``--yes``; else ask on a terminal; a ``--where`` off a terminal needs ``--yes``."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        if args.where is not None:
            print("xp rm: nothing deleted: --where without a terminal needs --yes", file=sys.stderr)
            return False
        return True
    try:
        answer = input(f"delete {count} run(s)? [y/N] ").strip().lower()
    except EOFError:
        answer = ""
    if answer not in ("y", "yes"):
        print("nothing deleted")
        return False
    return True


def _shown(path: str | os.PathLike[str]) -> str:
    text, here = os.fspath(path), os.getcwd() + os.sep
    return text[len(here) :] if text.startswith(here) else text
