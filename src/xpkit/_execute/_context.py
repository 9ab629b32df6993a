"""The run in progress: ``ActiveRun``, and the functions a stage body calls.

``xp.current()``, ``xp.log_metrics``, ``xp.get_logger``, ``xp.track_data`` and
``xp.use_run`` find the innermost running stage of the current thread (or task) through a
context variable.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .._core._lock import RunLock, write_lock
from .._core._paths import RunPaths
from ..errors import NotInRunError
from ._task import current_task

if TYPE_CHECKING:
    import logging

    from omegaconf import DictConfig

    from .._catalog._run import Run
    from .._core._settings import Settings
    from .._record._plan import Recorder, RunPlan, StageInfo

__all__ = [
    "ActiveRun",
    "active_run",
    "current",
    "get_logger",
    "log_metrics",
    "track_data",
    "use_run",
]

_active: ContextVar[ActiveRun | None] = ContextVar("xpkit_active_run", default=None)


class ActiveRun:
    """The bookkeeping of one run while it executes: what ``xp.current()``, the stage's
    body and the recorders see.

    The process that owns the run (``owner``) writes its run.lock; a map's task running in
    a worker process sees the map's run but leaves its run.lock to the owner.
    """

    def __init__(
        self,
        *,
        plan: RunPlan,
        run: Run,
        lock: RunLock,
        recorders: list[Recorder],
        logger: logging.Logger,
        owner: bool = True,
    ) -> None:
        self.plan = plan
        self.run = run
        self.paths: RunPaths = run.paths
        self.logger = logger
        self.parent: ActiveRun | None = _active.get()
        self.last_metrics: dict[str, Any] = {}
        self._owner = owner
        self._recorders = {r.key: r for r in recorders}
        self._lock = lock
        self._lock_mutex = threading.Lock()
        self._metrics_file: IO[str] | None = None
        self._metrics_mutex = threading.Lock()
        self._metrics_failed = False

    @property
    def id(self) -> str:
        """The run id."""
        return self._lock.id

    @property
    def stage(self) -> StageInfo:
        """The stage being run."""
        return self.plan.stage

    @property
    def config(self) -> DictConfig:
        """The run's resolved config."""
        return self.plan.config

    @property
    def settings(self) -> Settings:
        """The project's settings."""
        return self.plan.settings

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
            active = ", ".join(self._recorders) or "none"
            msg = f"no {key!r} recorder in this run (active: {active})"
            raise NotInRunError(msg) from None

    def update_lock(self, **changes: Any) -> RunLock:
        """Apply ``changes`` to run.lock and write it atomically (owner only)."""
        return self.rewrite_lock(lambda lock: lock.replace(**changes))

    def rewrite_lock(self, change: Callable[[RunLock], RunLock]) -> RunLock:
        """Replace run.lock by ``change(run.lock)`` and write it atomically (owner only)."""
        with self._lock_mutex:
            self._lock = change(self._lock)
            if self._owner:
                write_lock(self.paths.lock, self._lock)
            return self._lock

    def publish(self, key: str, value: Any) -> None:
        """Write the section ``key`` of run.lock now (a recorder's result known early)."""
        if key in _LOCK_FIELDS:
            self.update_lock(**{key: value})
        else:
            with self._lock_mutex:
                extra = {**self._lock.extra, key: value}
            self.update_lock(extra=extra)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Append one record to metrics.jsonl (flushed, no fsync) and keep last values."""
        values = {str(k): _number(v) for k, v in metrics.items()}
        import json

        record: dict[str, Any] = {"time": time.time(), "step": step, "metrics": values}
        if (task := current_task()) is not None:  # a map's task: its metrics carry its index
            record["task"] = task
        line = json.dumps(record)
        with self._metrics_mutex:
            self.last_metrics.update(values)  # run.lock keeps them even if the file cannot
            try:
                if self._metrics_file is None:
                    self._metrics_file = open(self.paths.metrics, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
                self._metrics_file.write(line + "\n")
                self._metrics_file.flush()
            except OSError as e:  # the disk is full: the body goes on, said once
                if not self._metrics_failed:
                    self._metrics_failed = True
                    self.logger.error("cannot append to %s: %s", self.paths.metrics.name, e)

    def close(self) -> None:
        """Release the run's open files."""
        with self._metrics_mutex:
            if self._metrics_file is not None:
                self._metrics_file.close()
                self._metrics_file = None

    def __enter__(self) -> ActiveRun:
        self._token = _active.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _active.reset(self._token)


_LOCK_FIELDS = frozenset(f.name for f in dataclasses.fields(RunLock)) - {"extra"}


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
