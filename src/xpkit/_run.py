"""``Run``: a run directory and what its run.lock says."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._lock import RunLock, load_lock
from ._paths import RunPaths

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["Run"]


class Run:
    """A run directory: its run.lock, config and metrics.

    After an in-process run, ``locals`` holds the stage function's local variables (at its
    return or failure), ``result`` its return value and ``error`` its exception.

    Example:
        >>> run = xp.Run("results/prepare/latest")  # doctest: +SKIP
        >>> run.status, run.config.param, run.metrics["rows"]  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.dir = Path(os.path.abspath(path))
        self.paths = RunPaths(self.dir)
        self.locals: dict[str, Any] | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self._lock: RunLock | None = None

    @property
    def lock(self) -> RunLock:
        """The run.lock record (read once; see :meth:`reload`).

        Raises:
            LockError: run.lock is missing or invalid.
        """
        if self._lock is None:
            self._lock = load_lock(self.paths.lock)
        return self._lock

    def reload(self) -> Run:
        """Forget the cached run.lock so that the next access reads it again."""
        self._lock = None
        return self

    @property
    def id(self) -> str:
        """The unique run id."""
        return self.lock.id

    @property
    def stage(self) -> str:
        """The stage name."""
        return self.lock.stage

    @property
    def status(self) -> str:
        """``running``, ``completed``, ``failed`` or ``interrupted``."""
        return self.lock.status

    @property
    def config(self) -> DictConfig:
        """The resolved config, as an OmegaConf ``DictConfig``."""
        from omegaconf import OmegaConf

        return OmegaConf.create(dict(self.lock.config))

    @property
    def metrics(self) -> dict[str, Any]:
        """The last value of each metric."""
        return dict(self.lock.metrics or {})

    def metric_history(self) -> Iterator[Mapping[str, Any]]:
        """Every record of metrics.jsonl: ``{"time", "step", "metrics"}``; bad lines skipped."""
        import json

        try:
            f = self.paths.metrics.open(encoding="utf-8")
        except FileNotFoundError:
            return
        with f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash mid-write
                if isinstance(record, dict):
                    yield record

    def __repr__(self) -> str:
        try:
            where = str(self.dir)
            return f"Run({self.stage!r}, id={self.id!r}, status={self.status!r}, dir={where!r})"
        except Exception:
            return f"Run(dir={str(self.dir)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.dir == self.dir

    def __hash__(self) -> int:
        return hash(self.dir)
