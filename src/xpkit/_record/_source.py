"""The ``src`` section of run.lock: the code snapshot of a run and its own source files.

The snapshot itself is :func:`xpkit._git.snapshot`; this module decides what a run records.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GitError
from ._git import Snapshot, StrPath, files_blobs, snapshot

if TYPE_CHECKING:
    from .._execute._context import ActiveRun, RunPlan

__all__ = ["SourceRecorder", "snapshot_section", "source_files"]

_ENV_DIRS = frozenset({"site-packages", "dist-packages", ".venv", "venv", ".tox", ".nox"})


class SourceRecorder:
    """``src``: the code snapshot of a run, taken in a thread as the run starts."""

    key = "src"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._snap: Snapshot | None = None

    def prepare(self, plan: RunPlan) -> None:
        pass

    def start(self, run: ActiveRun) -> None:
        if not (run.stage.src and run.settings.src):
            return
        settings = run.settings
        message = f"xpkit: {run.stage.name} {settings.relative(run.paths.dir)}"

        def work() -> None:
            try:
                self._snap = snapshot(
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
                self._snap = Snapshot(commit=None, error=repr(e))

        self._thread = threading.Thread(target=work, name="xpkit-src", daemon=True)
        self._thread.start()

    def finish(self, run: ActiveRun) -> Any:
        if self._thread is None:
            return None
        self._thread.join()
        snap = self._snap or Snapshot(commit=None, error="the snapshot did not run")
        files = _run_files(run, snap.commit) if snap.commit else {}
        return snapshot_section(snap, files)


def _run_files(run: ActiveRun, commit: str) -> dict[str, str]:
    settings = run.settings
    paths: list[StrPath] = list(source_files(settings.root, results_dir=settings.results_dir))
    with contextlib.suppress(TypeError, OSError):  # builtins, notebooks: no source file
        stage_file = inspect.getsourcefile(run.stage.fn)
        if stage_file is not None:
            paths.append(stage_file)
    try:
        return files_blobs(settings.root, commit, paths)
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
