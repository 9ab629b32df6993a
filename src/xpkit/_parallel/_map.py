"""``Stage.map`` and ``Stage.sweep``: one function over many tasks or many configs.

A map is ONE tracked run (one directory, one run.lock, one run.log) whose body runs the
tasks: in this process (``serial``), in local processes (``joblib``), or in Slurm jobs
(``slurm``, see ``_slurm.py``, non-blocking). Every task gets the run's resolved config with
the task merged in, and writes its outputs into the run directory; its outcome is a record
in ``tasks/done/<worker>.jsonl`` (see ``_tasks.py``), so any process may be killed at any
moment and ``resume=RUN_DIR`` runs exactly the tasks without an ``ok`` record.

A sweep is the other way round: one full run (own directory, own run.lock) per config of a
grid, the runs grouped by ``sweep: {id, point, total, values}`` in their run.lock.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import logging
import math
import os
import sys
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .._catalog._run import Run, process_alive
from .._core._lock import RunLock, load_yaml, new_run_id
from .._core._paths import RunPaths, atomic_write_text, display_path
from .._core._progress import ProgressBar
from .._core._settings import Settings
from .._execute._context import ActiveRun, RunPlan, make_logger
from .._execute._task import task_scope
from ..errors import ConfigError, TaskError, TasksFailed, missing_extra
from . import _tasks

if typing.TYPE_CHECKING:
    from .._api._stage import Outcome, Stage

__all__ = ["BACKENDS", "MapOptions", "grid_points", "map_stage", "sweep_stage"]

BACKENDS = ("serial", "joblib", "slurm")
_BATCHES_PER_PROCESS = 8


@dataclass(frozen=True)
class MapOptions:
    """How to run a map (the keyword arguments of ``Stage.map``)."""

    key: str | None = None
    backend: str = "serial"
    jobs: int | None = None
    slurm: Mapping[str, Any] = field(default_factory=dict)
    resume: Path | None = None
    stop_on_error: bool = False


def map_stage(
    stage: Stage[Any],
    base: DictConfig,
    tasks: Iterable[Any] | None,
    options: MapOptions,
    *,
    argv: Sequence[str] | None = None,
    fds: bool = False,
    src: bool = True,
) -> Run:
    """Run ``stage`` over ``tasks`` as one tracked run; see ``Stage.map``."""
    _check_options(options)
    todo: Sequence[Any]
    if options.resume is not None:
        base, todo, key = _resume_inputs(stage, options.resume, tasks, options.key)
        options = replace(options, key=key)
    else:
        if tasks is None:
            msg = "map needs tasks (or resume=RUN_DIR to finish a mapped run)"
            raise TaskError(msg)
        todo = list(tasks)
    if todo:
        _tasks.task_config(base, todo[0], options.key, 0)  # a wrong key fails before any run
    terminal = _terminal_fd(options)
    body = _MapBody(todo, options, terminal)
    try:
        stage._execute(base, argv=argv, fds=fds, src=src, body=body, resume=options.resume)
    finally:
        if terminal is not None:
            os.close(terminal)
    assert stage.last is not None
    if options.backend == "slurm":
        atomic_write_text(stage.last.paths.submitted, "")
    return stage.last


def _check_options(options: MapOptions) -> None:
    if options.backend not in BACKENDS:
        msg = f"unknown backend {options.backend!r} (valid: {', '.join(BACKENDS)})"
        raise ConfigError(msg)
    if options.jobs is not None and options.jobs < 1:
        msg = f"jobs must be a positive number of processes, got {options.jobs}"
        raise ConfigError(msg)
    if options.stop_on_error and options.backend != "serial":
        msg = f"stop_on_error needs backend='serial' (got {options.backend!r})"
        raise ConfigError(msg)
    if options.backend == "slurm":
        from ._slurm import check_slurm_options

        check_slurm_options(options.slurm)
    elif options.slurm:
        msg = f"Slurm options were given for backend {options.backend!r}; use backend='slurm'"
        raise ConfigError(msg)


def _resume_inputs(
    stage: Stage[Any], run_dir: Path, tasks: Iterable[Any] | None, key: str | None
) -> tuple[DictConfig, Sequence[Any], str | None]:
    """The config, task list and task key of the map in ``run_dir``, to finish it."""
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
    base = stage.config()
    base.merge_with(OmegaConf.create(dict(lock.config)))
    return base, todo, recorded


def _still_running(lock: RunLock) -> bool:
    jobs = (lock.tasks or {}).get("jobs")
    if jobs:
        from ._slurm import job_states, unfinished

        return bool(unfinished(job_states([str(j) for j in jobs])))
    return bool(process_alive(lock)) and lock.pid != os.getpid()


def _who(lock: RunLock) -> str:
    jobs = (lock.tasks or {}).get("jobs")
    return f"Slurm jobs {', '.join(map(str, jobs))}" if jobs else f"pid {lock.pid} on {lock.host}"


def _terminal_fd(options: MapOptions) -> int | None:
    """A duplicate of the terminal's stderr taken before the run captures fd 2 (progress bar)."""
    if options.backend == "slurm":
        return None
    try:
        if not sys.stderr.isatty():
            return None
        return os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return None


class _MapBody:
    """The body of a map's run: bookkeeping, then the tasks through one backend."""

    def __init__(self, todo: Sequence[Any], options: MapOptions, terminal: int | None) -> None:
        self.todo = todo
        self.options = options
        self.terminal = terminal

    def __call__(self, active: ActiveRun) -> Outcome:
        from .._api._stage import Outcome

        paths = active.paths
        options = self.options
        if options.resume is None:
            _tasks.write_todo(paths, self.todo)
        state = _tasks.scan_done(paths, len(self.todo))
        pending = state.pending()
        previous = dict(active.lock.tasks or {})
        section = {
            **state.counts(),
            "backend": options.backend,
            **({"key": options.key} if options.key is not None else {}),
            **({"resumed": int(previous.get("resumed", 0)) + 1} if options.resume else {}),
        }
        active.update_lock(tasks=section)
        if options.backend == "slurm" and pending:
            from ._slurm import submit

            extra = submit(active, pending, len(self.todo), options)
            active.update_lock(tasks={**section, **extra})
            return Outcome(result=None, detached=True)
        active.logger.info(
            "mapping %d tasks (%d to run) with %s", len(self.todo), len(pending), options.backend
        )
        results: list[Any] = [None] * len(self.todo)
        progress = _Progress(active.logger, len(pending), self.terminal)
        try:
            if options.backend != "joblib":  # serial, or slurm with nothing left
                stopped = _run_serial(active, self.todo, pending, options, results, progress)
            else:
                stopped = None
                _run_joblib(active, self.todo, pending, options, results, progress)
        finally:
            progress.close()
        state = _tasks.scan_done(paths, len(self.todo))
        active.update_lock(tasks={**section, **state.counts()})
        active.last_metrics.update(_tasks.last_metrics(paths))
        if stopped is not None:
            return stopped
        error = None
        if state.failed or state.left:
            shown = _shown(str(paths.dir))
            error = TasksFailed(
                f"{_tasks.summary(state)}; see them: xp tasks {shown} --failed;"
                f" run what is left: --resume {shown}"
            )
        return Outcome(result=results, error=error)


# --- running tasks -------------------------------------------------------------------------


def run_task(
    fn: Callable[..., Any],
    configs: _tasks.TaskConfigs,
    task: Any,
    index: int,
    log: _tasks.DoneLog,
    *,
    still_mine: Callable[[], bool] | None = None,
) -> tuple[bool, Any, dict[str, str] | None]:
    """Run one task and record it: ``(ok, result, error)``; an ``Exception`` never escapes.

    ``KeyboardInterrupt``/``SystemExit`` (Ctrl-C, a Slurm checkpoint) propagate unrecorded:
    the task simply runs again on a resume or a requeue. ``still_mine`` (pool mode) is asked
    before recording: a task taken over by another worker is not recorded here.
    """
    start = time.perf_counter()
    try:
        with task_scope(index):
            result = fn(configs(task, index))
    except Exception as e:
        error = _tasks.error_record(e)
        if still_mine is None or still_mine():
            log.record(index, "failed", time.perf_counter() - start, error=error)
        return False, None, error
    if still_mine is None or still_mine():
        log.record(index, "ok", time.perf_counter() - start)
    return True, result, None


def _run_serial(
    active: ActiveRun,
    todo: Sequence[Any],
    pending: list[int],
    options: MapOptions,
    results: list[Any],
    progress: _Progress,
) -> Outcome | None:
    """Run the tasks here, locals captured; with ``stop_on_error`` the first failure ends it."""
    from .._api._stage import Outcome
    from .._execute._locals import call_capturing

    log = _tasks.DoneLog(active.paths, _tasks.local_worker_id())
    configs = _tasks.TaskConfigs(active.config, options.key)
    fn = active.stage.fn
    try:
        for i in pending:
            start = time.perf_counter()
            exc: BaseException | None
            try:
                cfg = configs(todo[i], i)
            except ConfigError as e:
                result, local_vars, exc = None, None, e
            else:
                with task_scope(i):
                    result, local_vars, exc = call_capturing(fn, cfg)
            duration_s = time.perf_counter() - start
            if exc is None:
                log.record(i, "ok", duration_s)
                results[i] = result
            elif isinstance(exc, Exception):
                error = _tasks.error_record(exc)
                log.record(i, "failed", duration_s, error=error)
                _log_failure(active.logger, i, error)
                if options.stop_on_error:
                    return Outcome(locals=local_vars, error=exc)
            else:
                raise exc
            progress.advance(1)
    finally:
        log.close()
    return None


def _log_failure(logger: logging.Logger, index: int, error: Mapping[str, str]) -> None:
    logger.error("task %d failed: %s: %s", index, error["type"], error["message"])


@dataclass(frozen=True)
class TaskSpec:
    """What a worker process needs to run tasks of one map (sent once per batch)."""

    stage: Stage[Any]
    config: DictConfig
    key: str | None
    run_dir: Path
    run_id: str
    started: Any
    settings: Settings
    cwd: str
    worker_prefix: str = ""

    @classmethod
    def of(cls, active: ActiveRun, key: str | None, *, worker_prefix: str = "") -> TaskSpec:
        """The spec of the running map ``active``."""
        stage = copy.copy(active.stage)
        stage.last = None
        return cls(
            stage=stage,
            config=active.config,
            key=key,
            run_dir=active.paths.dir,
            run_id=active.id,
            started=active.started,
            settings=active.settings,
            cwd=os.getcwd(),
            worker_prefix=worker_prefix,
        )


def run_batch(
    spec: TaskSpec, items: list[tuple[int, Any]]
) -> list[tuple[int, bool, Any, dict[str, str] | None]]:
    """Run a batch of tasks in a worker process (joblib or a Slurm job); records written here."""
    if os.getcwd() != spec.cwd:  # a reused worker process, or a job: relative paths as the map's
        os.chdir(spec.cwd)
    worker = _worker(spec)
    configs = _tasks.TaskConfigs(spec.config, spec.key)
    out = []
    with worker.active:
        for i, task in items:
            ok, result, error = run_task(spec.stage.fn, configs, task, i, worker.log)
            out.append((i, ok, result, error))
    worker.log.sync()
    return out


@dataclass
class _Worker:
    key: tuple[str, int]
    active: ActiveRun
    log: _tasks.DoneLog


_worker_cache: list[_Worker] = []


def _worker(spec: TaskSpec) -> _Worker:
    """This process's task context for the map of ``spec`` (made once per process and map)."""
    key = (spec.run_id, os.getpid())
    if _worker_cache and _worker_cache[0].key == key:
        return _worker_cache[0]
    while _worker_cache:
        old = _worker_cache.pop()
        old.log.close()
        old.active.close()
    paths = RunPaths(spec.run_dir)
    worker_id = f"{spec.worker_prefix}{_tasks.local_worker_id()}"
    worker = _Worker(key, task_run(spec), _tasks.DoneLog(paths, worker_id))
    _worker_cache.append(worker)
    return worker


class _TaskRun(ActiveRun):
    """A map's run as seen from a worker process: ``xp.current()``, ``xp.log_metrics``...

    Only the map's own process writes run.lock; here lock updates stay in memory.
    """

    def update_lock(self, **changes: Any) -> RunLock:
        self._lock = self._lock.replace(**changes)
        return self._lock


def task_run(spec: TaskSpec) -> ActiveRun:
    """An active-run context for tasks running outside the map's own process."""
    plan = RunPlan(
        stage=spec.stage, config=spec.config, settings=spec.settings, started=spec.started
    )
    lock = RunLock(id=spec.run_id, stage=spec.stage.name, dir=spec.settings.relative(spec.run_dir))
    logger = make_logger(spec.stage.name, spec.run_id)
    return _TaskRun(plan=plan, run=Run(spec.run_dir), lock=lock, recorders=[], logger=logger)


def batches(pending: Sequence[int], processes: int) -> list[list[int]]:
    """Split ``pending`` in contiguous batches, a few per process (low overhead, balanced)."""
    if not pending:
        return []
    count = min(len(pending), processes * _BATCHES_PER_PROCESS)
    size = math.ceil(len(pending) / count)
    return [list(pending[k : k + size]) for k in range(0, len(pending), size)]


def run_joblib(
    spec: TaskSpec,
    todo: Sequence[Any],
    pending: Sequence[int],
    processes: int,
    on_done: Callable[[int, bool, Any, dict[str, str] | None], None],
) -> None:
    """Run ``pending`` tasks in ``processes`` local processes; ``on_done`` in task order."""
    try:
        import joblib
    except ImportError:
        raise missing_extra("joblib", "parallel") from None
    if processes == 1 or len(pending) <= 1:
        for out in run_batch(spec, [(i, todo[i]) for i in pending]):
            on_done(*out)
        return
    parallel = joblib.Parallel(n_jobs=processes, return_as="generator", batch_size=1)
    calls = (
        joblib.delayed(run_batch)(spec, [(i, todo[i]) for i in batch])
        for batch in batches(pending, processes)
    )
    for outs in parallel(calls):
        for out in outs:
            on_done(*out)


def available_cpus() -> int:
    """The CPUs this process may use (its affinity, e.g. a Slurm allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _run_joblib(
    active: ActiveRun,
    todo: Sequence[Any],
    pending: list[int],
    options: MapOptions,
    results: list[Any],
    progress: _Progress,
) -> None:
    processes = options.jobs or available_cpus()
    spec = TaskSpec.of(active, options.key)

    def on_done(i: int, ok: bool, result: Any, error: dict[str, str] | None) -> None:
        results[i] = result
        if error is not None:
            _log_failure(active.logger, i, error)
        progress.advance(1)

    run_joblib(spec, todo, pending, processes, on_done)


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


# --- sweeps ---------------------------------------------------------------------------------


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
    stage: Stage[Any],
    base: DictConfig,
    points: list[dict[str, Any]],
    *,
    backend: str = "serial",
    jobs: int | None = None,
    slurm: Mapping[str, Any] | None = None,
    src: bool = True,
) -> list[Any]:
    """One full run per point; see ``Stage.sweep``."""
    _check_options(MapOptions(backend=backend, jobs=jobs, slurm=dict(slurm or {})))
    from .._api._stage import _apply_kwargs

    sweep_id = new_run_id()
    configs = [_apply_kwargs(base, point) for point in points]
    extras = [
        {"sweep": {"id": sweep_id, "point": k, "total": len(points), "values": _plain(point)}}
        for k, point in enumerate(points)
    ]
    copy_ = copy.copy(stage)
    copy_.last = None
    calls = [(copy_, cfg, extra, src) for cfg, extra in zip(configs, extras, strict=True)]
    if backend == "slurm":
        from ._slurm import submit_sweep

        job_ids: list[Any] = submit_sweep(calls, dict(slurm or {}), sweep_id)
        return job_ids
    if backend == "joblib":
        try:
            import joblib
        except ImportError:
            raise missing_extra("joblib", "parallel") from None
        n_jobs = min(jobs or available_cpus(), len(calls))
        outcomes = joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(sweep_point)(*c) for c in calls)
    else:
        outcomes = [sweep_point(stage, cfg, extra, src) for _, cfg, extra, src in calls]
    runs = [Run(path) for path, _ in outcomes if path]
    if runs and backend == "joblib":
        stage.last = runs[-1]
    failed = [f"{_shown(path)}: {error}" for path, error in outcomes if error]
    if failed:
        msg = f"{len(failed)} of {len(points)} sweep points failed ({'; '.join(failed)})"
        raise TaskError(msg)
    return runs


def sweep_point(
    stage: Stage[Any], cfg: DictConfig, extra: Mapping[str, Any], src: bool = True
) -> tuple[str, str | None]:
    """Run one point of a sweep: ``(run dir, error or None)``; its failure is recorded."""
    before = stage.last
    try:
        stage._execute(cfg, extra=extra, src=src)
    except Exception as e:
        if stage.last is None or stage.last is before:
            return "", f"{type(e).__name__}: {e}"
        return str(stage.last.dir), f"{type(e).__name__}: {e}"
    assert stage.last is not None
    return str(stage.last.dir), None


def _shown(path: str) -> str:
    """A run directory as the user names it: relative to the working directory if inside."""
    return display_path(Path(path)) if path else "(no run directory)"


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# --- command line ---------------------------------------------------------------------------


def map_from_cli(
    stage: Stage[Any],
    cfg: DictConfig,
    options: argparse.Namespace,
    *,
    argv: Sequence[str],
    fds: bool,
    src: bool,
) -> Run:
    """``--tasks FILE`` / ``--resume RUN_DIR`` of a stage script."""
    backend = options.backend or "serial"
    map_options = MapOptions(
        key=options.task_key,
        backend=backend,
        jobs=options.jobs,
        slurm=parse_slurm_args(options.slurm),
        resume=Path(options.resume) if options.resume else None,
        stop_on_error=options.stop_on_error or (options.pdb and backend == "serial"),
    )
    tasks = read_tasks_file(options.tasks) if options.tasks else None
    # a Slurm submission names its jobs and how to follow them in the run's log
    return map_stage(stage, cfg, tasks, map_options, argv=argv, fds=fds, src=src)


def sweep_from_cli(
    stage: Stage[Any], cfg: DictConfig, options: argparse.Namespace, *, src: bool
) -> list[Any]:
    """``--sweep KEY=V1,V2 ...`` of a stage script."""
    if options.tasks or options.resume:
        msg = "--sweep makes one run per point; it does not combine with --tasks or --resume"
        raise ConfigError(msg)
    grid: dict[str, list[Any]] = {}
    for item in options.sweep:
        name, sep, values = item.partition("=")
        if not sep or not name:
            msg = f"--sweep takes KEY=V1,V2,..., got {item!r}"
            raise ConfigError(msg)
        grid[name] = [_yaml_value(v) for v in split_values(values)]
    out = sweep_stage(
        stage,
        cfg,
        grid_points(grid),
        backend=options.backend or "serial",
        jobs=options.jobs,
        slurm=parse_slurm_args(options.slurm),
        src=src,
    )
    print(_sweep_summary(out), file=sys.stderr)
    return out


def _sweep_summary(out: Sequence[Any]) -> str:
    """One line after a CLI sweep: where its runs are, or the Slurm jobs it submitted."""
    runs = [item for item in out if isinstance(item, Run)]
    if not runs:
        jobs = ", ".join(map(str, out))
        return f"[xpkit] sweep of {len(out)} points submitted to Slurm: jobs {jobs}"
    sweep = runs[0].lock.extra.get("sweep") or {}
    where = _shown(str(runs[0].dir.parent))
    return (
        f"[xpkit] sweep {sweep.get('id', '?')}: {len(runs)} runs completed in {where}"
        f" (compare them: xp ls {where})"
    )


def split_values(text: str) -> list[str]:
    """Split ``a,[1,2],{x: 1}`` at the commas outside brackets and quotes."""
    parts: list[str] = []
    depth, quote, current = 0, "", list[str]()
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _yaml_value(text: str) -> Any:
    import yaml

    try:
        return load_yaml(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def parse_slurm_args(items: Sequence[str]) -> dict[str, Any]:
    """``["cpus=4", "additional.constraint=gpu"]`` -> ``{"cpus": 4, "additional": {...}}``."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            msg = f"--slurm takes KEY=VALUE, got {item!r}"
            raise ConfigError(msg)
        parsed = _yaml_value(value)
        if name.startswith("additional."):
            out.setdefault("additional", {})[name.split(".", 1)[1]] = parsed
        else:
            out[name] = parsed
    return out


def read_tasks_file(path: str | os.PathLike[str]) -> list[Any]:
    """Tasks from ``path``: JSON lines (``.jsonl``), a YAML/JSON list, or one item per line.

    Raises:
        TaskError: the file cannot be read or parsed.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        msg = f"--tasks {p}: cannot read it ({e.strerror})"
        raise TaskError(msg) from None
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return [
            _json_line(p, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()
        ]
    if suffix in (".yaml", ".yml", ".json"):
        import yaml

        try:
            data = load_yaml(text)
        except yaml.YAMLError as e:
            msg = f"--tasks {p}: invalid YAML/JSON: {getattr(e, 'problem', e)}"
            raise TaskError(msg) from None
        if not isinstance(data, list):
            msg = f"--tasks {p}: expected a list of tasks, got a {type(data).__name__}"
            raise TaskError(msg)
        return data
    return [line.strip() for line in text.splitlines() if line.strip()]


def _json_line(path: Path, n: int, line: str) -> Any:
    import json

    try:
        return json.loads(line)
    except ValueError as e:
        msg = f"--tasks {path} line {n}: invalid JSON ({e})"
        raise TaskError(msg) from None
