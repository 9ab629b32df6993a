"""Automatic MLflow sync of stage runs: live while they run, final at their end.

Tracking is on by default (``[tool.xpkit] tracking``; the environment
variable ``XPKIT_TRACKING=0``/``1`` wins, map workers set it to 0 so that only the process
owning a run writes to MLflow). Measured here: ``import mlflow`` 1.2 s, creating a fresh
SQLite store 2.2 s, syncing one run ~25 ms, ``xp.log_metrics`` ~8 us. Hence:

- ``import xpkit`` and a run's start never import mlflow; the body only appends to
  metrics.jsonl.
- One background thread per process (daemon) syncs running runs: it waits
  ``LIVE_DELAY_S`` after a run starts (short runs never pay for mlflow in-process), then
  imports mlflow and pushes new metric points every ``LIVE_INTERVAL_S``.
- At the end of a run of a stage with ``@main.logger`` functions, the final sync and the
  loggers run in the calling thread before the call returns (loggers see ``run.locals``).
- At the end of any other run: if mlflow is already imported in this process, the
  background thread does the final sync and the interpreter's exit waits for it (at most
  ``EXIT_WAIT_S``); otherwise a detached ``python -m xpkit log`` process does it, so the
  exit of a short script is not delayed by importing mlflow. ``xp log`` repairs anything
  left unsynced (a killed process, a store that was down).

Failures of automatic syncing are warnings (logger ``xpkit.mlflow``), never the run's
outcome.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._catalog._run import Run
from .._core._paths import PACKAGE_DIR, RunPaths
from .._core._settings import Settings
from .._core._threads import start_thread
from ._mlflow import Syncer, reported, tracking_enabled, tracking_uri

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["EXIT_WAIT_S", "LIVE_DELAY_S", "LIVE_INTERVAL_S", "begin_run"]

LIVE_DELAY_S = 5.0
LIVE_INTERVAL_S = 3.0
EXIT_WAIT_S = 60.0

_log = logging.getLogger("xpkit.mlflow")


def begin_run(
    loggers: Sequence[Callable[..., None]], run: Run, settings: Settings
) -> _RunTracking | None:
    """Start tracking a run that just started; None when off.

    ``loggers`` are the stage's logging functions, called after the final sync.
    """
    if not tracking_enabled(settings):
        return None
    _tracker().watch(run.dir, settings)
    return _RunTracking(list(loggers), run, settings)


class _RunTracking:
    """The MLflow side of one stage run: live sync while it runs, final sync at its end."""

    def __init__(self, loggers: list[Callable[..., None]], run: Run, settings: Settings) -> None:
        self.loggers, self.run, self.settings = loggers, run, settings

    def end(self) -> None:
        """Final sync (and the stage's loggers); any failure is a warning."""
        try:
            self._end()
        except Exception as e:
            if not reported(e):  # a logger's failure was said with its name
                _log.warning("MLflow sync of %s failed: %s: %s", self.run.dir, type(e).__name__, e)

    def _end(self) -> None:
        tracker = _tracker()
        tracker.unwatch(self.run.dir)
        if self.loggers:
            if "mlflow" not in sys.modules:  # seconds of silence otherwise, after "completed"
                names = ", ".join(getattr(fn, "__name__", "?") for fn in self.loggers)
                print(
                    f"[xpkit] MLflow: syncing the run, then its loggers ({names})", file=sys.stderr
                )
            tracker.syncer(self.settings).sync(self.run, loggers=self.loggers)
        elif "mlflow" in sys.modules or not _spawn_sync(self.run.dir, self.settings):
            tracker.finish(self.run.dir, self.settings)


_children: list[int] = []


def _spawn_sync(run_dir: Path, settings: Settings) -> bool:
    """Sync ``run_dir`` in a detached ``python -m xpkit log`` process; False if impossible."""
    if not hasattr(os, "posix_spawn") or not sys.executable:
        return False
    for pid in list(_children):  # reap finished ones: no zombies in long sessions
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                continue
        _children.remove(pid)
    paths = RunPaths(run_dir)
    paths.xpkit_dir.mkdir(exist_ok=True)
    package_root = os.path.dirname(PACKAGE_DIR)
    python_path = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "XPKIT_ROOT": str(settings.root),
        "PYTHONPATH": package_root + (os.pathsep + python_path if python_path else ""),
    }
    argv = [sys.executable, "-m", "xpkit", "log", "--no-loggers", "--quiet", str(run_dir)]
    out = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(paths.mlflow_log), out, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    _children.append(os.posix_spawn(sys.executable, argv, env, file_actions=actions, setsid=True))
    return True


@dataclasses.dataclass
class _Job:
    run_dir: Path
    settings: Settings
    final: bool


class _Tracker:
    """The process's syncing thread: live metrics of running runs, final syncs queued."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Path, tuple[float, Settings]] = {}
        self._final: dict[Path, Settings] = {}
        self._busy: _Job | None = None
        self._syncers: dict[str, Syncer] = {}
        self._syncers_mutex = threading.Lock()
        self._failed: set[Path] = set()
        self._thread: threading.Thread | None = None
        atexit.register(self.drain, EXIT_WAIT_S)

    def syncer(self, settings: Settings) -> Syncer:
        """The cached syncer of a project's store (imports mlflow on first use)."""
        uri = tracking_uri(settings)
        with self._syncers_mutex:
            if uri not in self._syncers:
                self._syncers[uri] = Syncer(settings=settings)
            return self._syncers[uri]

    def watch(self, run_dir: Path, settings: Settings) -> None:
        """Sync ``run_dir`` every few seconds, starting ``LIVE_DELAY_S`` from now."""
        with self._cond:
            self._due[run_dir] = (time.monotonic() + LIVE_DELAY_S, settings)
            self._ensure_thread()
            self._cond.notify_all()

    def unwatch(self, run_dir: Path) -> None:
        """Stop live syncs of ``run_dir``, waiting for one under way."""
        with self._cond:
            self._due.pop(run_dir, None)
            while self._busy is not None and self._busy.run_dir == run_dir:
                self._cond.wait()

    def finish(self, run_dir: Path, settings: Settings) -> None:
        """Queue the final sync of ``run_dir``."""
        with self._cond:
            self._final[run_dir] = settings
            self._ensure_thread()
            self._cond.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) for queued final syncs; False when some are left."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._final or (self._busy is not None and self._busy.final):
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    left_over = len(self._final) + (self._busy is not None)
                    _log.warning("MLflow sync of %d run(s) unfinished; `xp log` does it", left_over)
                    return False
                self._cond.wait(left)
        return True

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = start_thread(self._loop, name="xpkit-mlflow")

    def _next(self) -> _Job | float | None:
        """The next job, else seconds until one is due (None: nothing to wait for)."""
        if self._final:
            run_dir = next(iter(self._final))
            return _Job(run_dir, self._final.pop(run_dir), final=True)
        if not self._due:
            return None
        run_dir, (due, settings) = min(self._due.items(), key=lambda kv: kv[1][0])
        wait = due - time.monotonic()
        return _Job(run_dir, settings, final=False) if wait <= 0 else wait

    def _loop(self) -> None:
        while True:
            with self._cond:
                job = self._next()
                while not isinstance(job, _Job):
                    self._cond.wait(job)
                    job = self._next()
                self._busy = job
            try:
                self.syncer(job.settings).sync(Run(job.run_dir), live=not job.final)
            except Exception as e:
                if job.run_dir not in self._failed:  # warn once per run, not every cycle
                    self._failed.add(job.run_dir)
                    _log.warning(
                        "MLflow sync of %s failed: %s: %s", job.run_dir, type(e).__name__, e
                    )
            finally:
                with self._cond:
                    self._busy = None
                    if not job.final and job.run_dir in self._due:
                        settings = self._due[job.run_dir][1]
                        self._due[job.run_dir] = (time.monotonic() + LIVE_INTERVAL_S, settings)
                    self._cond.notify_all()


_tracker_instance: _Tracker | None = None
_tracker_mutex = threading.Lock()


def _tracker() -> _Tracker:
    global _tracker_instance
    with _tracker_mutex:
        if _tracker_instance is None:
            _tracker_instance = _Tracker()
        return _tracker_instance
