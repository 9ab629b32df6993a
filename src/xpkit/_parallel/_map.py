"""``Stage.map``: one function over many tasks, as ONE tracked run.

A map is one run (one directory, one run.lock, one run.log) whose body hands its tasks to a
backend (see ``_backends.py``): in this process (``serial``), in local processes
(``joblib``) or in Slurm jobs (``slurm``, non-blocking). Every task gets the run's resolved
config with the task merged in, and writes its outputs into the run directory; its outcome
is a record in ``tasks/done/<worker>.jsonl`` (see ``_tasks.py``), so any process may be
killed at any moment and ``resume=RUN_DIR`` runs exactly the tasks without an ``ok`` record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._catalog._run import Run, process_alive
from .._core._lock import RunLock
from .._core._paths import RunPaths, atomic_write_text, display_path
from .._core._progress import ProgressBar
from .._core._settings import Settings
from .._execute._capture import LogFile, capture_output
from .._execute._context import ActiveRun, active_run, make_logger
from .._execute._ending import error_record
from .._execute._lifecycle import Outcome, RunHook, RunRequest, RunResult, execute
from .._execute._locals import call_capturing
from .._execute._task import task_scope
from .._record._plan import RunPlan, StageInfo
from ..errors import ConfigError, TaskError, TasksFailed
from . import _tasks
from ._backends import Backend, Done
from ._jobs import job_ranges, job_states, unfinished
from ._shipped import Shipment, tree_of_section

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .._record._codetree import CodeTree

__all__ = ["MapOptions", "MapWork", "map_stage"]


@dataclass(frozen=True)
class MapOptions:
    """How to run a map (the keyword arguments of ``Stage.map``, the backend aside)."""

    key: str | None = None
    resume: Path | None = None
    stop_on_error: bool = False


def map_stage(
    stage: StageInfo,
    base: DictConfig,
    tasks: Iterable[Any] | None,
    options: MapOptions,
    backend: Backend,
    *,
    argv: Sequence[str] | None = None,
    fds: bool = False,
    src: bool = True,
    hooks: Sequence[RunHook] = (),
    code: CodeTree | None = None,
    extra: Mapping[str, Any] | None = None,
) -> RunResult:
    """Run ``stage`` over ``tasks`` as one tracked run; see ``Stage.map``.

    ``code``: the stage was imported from this code tree (``xp rerun``); ``extra``: keys
    added to run.lock.

    Raises:
        TaskError: the tasks or the resumed run cannot be used (nothing ran).
        ConfigError: a bad option, or the first task does not fit the config.
    """
    if options.stop_on_error and not backend.in_process:
        msg = f"stop_on_error needs backend='serial' (got {backend.name!r})"
        raise ConfigError(msg)
    todo: Sequence[Any]
    if options.resume is not None:
        base, todo, key = _resume_inputs(stage, base, options.resume, tasks, options.key)
        options = MapOptions(key=key, resume=options.resume, stop_on_error=options.stop_on_error)
    elif tasks is None:
        msg = "map needs tasks (or resume=RUN_DIR to finish a mapped run)"
        raise TaskError(msg)
    else:
        todo = list(tasks)
    if todo:
        _tasks.task_config(base, todo[0], options.key, 0)  # a wrong key fails before any run
    with _terminal_fd(backend) as terminal:
        body = _MapBody(todo, options, backend, terminal)
        request = RunRequest(
            stage=stage,
            config=base,
            argv=argv,
            fds=fds,
            src=src,
            resume=options.resume,
            body=body,
            hooks=hooks,
            code=code,
            extra=extra or {},
        )
        result = execute(request)
    if backend.detached:  # the workers may end the run from now on
        atomic_write_text(result.run.paths.submitted, "")
    return result


def _resume_inputs(
    stage: StageInfo, base: DictConfig, run_dir: Path, tasks: Iterable[Any] | None, key: str | None
) -> tuple[DictConfig, Sequence[Any], str | None]:
    """The config, task list and task key of the map in ``run_dir``, to finish it."""
    from omegaconf import OmegaConf

    paths = RunPaths(run_dir.resolve())
    lock = _tasks.load_map_lock(paths)
    if lock.stage != stage.name:
        msg = f"{run_dir} is a run of stage {lock.stage!r}, not {stage.name!r}"
        raise TaskError(msg)
    if lock.status == "running" and _still_running(lock):
        msg = f"{run_dir} is still running ({_who(lock)}); wait for it or stop it first"
        raise TaskError(msg)
    todo = _tasks.read_todo(paths)
    if tasks is not None and list(tasks) != list(todo):
        msg = f"the tasks given differ from the task list of {run_dir}; resume takes tasks=None"
        raise TaskError(msg)
    recorded = (lock.tasks or {}).get("key")
    if key is not None and key != recorded:
        msg = (
            f"{run_dir} set each task at key {recorded!r}, not {key!r};"
            " a resume takes the key of the map (leave it out)"
        )
        raise TaskError(msg)
    base.merge_with(OmegaConf.create(dict(lock.config)))
    return base, todo, recorded


def _still_running(lock: RunLock) -> bool:
    jobs = (lock.tasks or {}).get("jobs")
    if jobs:
        return bool(unfinished(job_states([str(j) for j in jobs])))
    return bool(process_alive(lock)) and lock.pid != os.getpid()


def _who(lock: RunLock) -> str:
    jobs = (lock.tasks or {}).get("jobs")
    return f"Slurm jobs {', '.join(map(str, jobs))}" if jobs else f"pid {lock.pid} on {lock.host}"


@contextlib.contextmanager
def _terminal_fd(backend: Backend) -> Iterator[int | None]:
    """A duplicate of the terminal's stderr taken before the run captures fd 2 (progress bar)."""
    fd = None
    if not backend.detached:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            if sys.stderr.isatty():
                fd = os.dup(sys.stderr.fileno())
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


class _MapBody:
    """The body of a map's run: bookkeeping, then the tasks through one backend."""

    def __init__(
        self, todo: Sequence[Any], options: MapOptions, backend: Backend, terminal: int | None
    ) -> None:
        self.todo = todo
        self.options = options
        self.backend = backend
        self.terminal = terminal

    def __call__(self, active: ActiveRun) -> Outcome:
        paths = active.paths
        if self.options.resume is None:
            _tasks.write_todo(paths, self.todo)
        state = _tasks.scan_done(paths, len(self.todo))
        pending = state.pending()
        section = self._section(active, state)
        code = None
        if not self.backend.in_process:  # workers run the snapshot taken as the map started
            code = active.plan.code or tree_of_section(
                active.lock.src, active.settings, active.logger
            )
        work = MapWork.of(active, self.options.key, code=code)
        if not self.backend.in_process:
            section["code"] = work.shipment.commit
        active.update_lock(tasks=section)
        if self.backend.detached and pending:
            submitted = self.backend.run(work, pending, lambda done: False)
            assert submitted is not None
            jobs = {**submitted.details, "jobs": list(submitted.jobs)}
            _note_attempt(active, jobs=list(submitted.jobs))
            active.update_lock(tasks={**section, **jobs})
            active.logger.info(
                "submitted %d Slurm %s job(s) for %d tasks: %s; follow: xp tasks %s --wait",
                len(submitted.jobs),
                submitted.details.get("mode", ""),
                len(pending),
                job_ranges(submitted.jobs),
                active.lock.dir,
            )
            return Outcome(detached=True)
        return self._run_here(active, work, pending, section, state.done)

    def _section(self, active: ActiveRun, state: _tasks.TaskState) -> dict[str, Any]:
        """run.lock ``tasks``: counts, backend, task key, how often the map was resumed."""
        previous = dict(active.lock.tasks or {})
        section: dict[str, Any] = {**state.counts(), "backend": self.backend.name}
        if self.options.key is not None:
            section["key"] = self.options.key
        if self.options.resume is not None:
            section["resumed"] = int(previous.get("resumed", 0)) + 1
        return section

    def _run_here(
        self,
        active: ActiveRun,
        work: MapWork,
        pending: list[int],
        section: dict[str, Any],
        done_before: int,
    ) -> Outcome:
        """Run the tasks through a local backend and wait for them."""
        active.logger.info(
            "mapping %d tasks (%d to run) with %s", len(self.todo), len(pending), self.backend.name
        )
        results: list[Any] = [None] * len(self.todo)
        stopped: list[Done] = []
        progress = _Progress(active.logger, len(pending), self.terminal)

        def on_done(done: Done) -> bool:
            results[done.index] = done.value
            if not done.ok:
                _log_failure(active.logger, done)
            progress.advance(1)
            if not done.ok and self.options.stop_on_error:
                stopped.append(done)
                return True
            return False

        try:
            self.backend.run(work, pending, on_done)
        finally:
            progress.close()
            release_workers()
        state = _tasks.scan_done(active.paths, len(self.todo))
        active.update_lock(tasks={**section, **state.counts()})
        _note_attempt(active, done=state.done - done_before)
        active.last_metrics.update(_tasks.last_metrics(active.paths))
        if stopped:
            return Outcome(locals=stopped[0].locals, error=stopped[0].exception)
        return Outcome(result=results, error=_failure(active.paths, state))


def _failure(paths: RunPaths, state: _tasks.TaskState) -> TasksFailed | None:
    if not (state.failed or state.left):
        return None
    shown = display_path(paths.dir)
    return TasksFailed(
        f"{_tasks.summary(state)}; see them: xp tasks {shown} --failed;"
        f" run what is left: --resume {shown}"
    )


def _note_attempt(active: ActiveRun, **details: Any) -> None:
    """Add ``details`` (tasks done, Slurm jobs) to the current attempt of a resumed map."""
    attempts = active.lock.extra.get("attempts")
    if isinstance(attempts, list) and attempts:
        last = {**attempts[-1], **details}
        active.update_lock(extra={**active.lock.extra, "attempts": [*attempts[:-1], last]})


def _log_failure(logger: logging.Logger, done: Done) -> None:
    error = done.error or {}
    logger.error(
        "task %d failed: %s: %s", done.index, error.get("type", "?"), error.get("message", "")
    )


# --- the work: running tasks in any process ------------------------------------------------


@dataclass(frozen=True)
class MapWork:
    """The tasks of one map, as any process runs them (sent to joblib and Slurm workers).

    Each task's outcome is appended to this process's record file in ``tasks/done/``; a
    task's ``Exception`` is recorded and never escapes, while ``KeyboardInterrupt`` or
    ``SystemExit`` (Ctrl-C, a Slurm checkpoint) propagate unrecorded: the task simply runs
    again on a resume or a requeue.
    """

    shipment: Shipment
    key: str | None
    run_dir: Path
    run_id: str
    started: dt.datetime
    settings: Settings
    cwd: str

    @classmethod
    def of(cls, active: ActiveRun, key: str | None, *, code: CodeTree | None = None) -> MapWork:
        """The work of the running map ``active``; workers import ``code`` (None: live)."""
        return cls(
            shipment=Shipment(active.stage, [active.config], code),
            key=key,
            run_dir=active.paths.dir,
            run_id=active.id,
            started=active.plan.started,
            settings=active.settings,
            cwd=os.getcwd(),
        )

    @property
    def stage(self) -> StageInfo:
        """The stage (in a worker: imported from the snapshot's code tree)."""
        return self.shipment.stage

    @property
    def config(self) -> DictConfig:
        """The map's resolved config."""
        return self.shipment.configs[0]

    @property
    def code(self) -> CodeTree | None:
        """The code tree workers import from (None: the live working tree)."""
        return self.shipment.code

    @property
    def paths(self) -> RunPaths:
        """The files of the map's run directory."""
        return RunPaths(self.run_dir)

    @property
    def label(self) -> str:
        return self.stage.name

    @property
    def folder(self) -> Path:
        return self.paths.slurm

    @property
    def root(self) -> Path:
        return self.settings.root

    def run(self, indices: Sequence[int], *, in_process: bool = False) -> list[Done]:
        """Run tasks ``indices`` here and record them; in the map's own process, its run is
        the context and locals are captured (``stop_on_error`` hands them back)."""
        worker = _worker(self)
        # in the map's own process, tasks run in the map's run (already the active one)
        owner = in_process and active_run() is not None
        with contextlib.nullcontext() if owner else worker.active:
            out = [worker.run_task(i, capture=in_process) for i in indices]
        worker.log.sync()
        return out

    def left(self, indices: Sequence[int]) -> list[int]:
        state = _tasks.scan_done(self.paths, len(_tasks.read_todo(self.paths)))
        return [i for i in indices if i not in state.ok]

    @contextlib.contextmanager
    def in_job(self) -> Iterator[None]:
        """A Slurm job's output goes to the map's run.log."""
        log = LogFile(self.paths.log)
        try:
            with capture_output(log, fds=False):
                yield
        finally:
            log.close()

    def after_job(self) -> None:
        """The last job to finish ends the run (status, counts, metrics)."""
        _tasks.try_finalize(self.paths)


@dataclass
class _Worker:
    """This process's context for the tasks of one map: made once per process and map."""

    key: tuple[str, dt.datetime, int, str]
    work: MapWork
    active: ActiveRun
    log: _tasks.DoneLog
    todo: Sequence[Any]
    configs: _tasks.TaskConfigs

    def run_task(
        self, index: int, *, capture: bool = False, still_mine: Callable[[], bool] | None = None
    ) -> Done:
        """Run task ``index`` and record it, unless ``still_mine`` says another took it over."""
        start = time.perf_counter()
        result, local_vars, exc = self._call(index, capture=capture)
        duration_s = time.perf_counter() - start
        if exc is not None and not isinstance(exc, Exception):
            raise exc  # Ctrl-C, a checkpoint: unrecorded, the task runs again later
        mine = still_mine is None or still_mine()
        if exc is None:
            if mine:
                self.log.record(index, "ok", duration_s)
            return Done(index, True, result)
        error = error_record(exc)
        if mine:
            self.log.record(index, "failed", duration_s, error=error)
        kept = exc if capture else None
        return Done(index, False, error=error, exception=kept, locals=local_vars)

    def _call(
        self, index: int, *, capture: bool
    ) -> tuple[Any, dict[str, Any] | None, BaseException | None]:
        try:
            cfg = self.configs(self.todo[index], index)
        except (ConfigError, TaskError) as e:
            return None, None, e
        with task_scope(index):  # its metrics records carry the task's index
            if capture:
                return call_capturing(self.work.stage.fn, cfg)
            try:
                return self.work.stage.fn(cfg), None, None
            except BaseException as e:
                return None, None, e


_worker_cache: list[_Worker] = []


def _worker(work: MapWork, *, log_name: str | None = None) -> _Worker:
    """This process's task context for ``work`` (made once per process and map).

    Its records go to ``tasks/done/<log_name>.jsonl`` (default: this process's worker id).
    """
    name = log_name or _tasks.worker_id()
    key = (work.run_id, work.started, os.getpid(), name)  # one attempt of one map, here
    if _worker_cache and _worker_cache[0].key == key:
        return _worker_cache[0]
    release_workers()
    if os.getcwd() != work.cwd:  # a reused worker process, or a job: relative paths as the map's
        os.chdir(work.cwd)
    paths = work.paths
    worker = _Worker(
        key=key,
        work=work,
        active=task_run(work),
        log=_tasks.DoneLog(paths, name),
        todo=_tasks.read_todo(paths),
        configs=_tasks.TaskConfigs(work.config, work.key),
    )
    _worker_cache.append(worker)
    return worker


def release_workers() -> None:
    """Close this process's task context (its record file) once its map is over here."""
    while _worker_cache:
        old = _worker_cache.pop()
        old.log.close()
        old.active.close()


def task_run(work: MapWork) -> ActiveRun:
    """The map's run as seen from a worker process: ``xp.current()``, ``xp.log_metrics``...

    Only the map's own process writes run.lock: this context keeps its lock in memory.
    """
    plan = RunPlan(
        stage=work.stage, config=work.config, settings=work.settings, started=work.started
    )
    lock = RunLock(id=work.run_id, stage=work.stage.name, dir=work.settings.relative(work.run_dir))
    logger = make_logger(work.stage.name, work.run_id)
    return ActiveRun(
        plan=plan, run=Run(work.run_dir), lock=lock, recorders=[], logger=logger, owner=False
    )


class _Progress:
    """Progress of a map: a rich bar on the terminal (when one), log lines every 10%."""

    def __init__(self, logger: logging.Logger, total: int, terminal: int | None) -> None:
        self._logger = logger
        self._total = total
        self._done = 0
        self._next_log = 0.1
        self._stream = (
            os.fdopen(os.dup(terminal), "w") if terminal is not None and total > 1 else None
        )
        self._bar = ProgressBar(
            "tasks",
            total=total,
            enabled=self._stream is not None,
            stream=self._stream,
            transient=False,
        )
        self._bar.start()

    def advance(self, n: int) -> None:
        self._done += n
        self._bar.update(completed=self._done)
        if self._total >= 20 and self._done / self._total >= self._next_log - 1e-9:
            self._logger.info("tasks: %d of %d run", self._done, self._total)
            self._next_log = math.floor(self._done / self._total * 10 + 1) / 10

    def close(self) -> None:
        self._bar.stop()
        if self._stream is not None:
            self._stream.close()
