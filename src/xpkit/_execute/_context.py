"""The run in progress: ``ActiveRun``, and the functions a stage body calls.

``xp.current()``, ``xp.log_metrics``, ``xp.get_logger``, ``xp.track_data`` and
``xp.use_run`` find the innermost running stage of the current thread (or task) through a
context variable.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core._lock import RunLock, write_lock
from .._core._paths import RunPaths
from ..errors import NotInRunError
from ._task import current_task

if TYPE_CHECKING:
    import logging

    from omegaconf import DictConfig

    from .._api._stage import Stage
    from .._catalog._run import Run
    from .._core._settings import Settings
    from .._record._recorders import Recorder

__all__ = [
    "ActiveRun",
    "RunPlan",
    "active_run",
    "current",
    "get_logger",
    "log_metrics",
    "track_data",
    "use_run",
]

_active: ContextVar[ActiveRun | None] = ContextVar("xpkit_active_run", default=None)


@dataclass(frozen=True)
class RunPlan:
    """What a run will be, before its directory exists (given to ``Recorder.prepare``)."""

    stage: Stage[Any]
    config: DictConfig
    settings: Settings
    started: dt.datetime


class ActiveRun:
    """The bookkeeping of one run while it executes."""

    def __init__(
        self,
        *,
        plan: RunPlan,
        run: Run,
        lock: RunLock,
        recorders: list[Recorder],
        logger: logging.Logger,
    ) -> None:
        self.stage = plan.stage
        self.config = plan.config
        self.settings = plan.settings
        self.started = plan.started
        self.run = run
        self.id = lock.id
        self.paths: RunPaths = run.paths
        self.logger = logger
        self.parent: ActiveRun | None = _active.get()
        self.children: dict[str, Mapping[str, Any]] = {}
        self._recorders = {r.key: r for r in recorders}
        self._lock = lock
        self._lock_mutex = threading.Lock()
        self._metrics_file = open(self.paths.metrics, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._metrics_mutex = threading.Lock()
        self.last_metrics: dict[str, Any] = {}
        self._metric_steps: dict[str, int] = {}

    @property
    def lock(self) -> RunLock:
        """The run.lock as last written."""
        return self._lock

    def recorder(self, key: str) -> Recorder:
        """The recorder filling ``lock[key]``.

        Raises:
            NotInRunError: no such recorder is active in this run.
        """
        try:
            return self._recorders[key]
        except KeyError:
            msg = f"no {key!r} recorder in this run (active: {', '.join(self._recorders)})"
            raise NotInRunError(msg) from None

    def update_lock(self, **changes: Any) -> RunLock:
        """Apply ``changes`` to run.lock and write it atomically."""
        with self._lock_mutex:
            self._lock = self._lock.replace(**changes)
            write_lock(self.paths.lock, self._lock)
            return self._lock

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Append one record to metrics.jsonl (flushed, no fsync) and keep last values."""
        values = {str(k): _number(v) for k, v in metrics.items()}
        import json

        record: dict[str, Any] = {"time": time.time(), "step": step, "metrics": values}
        if (task := current_task()) is not None:  # a map's task: its metrics carry its index
            record["task"] = task
        line = json.dumps(record)
        with self._metrics_mutex:
            self._metrics_file.write(line + "\n")
            self._metrics_file.flush()
            self.last_metrics.update(values)

    def close(self) -> None:
        """Release the run's open files."""
        with self._metrics_mutex:
            self._metrics_file.close()

    def __enter__(self) -> ActiveRun:
        self._token = _active.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _active.reset(self._token)


def _number(value: Any) -> Any:
    """Metric values as JSON numbers: numpy/torch scalars through ``item()``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        value = item()
    try:
        return float(value)
    except (TypeError, ValueError):
        msg = f"metric values must be numbers, got {type(value).__name__}: {value!r}"
        raise TypeError(msg) from None


def active_run() -> ActiveRun | None:
    """The innermost running stage of this thread/task, or None."""
    return _active.get()


def _require(what: str) -> ActiveRun:
    run = _active.get()
    if run is None:
        msg = f"xp.{what}() must be called inside a running stage (call the stage, or xp.run it)"
        raise NotInRunError(msg)
    return run


_console_noted: set[str] = set()


def _console_cell(what: str) -> bool:
    """True in an IPython/Jupyter console, where a body's ``# %%`` cells re-run outside any
    run: there ``xp.{what}()`` records nothing (said once per session) instead of raising."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None or get_ipython() is None:
        return False
    if what not in _console_noted:
        _console_noted.add(what)
        print(f"[xpkit] xp.{what}() outside a running stage: not recorded", file=sys.stderr)
    return True


def current() -> Run:
    """The ``Run`` of the stage executing now.

    Raises:
        NotInRunError: no stage is running in this thread.
    """
    return _require("current").run


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Record metric values of the running stage (appended to its metrics.jsonl).

    Costs a few microseconds: the MLflow sync, when on, reads the file in the background.

    Example:
        >>> xp.log_metrics({"loss": 0.1, "acc": 0.9}, step=epoch)  # doctest: +SKIP
    """
    if _active.get() is None and _console_cell("log_metrics"):
        return
    _require("log_metrics").log_metrics(metrics, step)


def get_logger() -> logging.Logger:
    """The running stage's logger (to run.log and stdout), or xpkit's quiet logger outside."""
    import logging

    run = _active.get()
    return run.logger if run is not None else logging.getLogger("xpkit.user")


def track_data(path: str | os.PathLike[str]) -> None:
    """Hash ``path`` in the background and record it in run.lock ``data`` under its path."""
    if _active.get() is None and _console_cell("track_data"):
        return
    run = _require("track_data")
    recorder: Any = run.recorder("data")
    recorder.track(str(path), Path(path))


def use_run(path: str | os.PathLike[str]) -> Run:
    """Record the run at ``path`` (directory, ``latest`` link or id prefix) as an upstream."""
    run = _require("use_run")
    recorder: Any = run.recorder("upstream")
    result: Run = recorder.use(str(path), path)
    return result


def make_logger(stage_name: str, run_id: str) -> logging.Logger:
    """A logger for one run, writing ``HH:MM:SS LEVEL [stage] message`` lines."""
    import logging

    logger = logging.getLogger(f"xpkit.run.{stage_name}.{run_id}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = _run_log_handler()
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [{stage_name}] %(message)s", "%H:%M:%S")
        )
        logger.addHandler(handler)
    return logger


def _run_log_handler() -> logging.Handler:
    """A handler writing records to whatever ``sys.stdout`` is at emit time (the capture)."""
    import logging

    class RunLogHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                stream = sys.stdout
                stream.write(self.format(record) + "\n")
                stream.flush()
            except Exception:
                self.handleError(record)

    return RunLogHandler()


def drop_logger(logger: logging.Logger) -> None:
    """Forget a run's logger so that long sessions do not accumulate them."""
    import logging

    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logging.Logger.manager.loggerDict.pop(logger.name, None)
