"""The ``src`` section of run.lock: the code snapshot of a run and its own source files.

The snapshot itself is :func:`xpkit._git.snapshot`; this module decides what a run records.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GitError
from ._git import Snapshot, StrPath, files_blobs, snapshot

if TYPE_CHECKING:
    from ._plan import RecordingRun, RunPlan

__all__ = ["SourceRecorder", "snapshot_section", "source_files"]

_ENV_DIRS = frozenset({"site-packages", "dist-packages", ".venv", "venv", ".tox", ".nox"})


class SourceRecorder:
    """``src``: the code snapshot of a run, taken as the run starts, before its body."""

    key = "src"

    def __init__(self) -> None:
        self._snap: Snapshot | None = None
        self._files: tuple[list[StrPath], dict[str, str]] = ([], {})

    def prepare(self, plan: RunPlan) -> None:
        pass

    def start(self, run: RecordingRun) -> None:
        """Snapshot the code before the body runs; run.lock gets the section at once."""
        plan = run.plan
        if not (plan.src and plan.settings.src):
            return
        self._snap = _take_snapshot(run)
        run.publish(self.key, self._section(run))

    def finish(self, run: RecordingRun) -> Any:
        """The section again: project modules the body imported count as its files."""
        return None if self._snap is None else self._section(run)

    def _section(self, run: RecordingRun) -> dict[str, Any]:
        assert self._snap is not None
        if self._snap.commit:
            paths = _run_paths(run)
            if paths != self._files[0]:  # at the end: only when the body imported more
                self._files = (paths, _blobs(run, self._snap.commit, paths))
        return snapshot_section(self._snap, self._files[1])


def _take_snapshot(run: RecordingRun) -> Snapshot:
    settings = run.plan.settings
    message = f"xpkit: {run.plan.stage.name} {settings.relative(run.paths.dir)}"
    try:
        return snapshot(
            settings.root,
            message=message,
            branch=settings.branch,
            include=settings.include,
            exclude=settings.exclude,
            max_file_mb=settings.max_file_mb,
            results_dir=settings.results_dir,
            logger=run.logger,
        )
    except Exception as e:  # a bug in the snapshot must not fail the run
        run.logger.warning("code snapshot failed: %r", e)
        return Snapshot(commit=None, error=repr(e))


def _run_paths(run: RecordingRun) -> list[StrPath]:
    """The project modules imported so far, and the stage's own file."""
    settings = run.plan.settings
    paths: list[StrPath] = list(source_files(settings.root, results_dir=settings.results_dir))
    with contextlib.suppress(TypeError, OSError):  # builtins, notebooks: no source file
        stage_file = inspect.getsourcefile(run.plan.stage.fn)
        if stage_file is not None:
            paths.append(stage_file)
    return paths


def _blobs(run: RecordingRun, commit: str, paths: list[StrPath]) -> dict[str, str]:
    try:
        return files_blobs(run.plan.settings.root, commit, paths)
    except GitError as e:
        run.logger.warning("code snapshot: cannot list source blobs: %s", e)
        return {}


def snapshot_section(snap: Snapshot, files: Mapping[str, str]) -> dict[str, Any]:
    """The ``src`` section of run.lock; ``skipped`` and ``error`` only when set."""
    section: dict[str, Any] = {
        "commit": snap.commit,
        "head": snap.head,
        "branch": snap.branch,
        "dirty": snap.dirty,
        "remote": snap.remote,
        "files": dict(sorted(files.items())),
    }
    if snap.skipped:
        section["skipped"] = list(snap.skipped)
    if snap.error:
        section["error"] = snap.error
    return section


def source_files(root: StrPath, *, results_dir: str = "results") -> list[Path]:
    """The project's own imported modules: ``sys.modules`` files inside ``root``.

    Files in virtual environments, site-packages and the results directory do not count.
    """
    top = Path(root).resolve()
    results = (top / results_dir).resolve()
    prefixes = (str(top), os.path.abspath(root))  # the cheap filter sees paths as imported
    found = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and file.startswith(prefixes):
            path = Path(file).resolve()
            if _is_project_file(path, top, results):
                found.add(path)
    return sorted(found)


def _is_project_file(path: Path, top: Path, results: Path) -> bool:
    if not path.is_relative_to(top) or path.is_relative_to(results):
        return False
    if path.is_relative_to(Path(sys.prefix).resolve()) and sys.prefix != sys.base_prefix:
        return False
    return not _ENV_DIRS.intersection(path.relative_to(top).parts) and path.is_file()
