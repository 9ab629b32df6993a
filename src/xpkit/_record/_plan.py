"""What recording a run needs: the stage it runs, its plan, and the recorder interface.

A run creates fresh recorders (:func:`~xpkit._record._recorders.default_recorders`) and
drives them through three phases::

    prepare(plan)   before the run directory exists: validate, raise XpkitError on bad
                    input (a missing data path, a missing upstream); nothing is created;
                    may return ``{dotted_key: value}`` config updates
    start(run)      the run directory exists and run.lock says "running": record what is
                    known now, start slow work in a background thread; never block the body
                    long. A section known early is published (``run.publish``) so that
                    run.lock holds it even if the process is killed during the body
    finish(run)     after the body returned or raised: join background work and return
                    the value stored under ``lock[recorder.key]`` (None: key left out)

``finish`` is called even when the body failed or was interrupted; an exception it raises
is logged as a warning and never hides the body's own outcome.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import logging

    from omegaconf import DictConfig

    from .._core._paths import RunPaths
    from .._core._settings import Settings
    from ._codetree import CodeTree

__all__ = ["Recorder", "RecordingRun", "RunPlan", "StageInfo"]


@runtime_checkable
class StageInfo(Protocol):
    """What the machinery of a run knows of a stage (``xp.stage`` makes one)."""

    @property
    def name(self) -> str:
        """The stage name (results/<name>/...)."""

    @property
    def fn(self) -> Callable[..., Any]:
        """The raw function, called with the config."""

    @property
    def data(self) -> tuple[str, ...]:
        """Config keys holding data paths to hash."""

    @property
    def upstream(self) -> tuple[str, ...]:
        """Config keys holding upstream runs."""

    @property
    def src(self) -> bool:
        """Whether runs snapshot the code."""

    @property
    def loggers(self) -> list[Callable[..., None]]:
        """Logging functions ``fn(run, mlflow)`` run after every run."""

    def entry(self) -> Mapping[str, str]:
        """Where the stage is defined: ``{module, qualname, file}`` (file absolute)."""

    def config(self) -> DictConfig:
        """The stage's default config."""


@dataclass(frozen=True)
class RunPlan:
    """What a run will be, before its directory exists (given to ``Recorder.prepare``)."""

    stage: StageInfo
    config: DictConfig
    settings: Settings
    started: dt.datetime
    src: bool = True  # this run snapshots the code (the stage's ``src`` and not ``--no-src``)
    code: CodeTree | None = None  # the run's code comes from this snapshot, not the live tree


class RecordingRun(Protocol):
    """The run in progress as recorders see it."""

    @property
    def plan(self) -> RunPlan:
        """The run's plan (its stage, resolved config, settings)."""

    @property
    def paths(self) -> RunPaths:
        """The files of the run directory."""

    @property
    def logger(self) -> logging.Logger:
        """The run's logger (run.log and the terminal)."""

    def publish(self, key: str, value: Any) -> None:
        """Write the section ``key`` of run.lock now (thread-safe)."""


class Recorder(Protocol):
    """One section of run.lock."""

    key: str

    def prepare(self, plan: RunPlan) -> Mapping[str, Any] | None:
        """Validate before the run directory exists; may return config updates.

        The returned ``{dotted_key: value}`` replace config values before the run starts
        (an upstream ``latest`` link is recorded as the run directory it points at).
        """

    def start(self, run: RecordingRun) -> None:
        """Start recording; the run directory exists."""

    def finish(self, run: RecordingRun) -> Any:
        """Return the section's value once the body is over."""
