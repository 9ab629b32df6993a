"""``Stage.sweep``: one full run per config of a grid, through the same backends as a map.

Each point is a run of its own (own directory, own run.lock), grouped with the others by
``sweep: {id, point, total, values}`` in their run.lock.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._catalog._run import Run
from .._core._lock import new_run_id
from .._core._paths import display_path
from .._core._settings import load_settings
from .._execute._ending import error_record
from .._execute._lifecycle import Outcome, RunHook, RunRequest, RunResult, execute
from .._record._plan import StageInfo
from ..errors import ConfigError, TaskError, XpkitError
from ._backends import Backend, Done, nothing
from ._shipped import Shipment, snapshot_tree

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .._record._codetree import CodeTree

_log = logging.getLogger("xpkit.sweep")

__all__ = ["Sweep", "SweepFailed", "SweepWork", "grid_points", "sweep_stage"]


@dataclass(frozen=True)
class Sweep:
    """What a sweep came to: its runs in grid order (local backends), or its Slurm jobs.

    ``last`` is the result of the last point run in this process (serial), with its locals.
    """

    id: str
    runs: list[Run]
    failed: list[str]
    jobs: tuple[str, ...] = ()
    last: RunResult | None = None


def grid_points(
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The override mappings of a grid: the product of ``{key: values}``, or a list as is.

    Raises:
        ConfigError: the grid is empty or a value list is not a list.
    """
    if isinstance(grid, Mapping):
        for key, values in grid.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                msg = f"sweep values of {key!r} must be a list, got {values!r}"
                raise ConfigError(msg)
        keys = list(grid)
        points = [
            dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())
        ]
    else:
        points = [dict(point) for point in grid]
    if not points:
        msg = "the sweep grid has no point"
        raise ConfigError(msg)
    return points


def sweep_stage(
    stage: StageInfo,
    configs: Sequence[DictConfig],
    points: Sequence[Mapping[str, Any]],
    backend: Backend,
    *,
    src: bool = True,
    hooks: Sequence[RunHook] = (),
    reuse: bool = False,
) -> Sweep:
    """One full run per point (``configs[k]`` made of ``points[k]``); see ``Stage.sweep``.

    On joblib or Slurm, the points run the code of a snapshot taken now (see
    :mod:`._shipped`); ``reuse``: a point whose run exists already is not run again.

    Raises:
        TaskError: some points failed (after all ran; each recorded in its run).
    """
    sweep_id = new_run_id()
    code = None
    if not backend.in_process:  # workers run the code of a snapshot taken now
        code = snapshot_tree(stage, load_settings(), src=src, log=_log)
    extras = [
        {"sweep": _sweep_section(sweep_id, k, len(points), point)} for k, point in enumerate(points)
    ]
    work = SweepWork(Shipment(stage, configs, code), extras, sweep_id, src, hooks, reuse=reuse)
    dones: list[Done] = []

    def on_done(done: Done) -> bool:
        dones.append(done)
        return False

    submitted = backend.run(work, range(len(extras)), on_done)
    if submitted is not None:
        return Sweep(sweep_id, [], [], jobs=submitted.jobs)
    return _collected(sweep_id, sorted(dones, key=lambda d: d.index), len(points))


def _collected(sweep_id: str, dones: list[Done], total: int) -> Sweep:
    runs = [Run(done.value) for done in dones if done.value]
    failed = [f"{_shown(done.value)}: {_reason(done)}" for done in dones if not done.ok]
    last = dones[-1] if dones else None
    result = None
    if last is not None and last.value:
        run = Run(last.value)
        run.locals, run.error = last.locals, last.exception
        result = RunResult(run, Outcome(locals=last.locals, error=last.exception))
    sweep = Sweep(sweep_id, runs, failed, last=result)
    if failed:
        msg = f"{len(failed)} of {total} sweep points failed ({'; '.join(failed)})"
        raise SweepFailed(msg, sweep)
    return sweep


class SweepFailed(TaskError):
    """Some points of a sweep failed; ``sweep`` holds what it came to."""

    def __init__(self, message: str, sweep: Sweep) -> None:
        super().__init__(message)
        self.sweep = sweep


def _reason(done: Done) -> str:
    error = done.error or {}
    return f"{error.get('type', '?').rpartition('.')[2]}: {error.get('message', '')}"


def _shown(path: Any) -> str:
    return display_path(Path(path)) if path else "(no run directory)"


def _sweep_section(sweep_id: str, k: int, total: int, point: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": sweep_id, "point": k, "total": total, "values": _plain(point)}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass(frozen=True)
class SweepWork:
    """The points of a sweep, as any process runs them: each point a full run."""

    shipment: Shipment
    extras: list[dict[str, Any]]
    sweep_id: str
    src: bool
    hooks: Sequence[RunHook]
    reuse: bool = False

    @property
    def label(self) -> str:
        return self.shipment.stage.name

    @property
    def code(self) -> CodeTree | None:
        return self.shipment.code

    def request(self, k: int) -> RunRequest:
        """The run of point ``k``."""
        return RunRequest(
            stage=self.shipment.stage,
            config=self.shipment.configs[k],
            src=self.src,
            extra=self.extras[k],
            hooks=self.hooks,
            code=self.shipment.code,
            reuse=self.reuse,
        )

    @property
    def folder(self) -> Path:
        settings = load_settings()
        return settings.results_path / self.label / ".slurm" / self.sweep_id

    @property
    def root(self) -> Path:
        return load_settings().root

    def run(self, indices: Sequence[int], *, in_process: bool = False) -> list[Done]:
        """Run points ``indices`` here; a point that cannot start is a failed ``Done``."""
        return [self._point(k, in_process=in_process) for k in indices]

    def _point(self, k: int, *, in_process: bool) -> Done:
        try:
            result = execute(self.request(k))
        except XpkitError as e:  # bad input for this point: no run directory
            return Done(k, False, error=error_record(e))
        run, exc = result.run, result.error
        kept = run.locals if in_process else None
        if exc is None:
            return Done(k, True, str(run.dir), locals=kept)
        return Done(
            k,
            False,
            str(run.dir),
            error=error_record(exc),
            exception=exc if in_process else None,
            locals=kept,
        )

    def left(self, indices: Sequence[int]) -> list[int]:
        return list(indices)

    def in_job(self) -> contextlib.AbstractContextManager[None]:
        return nothing()

    def after_job(self) -> None:
        pass
