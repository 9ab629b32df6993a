"""``xp push``, ``xp pull`` and ``xp store ls``: share runs through a store."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from .._share._pull import PullReport, pull
from .._share._store import list_store, push

__all__ = ["pull_command", "push_command", "store_command"]

_STORE_HELP = "a directory or an fsspec URL such as s3://bucket/path (default: [tool.xpkit] store)"


def push_command(argv: list[str]) -> int:
    """``xp push RUN... [--store URL] [--data] [--git-remote NAME]``."""
    parser = argparse.ArgumentParser(
        prog="xp push",
        description="Copy runs and their whole lineage (run directories and code) to a store.",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run directory, latest link or id prefix; or a stage's directory: all its runs",
    )
    parser.add_argument("--store", metavar="URL", help=_STORE_HELP)
    parser.add_argument(
        "--data",
        action="store_true",
        help="also push the input files the lineage read, as the versions its runs recorded",
    )
    parser.add_argument(
        "--git-remote", metavar="NAME", help="also push the code as refs/xpkit/runs/<id> there"
    )
    ns = parser.parse_args(argv)
    report = push(ns.runs, store=ns.store, data=ns.data, git_remote=ns.git_remote)
    for row in report.runs:
        detail = ""
        if row["state"] == "sent":
            kept = row["files"] - row["sent_files"]
            detail = f": {row['sent_files']} files, {_size(row['sent_bytes'])} sent, {kept} kept"
        print(f"{row['id']}  {row['stage']:<12} {row['dir']}  {row['state']}{detail}")
    for name in report.bundles:
        print(f"code: bundle {name}")
    if report.inputs is not None:
        sent = report.inputs
        print(
            f"inputs: {_count(sent.sent_files, 'file')}, {_size(sent.sent_bytes)} sent, "
            f"{sent.stored_files} already stored"
        )
        for line in sent.skipped:
            print(f"warning: input {line}", file=sys.stderr)
    print(f"pushed {len(report.runs)} runs in {report.duration_s:.1f} s")
    return 0


def pull_command(argv: list[str]) -> int:
    """``xp pull RUN_ID [--store URL] [--link] [--data] [--force]``."""
    parser = argparse.ArgumentParser(
        prog="xp pull",
        description=(
            "Bring a run and its whole lineage (run directories, code, and with --data its "
            "inputs) from a store; set each pulled stage's latest link."
        ),
    )
    parser.add_argument("run", metavar="RUN_ID", help="a unique prefix of the run id")
    parser.add_argument("--store", metavar="URL", help=_STORE_HELP)
    parser.add_argument(
        "--link", action="store_true", help="symlink from a filesystem store instead of copying"
    )
    parser.add_argument(
        "--data", action="store_true", help="also restore the missing inputs the lineage read"
    )
    parser.add_argument(
        "--force", action="store_true", help="with --data, replace inputs that differ here"
    )
    ns = parser.parse_args(argv)
    if ns.force and not ns.data:
        parser.error("--force only applies to --data")
    report = pull(ns.run, store=ns.store, link=ns.link, data=ns.data, force=ns.force)
    _print_pull(report)
    return 0


def _print_pull(report: PullReport) -> None:
    for row in report.runs:
        differing = row["differing"]
        detail = (
            f": {len(differing)} paths differ ({', '.join(differing[:3])})" if differing else ""
        )
        print(f"{row['id']}  {row['stage']:<12} {row['dir']}  {row['state']}{detail}")
    if report.code is not None and report.code.fetched:
        moved = report.code.branch_updated
        print(
            f"code: {_count(len(report.code.fetched), 'bundle')} fetched"
            + (f", branch at {moved[:12]}" if moved else "")
        )
    if report.inputs:
        n = report.inputs
        print(
            f"inputs: {n['restored']} restored ({_size(n['bytes'])}), {n['linked']} linked, "
            f"{n['present']} already here"
        )
    for line in report.latest:
        print(f"latest: {line}")
    for line in report.rerun:
        print(f"re-run {line}")
    for line in report.skipped_inputs:
        print(f"warning: input {line}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def store_command(argv: list[str]) -> int:
    """``xp store ls [--store URL] [--format table|json]``; ``xp store rm`` (``_rm_cli``)."""
    if argv[:1] == ["rm"]:  # its own parser, in _rm_cli
        from ._rm_cli import store_rm_command

        return store_rm_command(argv[1:])
    parser = argparse.ArgumentParser(prog="xp store", description="Inspect a store.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("rm", help="delete runs from a store (xp store rm --help)")
    ls = sub.add_parser("ls", help="list the runs a store holds")
    ls.add_argument("--store", metavar="URL", help=_STORE_HELP)
    ls.add_argument("--format", choices=("table", "json"), default="table")
    ns = parser.parse_args(argv)
    runs = list_store(ns.store)
    if ns.format == "json":
        print(json.dumps([asdict(r) for r in runs], indent=1))
        return 0
    header = ("id", "stage", "dir", "started", "size", "files", "complete", "inputs")
    rows: list[tuple[str, ...]] = [header]
    rows += [_ls_row(asdict(r)) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _ls_row(r: dict[str, Any]) -> tuple[str, ...]:
    started = r["started"][:19].replace("T", " ")
    complete = "yes" if r["complete"] else "NO"
    inputs = (
        r["inputs"]
        if r["inputs"] in ("none", "unknown")
        else f"{r['inputs']} ({_size(r['input_bytes'])})"
    )
    size = _size(r["bytes"])
    return (r["id"], r["stage"], r["dir"], started, size, str(r["files"]), complete, inputs)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover
