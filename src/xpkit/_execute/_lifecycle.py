"""The life of one run, for every kind of run: plan -> start -> body -> finish.

A plain call, a script or console run, the process that owns a map, a sweep point: each is
a :class:`RunRequest` given to :func:`execute`, which returns a :class:`RunResult` (the run
and its :class:`Outcome`). What differs between them is the request: the body (the stage's
function, or a map's tasks), the command line recorded, whether output is captured at the
file-descriptor level, an existing directory to resume in.

The phases, and what each writes::

    plan     the config resolves, the recorders validate their inputs (data paths exist,
             upstream runs completed); an error here is an XpkitError and nothing exists yet
    start    the run directory (atomically, suffixed on collision), config.yaml, run.lock
             ("running", config, entry, argv), the stage's ``latest`` link
    record   the recorders start: upstream and the code snapshot are in run.lock before the
             body runs, the environment and the data hashes as soon as they are known
    body     in the run's context (``xp.current()``), its output teed into run.log, SIGTERM
             turned into an ``interrupted`` ending; never raises, its exception is the outcome
    finish   the recorders' final sections, then the final run.lock: status, end, duration,
             error, metrics (see :mod:`._ending`); a stage run inside another run is recorded
             as an upstream of that run

The hooks of a request (MLflow tracking) hear of the run's start and end; the run's
``locals``, ``result`` and ``error`` are set before they hear of the end.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._catalog._run import Run
from .._core import _config
from .._core._env import hostname
from .._core._lock import RunLock, load_lock, new_run_id, now
from .._core._paths import RunPaths, atomic_write_text, display_path, point_latest
from .._core._settings import Settings, load_settings
from .._core._yaml import dump_yaml
from .._record._plan import Recorder, RunPlan, StageInfo
from ..errors import ConfigError, NotInRunError, RunDirError
from ._capture import LogFile, capture_output
from ._context import ActiveRun, drop_logger, make_logger
from ._ending import end_lock, error_record, status_of, user_traceback
from ._locals import call_capturing

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .._record._codetree import CodeTree

__all__ = [
    "Body",
    "Interrupted",
    "Outcome",
    "RunHook",
    "RunRequest",
    "RunResult",
    "call_stage",
    "execute",
]


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM during a run."""


@dataclass
class Outcome:
    """What a run's body did: its result, the locals to hand back, its exception.

    ``detached``: the work goes on elsewhere (Slurm jobs) and whoever ends it writes the final
    run.lock, so the run stays ``running`` here.
    """

    result: Any = None
    locals: dict[str, Any] | None = None
    error: BaseException | None = None
    detached: bool = False


Body = Callable[[ActiveRun], Outcome]
"""What a run does once started: the stage's function (:func:`call_stage`), or a map."""


class RunHook(Protocol):
    """Something that follows runs (MLflow tracking): told of the start, then of the end."""

    def begin(self, run: ActiveRun) -> Callable[[], None] | None:
        """Called once the run started; returns what to call when it has ended (or None)."""


@dataclass(frozen=True)
class RunRequest:
    """Everything that makes one run, before it starts.

    Args:
        stage: the stage to run.
        config: its config, not yet resolved (``save_dir`` may hold ``${now:...}``).
        argv: the command line recorded in run.lock (default ``sys.argv``).
        fds: capture the process's file descriptors 1 and 2 into run.log (scripts).
        src: snapshot the code (when the stage does).
        resume: an existing run directory to run again in (same id, same files).
        extra: keys added to run.lock from the start (e.g. ``sweep``).
        body: what the run does (default: the stage's function on the config).
        hooks: followers of the run (MLflow tracking).
        code: the code tree the stage was imported from (``xp rerun``, a worker running a
            snapshot): run.lock ``src`` records its commit instead of a new snapshot.
        reuse: return a completed run with the same config, code, inputs and upstream runs
            instead of running (see :mod:`._reuse`).
    """

    stage: StageInfo
    config: DictConfig
    argv: Sequence[str] | None = None
    fds: bool = False
    src: bool = True
    resume: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    body: Body | None = None
    hooks: Sequence[RunHook] = ()
    code: CodeTree | None = None
    reuse: bool = False


@dataclass(frozen=True)
class RunResult:
    """A run that happened: the run directory (with ``locals``, ``result``, ``error``) and
    its outcome."""

    run: Run
    outcome: Outcome

    @property
    def error(self) -> BaseException | None:
        """The body's exception, or None."""
        return self.outcome.error

    def value(self) -> Any:
        """The body's return value; its exception raised again (xpkit's frames left out)."""
        exc = self.outcome.error
        if exc is not None:
            raise exc.with_traceback(user_traceback(exc))
        return self.outcome.result


def execute(request: RunRequest) -> RunResult:
    """Run one tracked run through every phase; the body's exception is in the result.

    Raises:
        XpkitError: the run cannot start (bad config, missing data or upstream, a run
            directory that cannot be created); nothing is left behind.
    """
    plan, config, recorders = _plan(request)
    if request.reuse:
        from ._reuse import reuse_run  # the reuse check loads with a first reusing call

        reused = reuse_run(plan)
        if reused is not None:
            return RunResult(reused, Outcome(result=reused.result))
    active, log = _start(request, plan, config, recorders)
    endings = _begin_hooks(request.hooks, active)
    try:
        outcome = _live(active, log, recorders, request.body or call_stage, fds=request.fds)
    finally:
        for end in endings:
            end()  # never raises: a hook's failure is its own warning
    return RunResult(active.run, outcome)


def call_stage(active: ActiveRun) -> Outcome:
    """The default body: the stage's function on the run's config, its locals captured; its
    return value is kept in the run directory (a later call may reuse it)."""
    result, local_vars, exc = call_capturing(active.stage.fn, active.config)
    if exc is None:
        from ._returned import save_result

        save_result(active, result)
    return Outcome(result, local_vars, exc)


# --- plan ----------------------------------------------------------------------------------


def _plan(request: RunRequest) -> tuple[RunPlan, DictConfig, list[Recorder]]:
    """Check the config resolves and the recorders' inputs; nothing is created yet.

    Returns the plan (with the config resolved as a probe), the config still to resolve in
    the run directory (``${save_dir}`` may be used by other keys) and the recorders.
    """
    from .._record._recorders import default_recorders  # the recorders load with a first run

    settings = load_settings()
    started = now()
    config = copy.deepcopy(request.config)
    plan = RunPlan(
        stage=request.stage,
        config=_probe(config, started),
        settings=settings,
        started=started,
        src=request.src and request.stage.src,
        code=request.code,
    )
    recorders = default_recorders()
    for recorder in recorders:
        updates = recorder.prepare(plan)
        for key, value in (updates or {}).items():  # e.g. an upstream ``latest`` link
            _config.update(config, key, value)
            _config.update(plan.config, key, value)
    return plan, config, recorders


def _probe(cfg: DictConfig, started: Any) -> DictConfig:
    """A resolved copy of ``cfg``; a non-empty ``save_dir`` is required."""
    probe = copy.deepcopy(cfg)
    with _config.now_at(started):
        _config.resolve(probe)
    if not isinstance(probe.get("save_dir"), str) or not probe.save_dir:
        msg = f"config key 'save_dir' must be a non-empty path, got {probe.get('save_dir')!r}"
        raise ConfigError(msg)
    return probe


# --- start ---------------------------------------------------------------------------------


def _start(
    request: RunRequest, plan: RunPlan, config: DictConfig, recorders: list[Recorder]
) -> tuple[ActiveRun, LogFile]:
    """Create (or reopen) the run directory; write the first run.lock and config.yaml, open
    run.log.

    Raises:
        RunDirError: the directory or its first files cannot be written (read-only, full);
            a directory this call created is removed again.
    """
    settings = plan.settings
    if request.resume is not None:
        run_dir = request.resume.resolve()
        previous: RunLock | None = load_lock(RunPaths(run_dir).lock)
    else:
        run_dir = _create_run_dir(settings.resolve(plan.config.save_dir))
        previous = None
    try:
        return _open(request, plan, config, recorders, run_dir, previous)
    except OSError as e:
        if previous is None:
            import shutil  # only on this path: shutil pulls in the compression modules

            shutil.rmtree(run_dir, ignore_errors=True)
        raise _dir_error(run_dir, e) from None


def _open(
    request: RunRequest,
    plan: RunPlan,
    cfg: DictConfig,
    recorders: list[Recorder],
    run_dir: Path,
    previous: RunLock | None,
) -> tuple[ActiveRun, LogFile]:
    _config.update(cfg, "save_dir", display_path(run_dir), force=True)
    with _config.now_at(plan.started):
        _config.resolve(cfg)
    plan = dataclasses.replace(plan, config=cfg)
    paths = RunPaths(run_dir)
    config = _config.to_plain(cfg)
    lock = _first_lock(request, plan, run_dir, config, previous)
    active = ActiveRun(
        plan=plan,
        run=Run(run_dir),
        lock=lock,
        recorders=recorders,
        logger=make_logger(plan.stage.name, lock.id),
    )
    active.update_lock()  # first: a run killed from here on is a run
    atomic_write_text(paths.config, dump_yaml(config))
    log = LogFile(paths.log)
    if _under_results(plan.settings, run_dir):
        with contextlib.suppress(OSError):  # a missing link costs the run nothing
            point_latest(run_dir)
    return active, log


def _first_lock(
    request: RunRequest,
    plan: RunPlan,
    run_dir: Path,
    config: dict[str, Any],
    previous: RunLock | None,
) -> RunLock:
    """The run.lock a run starts with; a resumed run keeps its id, start and history."""
    from ._entry import entry_record

    settings = plan.settings
    base = plan.code.dir if plan.code is not None else None
    extra = {
        **request.extra,
        "entry": entry_record(plan.stage.entry(), settings, base=base),
        "defaults": _config.changed_defaults(plan.stage.config, config, when=plan.started),
    }
    argv = tuple(sys.argv if request.argv is None else request.argv)
    if previous is None:
        return RunLock(
            id=new_run_id(),
            stage=plan.stage.name,
            dir=settings.relative(run_dir),
            started=plan.started.isoformat(),
            pid=os.getpid(),
            host=hostname(),
            argv=argv,
            config=config,
            extra=extra,
        )
    attempt = {"started": plan.started.isoformat(), "pid": os.getpid(), "host": hostname()}
    attempts = [*_attempts(previous), attempt]
    return previous.replace(
        status="running",
        ended=None,
        duration_s=None,
        error=None,
        pid=os.getpid(),
        host=hostname(),
        argv=argv,
        config=config,
        extra={**previous.extra, **extra, "attempts": attempts},
    )


def _attempts(lock: RunLock) -> list[dict[str, Any]]:
    """The attempts of a run so far; a run resumed for the first time had one."""
    recorded = lock.extra.get("attempts")
    if isinstance(recorded, list) and recorded:
        return [dict(a) for a in recorded if isinstance(a, Mapping)]
    first: dict[str, Any] = {"started": lock.started, "pid": lock.pid, "host": lock.host}
    if lock.ended:
        first.update(ended=lock.ended, duration_s=lock.duration_s)
    return [first]


def _under_results(settings: Settings, run_dir: Path) -> bool:
    """Whether ``run_dir`` lies under the project's results directory (``latest`` links)."""
    return settings.results_path.resolve() in run_dir.resolve().parents


def _create_run_dir(path: Path) -> Path:
    """Create ``path`` atomically, or ``path-1``, ``path-2``... when it exists.

    Raises:
        RunDirError: it cannot be created (read-only filesystem, disk full, a file in the way).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _dir_error(path, e) from None
    candidate, n = path, 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.name}-{n}")
        except OSError as e:
            raise _dir_error(candidate, e) from None


def _dir_error(path: Path, e: OSError) -> RunDirError:
    """A one-line error naming the run directory, the reason, and the file when another."""
    reason = e.strerror or str(e)
    if e.filename and Path(e.filename) != path:
        reason += f" ({display_path(Path(e.filename))})"
    return RunDirError(f"cannot write the run directory {display_path(path)}: {reason}")


def _begin_hooks(hooks: Sequence[RunHook], active: ActiveRun) -> list[Callable[[], None]]:
    endings = []
    for hook in hooks:
        try:
            end = hook.begin(active)
        except Exception as e:
            active.logger.warning("%s disabled for this run: %s: %s", hook, type(e).__name__, e)
            continue
        if end is not None:
            endings.append(end)
    return endings


# --- body and finish -----------------------------------------------------------------------


def _live(
    active: ActiveRun, log: LogFile, recorders: list[Recorder], body: Body, *, fds: bool
) -> Outcome:
    """Record, run the body, finish: the run's whole life in its directory."""
    outcome = Outcome()
    try:
        with active, capture_output(log, fds=fds), _sigterm_interrupts():
            active.logger.info("run %s started in %s", active.id, active.lock.dir)
            for recorder in recorders:
                _guarded(active, f"start recording {recorder.key}", recorder.start, active)
            outcome = _guarded_body(body, active)
            _finish(active, recorders, outcome, log)
    finally:
        log.close()
        active.close()
        drop_logger(active.logger)
    run = active.run.reload()  # the body may have read run.lock while it said "running"
    run.locals, run.result, run.error = outcome.locals, outcome.result, outcome.error
    return outcome


def _guarded_body(body: Body, active: ActiveRun) -> Outcome:
    """Call ``body``; an exception escaping it (an xpkit bug, Ctrl-C) becomes the outcome."""
    try:
        return body(active)
    except BaseException as e:
        return Outcome(error=e)


def _finish(active: ActiveRun, recorders: list[Recorder], outcome: Outcome, log: LogFile) -> None:
    """Write the final run.lock: the recorders' sections, then the ending (unless detached)."""
    sections = _final_sections(active, recorders)
    if outcome.detached:  # the last worker ends the run
        active.update_lock(**sections)
        return
    status = status_of(outcome.error)
    error = None if status == "completed" or outcome.error is None else error_record(outcome.error)
    if error is not None:
        reason = f"{error['type']}: {error['message']}" if error["message"] else error["type"]
        active.logger.error("run %s %s: %s", active.id, status, reason)
        log.write(error["traceback"])
    metrics = {**(active.lock.metrics or {}), **active.last_metrics}
    try:
        lock = active.rewrite_lock(
            lambda lock: end_lock(lock, status=status, error=error, metrics=metrics, **sections)
        )
    except OSError as e:  # not even in place: the run stays "running" (shown interrupted)
        print(f"[xpkit] cannot write the final run.lock of {active.lock.dir}: {e}", file=sys.stderr)
        return
    if log.error is not None:
        active.logger.warning("run.log is incomplete: %s", log.error)
    if status == "completed":
        active.logger.info("run %s completed in %.2f s", active.id, lock.duration_s or 0.0)
    _tell_parent(active, lock)


def _final_sections(active: ActiveRun, recorders: list[Recorder]) -> dict[str, Any]:
    """The recorders' sections: run.lock fields by name, the others under ``extra``."""
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for recorder in recorders:
        value = _guarded(active, f"record {recorder.key}", recorder.finish, active)
        if value is None:
            continue
        if recorder.key in _LOCK_FIELDS:
            fields[recorder.key] = value
        else:
            extra[recorder.key] = value
    return {**fields, "extra": {**active.lock.extra, **extra}} if extra else fields


_LOCK_FIELDS = frozenset(f.name for f in dataclasses.fields(RunLock)) - {"extra"}


def _tell_parent(active: ActiveRun, lock: RunLock) -> None:
    """A stage run inside another run's body is an upstream of that run."""
    parent = active.parent
    if parent is None:
        return
    with contextlib.suppress(NotInRunError):  # a map's task context records no upstream
        recorder: Any = parent.recorder("upstream")
        recorder.add(lock.dir, lock.to_dict())


def _guarded(active: ActiveRun, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call a recorder phase; its failure is a warning, never the run's outcome."""
    try:
        return fn(*args)
    except Exception as e:
        active.logger.warning("could not %s: %s: %s", what, type(e).__name__, e)
        return {"error": f"{type(e).__name__}: {e}"}


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into :class:`Interrupted` so that the run ends ``interrupted``."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("terminated by SIGTERM")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
