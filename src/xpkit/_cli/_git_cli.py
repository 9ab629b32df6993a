"""``xp checkout RUN [DIR]``: restore a run's code snapshot as a git worktree."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from .._catalog._runs import resolve_run
from .._core._lock import decode_lock
from .._core._paths import RunPaths
from .._core._settings import find_project_root
from .._core._yaml import load_yaml, yaml_error_where
from .._record._git import checkout
from ..errors import LockError

__all__ = ["checkout_command"]


def checkout_command(args: list[str]) -> int:
    """Run ``xp checkout RUN [DIR]``; print the new worktree's path.

    Raises:
        XpkitError: no such run, no snapshot in its run.lock, or git failed (``xp`` prints it).
    """
    parser = argparse.ArgumentParser(
        prog="xp checkout",
        description="Restore the code snapshot of a run as a detached git worktree.",
    )
    parser.add_argument("run", metavar="RUN", help="run directory, latest link or id prefix")
    parser.add_argument(
        "dir", metavar="DIR", nargs="?", help="where to put it (default: <repo>-<sha> next to it)"
    )
    ns = parser.parse_args(args)
    run_dir = resolve_run(ns.run).dir
    dest = checkout(find_project_root(run_dir), _snapshot_commit(run_dir), ns.dir)
    print(dest)
    return 0


def _snapshot_commit(run_dir: Path) -> str:
    """``src.commit`` of the run's lock, read leniently: the rest of the lock may be damaged."""
    lock = RunPaths(run_dir).lock
    try:
        data: Any = load_yaml(decode_lock(lock.read_bytes(), lock))
    except OSError as e:
        msg = f"{lock}: cannot read run.lock ({e.strerror or e})"
        raise LockError(msg) from None
    except yaml.YAMLError as e:
        msg = f"{lock}: invalid YAML{yaml_error_where(e)}"
        raise LockError(msg) from None
    src = data.get("src") if isinstance(data, dict) else None
    commit = src.get("commit") if isinstance(src, dict) else None
    if not isinstance(commit, str) or not commit:
        why = src.get("error") if isinstance(src, dict) else None
        msg = f"{lock}: the run has no code snapshot (src.commit){f': {why}' if why else ''}"
        raise LockError(msg)
    return commit
