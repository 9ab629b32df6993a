"""Syncing many runs at once, each with its stage's loggers (``xp log``, ``xp.sync_runs``).

A run's loggers are those of the stage that made it, imported again from the ``entry`` its
run.lock records (see ``_execute/_entry.py``): re-logging every past run with a new logging
function needs nothing but ``xp log``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._catalog._run import Run
from .._core._lock import load_lock
from .._core._progress import ProgressBar
from .._core._settings import Settings, load_settings
from .._execute._entry import stage_of_run
from .._record._plan import StageInfo
from ..errors import LockError, StageImportError
from ._mlflow import Syncer, reported

__all__ = ["BatchReport", "sync_many", "sync_runs"]

Loggers = Sequence[Callable[..., Any]]


@dataclass
class BatchReport:
    """What a sync of many runs did: their MLflow ids, and each problem in one line."""

    ids: list[str] = field(default_factory=list)
    created: int = 0
    points: int = 0
    problems: list[str] = field(default_factory=list)


def sync_many(
    runs: Iterable[Run | str | os.PathLike[str]],
    *,
    client: Any = None,
    settings: Settings | None = None,
    loggers: Loggers | None = None,
    stage: StageInfo | None = None,
    progress: bool | None = None,
    strict: bool = False,
) -> BatchReport:
    """Sync ``runs`` into MLflow, each followed by its loggers.

    Args:
        runs: ``Run`` objects or run directories.
        client: an ``mlflow.MlflowClient`` (default: one on the project's tracking store).
        settings: the project's settings (default: found from the working directory).
        loggers: the loggers of every run; None: each run's stage's own (from run.lock
            ``entry``), or those of ``stage`` for its runs; ``()``: none.
        stage: a stage whose loggers replace the recorded ones for its runs.
        progress: show a progress bar (default: on a terminal, for more than one run).
        strict: raise the first problem instead of reporting it and going on.
    """
    settings = settings or load_settings()
    items = [r if isinstance(r, Run) else Run(r) for r in runs]
    report = BatchReport()
    good = [run for run in items if _readable(run, report, strict=strict)]
    syncer = Syncer(client=client, settings=settings)
    syncer.prefetch({run.stage for run in good})
    chosen = _Loggers(loggers, stage, settings, report, strict=strict)
    shown = progress if progress is not None else (None if len(good) > 1 else False)
    with (
        syncer.batch(),  # each sweep's parent run brought up to date once, at the end
        ProgressBar("syncing runs to MLflow", total=len(good), enabled=shown) as bar,
    ):
        for run in good:
            _sync_one(syncer, run, chosen.of(run), report, strict=strict)
            bar.advance()
    return report


def sync_runs(
    runs: Iterable[Run | str | os.PathLike[str]],
    *,
    client: Any = None,
    loggers: Loggers | None = None,
    progress: bool | None = None,
) -> list[str]:
    """Sync many run directories (a progress bar on a terminal); return their MLflow run ids.

    Args:
        runs: ``Run`` objects or run directories.
        client: an ``mlflow.MlflowClient`` (default: one on the project's tracking store).
        loggers: functions ``fn(run, mlflow)`` called for every run (default: the loggers of
            each run's own stage, as ``xp log`` does; ``()`` for none).
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        LockError: a run's run.lock is unreadable.
        StageImportError: a run's stage (for its loggers) cannot be imported.

    Example:
        >>> xp.sync_runs(xp.runs("results/train"))  # doctest: +SKIP
    """
    report = sync_many(runs, client=client, loggers=loggers, progress=progress, strict=True)
    return report.ids


def _readable(run: Run, report: BatchReport, *, strict: bool) -> bool:
    try:
        load_lock(run.paths.lock)
    except LockError as e:
        if strict:
            raise
        report.problems.append(f"skipped {run.dir}: {e}")
        return False
    return True


def _sync_one(
    syncer: Syncer, run: Run, loggers: Loggers, report: BatchReport, *, strict: bool
) -> None:
    try:
        done = syncer.sync(run, loggers=loggers)
    except Exception as e:
        if strict:
            raise
        # a logger's failure was said with its name already
        report.problems.append("" if reported(e) else f"{run.dir}: {type(e).__name__}: {e}")
        return
    report.ids.append(done.mlflow_id)
    report.created += done.created
    report.points += done.metrics


class _Loggers:
    """The loggers of each run's stage, each stage imported once."""

    def __init__(
        self,
        given: Loggers | None,
        stage: StageInfo | None,
        settings: Settings,
        report: BatchReport,
        *,
        strict: bool,
    ) -> None:
        self.given, self.stage, self.settings = given, stage, settings
        self.report, self.strict = report, strict
        self._by_stage: dict[str, Loggers] = {}

    def of(self, run: Run) -> Loggers:
        if self.given is not None:
            return self.given
        if self.stage is not None:
            return self.stage.loggers if self.stage.name == run.stage else ()
        if run.stage not in self._by_stage:
            self._by_stage[run.stage] = self._import(run)
        return self._by_stage[run.stage]

    def _import(self, run: Run) -> Loggers:
        if "entry" not in run.lock.extra:
            return ()  # made before entries were recorded: nothing to apply
        try:
            return list(stage_of_run(run, self.settings).loggers)
        except StageImportError as e:
            if self.strict:
                raise
            self.report.problems.append(f"loggers of stage {run.stage!r} not applied: {e}")
            return ()
