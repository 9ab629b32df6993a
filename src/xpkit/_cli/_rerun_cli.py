"""``xp rerun RUN [--verify] [--failed] [--allow-changed-data] [KEY=VALUE ...]``."""

from __future__ import annotations

import argparse
import sys

from .._api._rerun import Rerun, rerun_run
from .._core._paths import display_path
from .._parallel._registry import BACKENDS
from .._record._verify import EXCLUDED

__all__ = ["rerun_command"]

EXIT_DIFFERS = 1


def rerun_command(args: list[str]) -> int:
    """Run ``xp rerun``; exit 0 when the rerun completed (and, with ``--verify``, made the
    same outputs), 1 otherwise.

    Raises:
        XpkitError: the run cannot be rerun (``xp`` prints it as one line, exit 2).
    """
    ns = _parser().parse_args(args)
    done = rerun_run(
        ns.run,
        verify=ns.verify,
        failed=ns.failed,
        allow_changed_data=ns.allow_changed_data,
        dotlist=ns.overrides,
        backend=ns.backend,
        jobs=ns.jobs,
        argv=["xp", "rerun", *args],
    )
    run = done.run
    print(f"rerun of {done.original.id}: run {run.id} {run.status} in {display_path(run.dir)}")
    if done.comparison is None:
        return 0 if run.status in ("completed", "running") else EXIT_DIFFERS
    _print_comparison(done)
    return 0 if done.comparison.ok and run.status == "completed" else EXIT_DIFFERS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xp rerun",
        description=(
            "Run a past run again from its code snapshot (a git worktree: your working tree "
            "is untouched), its recorded config, upstream runs and inputs (their hashes are "
            "checked first). The new run's run.lock says rerun_of: <id>."
        ),
    )
    parser.add_argument("run", metavar="RUN", help="run directory, latest link or id prefix")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (recorded)"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help=(
            "compare the output files with the original's by xxh3 (left out: "
            f"{', '.join(EXCLUDED)}; metrics.jsonl without its times); exit 0 only if identical"
        ),
    )
    parser.add_argument(
        "--failed", action="store_true", help="a map: rerun only the tasks that did not succeed"
    )
    parser.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="run even when a recorded input changed since (its new hash is recorded)",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, help="a map: where to run it (default: as recorded)"
    )
    parser.add_argument("--jobs", type=int, metavar="N", help="a map on joblib: processes")
    return parser


def _print_comparison(done: Rerun) -> None:
    comparison = done.comparison
    assert comparison is not None
    lines = [f"  differing  {p}" for p in comparison.differing]
    lines += [f"  missing    {p}  (not made by the rerun)" for p in comparison.missing]
    lines += [f"  extra      {p}  (made by the rerun only)" for p in comparison.extra]
    if comparison.ok:
        print(f"identical: {len(comparison.identical)} output files")
        return
    counts = (
        f"{len(comparison.identical)} identical, {len(comparison.differing)} differing,"
        f" {len(comparison.missing)} missing, {len(comparison.extra)} extra"
    )
    print(f"NOT identical ({counts}):", *lines, sep="\n", file=sys.stdout)
