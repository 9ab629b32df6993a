"""``xp.rm``: delete runs with their MLflow mirror, never a run a kept run consumed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._catalog._remove import Dependent, delete_runs, dependents, select_runs
from .._catalog._run import Run
from .._core._settings import Settings, load_settings
from ..errors import RunInUseError, RunNotFoundError

__all__ = ["Removal", "plan_rm", "rm"]

_SHOWN = 5


@dataclass(frozen=True)
class Removal:
    """What ``rm`` deletes (or, with ``dry_run``, would delete).

    ``runs`` are the run directories; ``mlflow_runs`` the MLflow run ids of their mirror;
    ``kept_by`` the kept runs that list one of them as upstream (a removal with any is
    refused unless forced).
    """

    runs: tuple[Run, ...]
    mlflow_runs: tuple[str, ...]
    kept_by: tuple[Dependent, ...]
    dry_run: bool
    _mirrors: tuple[object, ...] = ()

    @property
    def dirs(self) -> list[Path]:
        """The run directories."""
        return [Path(run.dir) for run in self.runs]


def rm(
    *runs: str | os.PathLike[str] | Run,
    where: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    mlflow: bool = True,
    settings: Settings | None = None,
) -> Removal:
    """Delete runs: their directories and their MLflow mirror (the MLflow run and its
    artifacts); each stage's ``latest`` link then points at its newest remaining run.

    Args:
        runs: run directories, id prefixes, or directories of runs (every run below); with
            ``where``, the places to look in (default: the results directory).
        where: an ``xp ls --where`` expression choosing the runs.
        force: delete even runs that kept runs list as upstream.
        dry_run: delete nothing; say what would go.
        mlflow: also delete the MLflow mirror (default).

    Raises:
        RunInUseError: a run to delete is the upstream of a kept run (they are named).
        RunNotFoundError: a ``RUN`` matches nothing.
        ExpressionError: ``where`` is not a valid expression.

    Example:
        >>> xp.rm(where="status == failed", dry_run=True).runs  # doctest: +SKIP
    """
    settings = settings or load_settings()
    removal = plan_rm(runs, where=where, dry_run=dry_run, mlflow=mlflow, settings=settings)
    if removal.kept_by and not force:
        raise RunInUseError(in_use_message(removal.kept_by))
    if not dry_run:
        apply_rm(removal, settings=settings)
    return removal


def plan_rm(
    specs: Sequence[str | os.PathLike[str] | Run],
    *,
    where: str | None,
    dry_run: bool,
    mlflow: bool,
    settings: Settings,
) -> Removal:
    """The runs chosen, their MLflow mirror and the kept runs needing them; deletes nothing."""
    if not specs and where is None:
        msg = "no run given: name runs (directories or id prefixes) or use --where EXPR"
        raise RunNotFoundError(msg)
    targets = tuple(select_runs(specs, where=where, settings=settings))
    mirrors: list[object] = []
    if mlflow and targets:
        from .._tracking._mlflow_rm import find_mirrors

        mirrors = find_mirrors(targets, settings=settings)
    return Removal(
        runs=targets,
        mlflow_runs=tuple(str(m.info.run_id) for m in mirrors),  # type: ignore[attr-defined]
        kept_by=tuple(dependents(targets, settings=settings)),
        dry_run=dry_run,
        _mirrors=tuple(mirrors),
    )


def apply_rm(removal: Removal, *, settings: Settings) -> None:
    """Delete the MLflow mirror first (a failure keeps every directory), then the runs."""
    if removal._mirrors:
        from .._tracking._mlflow_rm import delete_mirrors

        delete_mirrors(removal._mirrors, settings=settings)
    delete_runs(removal.runs, settings=settings)


def in_use_message(kept_by: Sequence[Dependent]) -> str:
    """One line naming the needed runs and who needs them."""
    shown = ", ".join(f"{d.needed.id} (upstream of {d.by})" for d in kept_by[:_SHOWN])
    more = f" and {len(kept_by) - _SHOWN} more" if len(kept_by) > _SHOWN else ""
    return f"kept runs need runs to delete: {shown}{more}; delete those too, or use --force"
