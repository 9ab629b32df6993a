"""Removing runs from the pile: which runs go, which kept runs still need them, and links.

A run that a kept run lists as upstream (directly or through its upstream's own locks) is
needed: its directory holds what the kept run consumed. The ids a run lists are read from
the ``upstream`` section of its run.lock text (every ``id:`` line in it), without parsing
the YAML: a pile of 100,000 runs is scanned in seconds, and a false match can only make
a removal more careful.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._core._paths import LOCK, RunPaths, latest_link, point_latest
from .._core._settings import Settings
from ..errors import RunDirError
from ._run import Run
from ._runs import Runs, find_run_dirs, resolve_runs, runs

__all__ = [
    "Dependent",
    "delete_runs",
    "dependents",
    "relink_latest",
    "select_runs",
    "upstream_ids",
]

_ID_LINE = re.compile(r"^[ \t]+id:[ \t]*['\"]?([^'\"\s]+)['\"]?[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Dependent:
    """A kept run that lists a run to remove as its upstream."""

    needed: Run  # the run that would be removed
    by: str  # the kept run's directory


def select_runs(
    specs: Sequence[str | os.PathLike[str] | Run],
    *,
    where: str | None,
    settings: Settings,
) -> list[Run]:
    """The runs named by ``specs`` (run dirs, id prefixes, stage dirs), or, with ``where``,
    the runs matching it at or below ``specs`` (default: the results directory)."""
    if where is None:
        return resolve_runs(specs, settings=settings)
    paths = [os.fspath(s.dir if isinstance(s, Run) else s) for s in specs] or None
    return list(runs(paths, where=where, settings=settings))


def upstream_ids(lock_path: str | os.PathLike[str]) -> set[str]:
    """Every run id in the ``upstream`` section of a run.lock ({} when unreadable)."""
    try:
        text = Path(lock_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    start = text.find("\nupstream:")
    if start < 0:
        return set()
    end = re.search(r"^\S", text[start + 10 :], re.MULTILINE)
    section = text[start : start + 10 + end.start()] if end else text[start:]
    return set(_ID_LINE.findall(section))


def dependents(targets: Iterable[Run], *, settings: Settings) -> list[Dependent]:
    """The kept runs (every run under the results directory but ``targets``) that list one
    of ``targets`` as upstream."""
    by_id = {run.id: run for run in targets}
    gone = {os.path.realpath(run.dir) for run in by_id.values()}
    found: list[Dependent] = []
    for run_dir in find_run_dirs(None, settings=settings):
        if os.path.realpath(run_dir) in gone:
            continue
        for run_id in upstream_ids(os.path.join(run_dir, LOCK)) & by_id.keys():
            found.append(Dependent(by_id[run_id], run_dir))
    return found


def delete_runs(targets: Iterable[Run], *, settings: Settings) -> list[Path]:
    """Delete each run directory (a linked run: only the link), then point each stage's
    ``latest`` link at its newest remaining run, or remove it; the directories deleted.

    Raises:
        RunDirError: a directory cannot be deleted (the ones before it are gone).
    """
    deleted: list[Path] = []
    stages: set[Path] = set()
    for run in targets:
        path = Path(run.dir)
        stages.add(path.absolute().parent)
        try:
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            msg = f"cannot delete run directory {run.dir}: {e.strerror or e}"
            raise RunDirError(msg) from None
        deleted.append(path)
    for stage_dir in stages:
        relink_latest(stage_dir, settings=settings)
    return deleted


def relink_latest(stage_dir: Path, *, settings: Settings) -> None:
    """Point ``stage_dir/latest`` at the newest run left there, or remove a dangling link."""
    link = latest_link(stage_dir)
    if not link.is_symlink() or link.exists():
        return
    left = [
        str(p)
        for p in (stage_dir.iterdir() if stage_dir.is_dir() else ())
        if not p.is_symlink() and RunPaths(p).lock.is_file()
    ]
    dated = [(r.started, r) for r in Runs.load(left, settings=settings) if r.started is not None]
    if dated:
        point_latest(Path(max(dated, key=lambda pair: pair[0])[1].dir))
    else:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
