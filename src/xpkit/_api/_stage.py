"""``xp.stage``: a tracked function, and the lifecycle of one of its runs."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from omegaconf import DictConfig, OmegaConf, open_dict

from .._catalog._run import Run
from .._core import _config
from .._core._env import hostname
from .._core._lock import RunLock, dump_yaml, load_lock, new_run_id, now
from .._core._paths import PACKAGE_DIR, RunPaths, atomic_write_text, display_path
from .._core._settings import Settings, load_settings
from .._execute._capture import LogFile, capture_output
from .._execute._context import ActiveRun, RunPlan, drop_logger, make_logger
from .._execute._locals import call_capturing
from .._record._recorders import Recorder, default_recorders
from ..errors import ConfigError

__all__ = ["Stage", "stage"]

R = TypeVar("R")


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM during a run."""


class Stage(Generic[R]):
    """A function ``fn(cfg)`` whose every call is a tracked run.

    Calling the stage builds the config (defaults, then ``cfg``, then ``overrides``), runs
    ``fn`` in a fresh run directory and returns its value, or raises its exception after
    recording it. ``stage.fn`` is the raw, untracked function.
    """

    def __init__(
        self,
        fn: Callable[..., R],
        *,
        name: str | None = None,
        data: typing.Iterable[str] = (),
        upstream: typing.Iterable[str] = (),
        src: bool = True,
        save_dir: str | None = None,
    ) -> None:
        if not callable(fn):
            msg = f"xp.stage expects a function, got {type(fn).__name__}"  # type: ignore[unreachable]
            raise TypeError(msg)
        self.fn = fn
        functools.update_wrapper(self, fn)
        self.name = name or _default_name(fn)
        self.data = _names("data", data)
        self.upstream = _names("upstream", upstream)
        self.src = src
        self.save_dir = save_dir
        self.last: Run | None = None
        self.loggers: list[Callable[..., None]] = []

    def __repr__(self) -> str:
        return f"<Stage {self.name!r} of {getattr(self.fn, '__qualname__', self.fn)!r}>"

    def __getstate__(self) -> dict[str, Any]:
        code = getattr(self.fn, "__code__", None)
        return {**self.__dict__, "_source_file": getattr(code, "co_filename", None)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        source = state.pop("_source_file", None)
        self.__dict__.update(state)
        if source:
            _restore_source_file(self.fn, source)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        # a stage defined in a class body behaves like a function: bind it
        return self if obj is None else types.MethodType(self, obj)

    @property
    def schema(self) -> type | None:
        """The config dataclass: the annotation of the function's first parameter."""
        return _schema_of(self.fn)

    def config(self, **overrides: Any) -> DictConfig:
        """The default config (a type-checked OmegaConf ``DictConfig``), with ``overrides``.

        Raises:
            ConfigError: an override names an unknown key or has the wrong type.
        """
        cfg = self._defaults()
        return _apply_kwargs(cfg, overrides) if overrides else cfg

    def __call__(self, cfg: Any = None, /, **overrides: Any) -> R:
        """Run the stage, tracked: return the function's value, or raise its exception."""
        base = self._defaults()
        if cfg is not None:
            base = _config.merge_layer(base, _as_layer(cfg), source="the cfg argument")
        if overrides:
            base = _apply_kwargs(base, overrides)
        return typing.cast(R, self._execute(base))

    def logger(self, fn: Callable[..., None]) -> Callable[..., None]:
        """Register a logging function ``fn(run, mlflow)`` run after every run and by ``xp log``."""
        self.loggers.append(fn)
        return fn

    def _defaults(self) -> DictConfig:
        cfg = _default_config(self.fn)
        if "save_dir" not in cfg:
            with open_dict(cfg):
                cfg.save_dir = self.save_dir or self._default_save_dir()
        elif self.save_dir is not None:
            cfg.save_dir = self.save_dir
        OmegaConf.set_struct(cfg, True)
        return cfg

    def _default_save_dir(self) -> str:
        results = load_settings().results_dir
        return f"{results}/{self.name}/${{now:%y%m%d-%H%M%S}}"

    def _execute(
        self,
        cfg: DictConfig,
        *,
        argv: typing.Sequence[str] | None = None,
        fds: bool = False,
        src: bool = True,
        body: Body | None = None,
        resume: Path | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Any:
        """Run ``body`` (default: ``fn`` on the config) as one tracked run.

        Args:
            cfg: the config, not yet resolved.
            argv: the command line recorded in run.lock (default ``sys.argv``).
            fds: capture the process's file descriptors 1 and 2 into run.log (scripts).
            src: snapshot the code (when the stage does).
            body: what the run does, given the active run (a map runs its tasks here).
            resume: an existing run directory to run again in (same id, same files).
            extra: keys added to run.lock from the start (e.g. ``sweep``).
        """
        settings = load_settings()
        started = now()
        view = self
        if not src and self.src:
            view = copy.copy(self)
            view.src = False
        plan = _plan(view, cfg, settings, started)
        recorders = default_recorders(plan)
        for recorder in recorders:
            updates = recorder.prepare(plan)
            if updates:  # e.g. an upstream ``latest`` link recorded as the run it points at
                for key, value in updates.items():
                    OmegaConf.update(cfg, key, value, merge=False)
                    OmegaConf.update(plan.config, key, value, merge=False)
        if resume is None:
            run_dir = _create_run_dir(settings.resolve(plan.config.save_dir))
            run_id = new_run_id()
        else:
            run_dir = resume.resolve()
            run_id = load_lock(RunPaths(run_dir).lock).id
        with open_dict(cfg):
            cfg.save_dir = display_path(run_dir)
        with _config.now_at(started):
            _config.resolve(cfg)
        plan = dataclasses.replace(plan, config=cfg)
        active = _start(plan, run_dir, recorders, argv, run_id=run_id, extra=extra or {})
        self.last = active.run
        tracking = _begin_tracking(self, active)
        try:
            return _body(active, recorders, body or _call_fn, fds=fds)
        finally:
            if tracking is not None:
                tracking.end()  # final MLflow sync and the stage's loggers; never raises

    def map(
        self,
        tasks: typing.Iterable[Any] | None,
        *,
        key: str | None = None,
        backend: str = "serial",
        jobs: int | None = None,
        slurm: Mapping[str, Any] | None = None,
        resume: str | os.PathLike[str] | None = None,
        stop_on_error: bool = False,
        cfg: Any = None,
    ) -> Run:
        """Run ``fn`` once per task, all in ONE tracked run (one directory, one run.lock).

        Each task is a mapping merged into the config, or a value set at ``key``. Task
        bookkeeping lives in ``<run>/tasks/``; ``resume=RUN_DIR`` does only what is left.

        Args:
            tasks: the tasks (JSON-like values); None with ``resume`` reuses the run's list.
            key: the dotted config key each task is set at (default: merge the task).
            backend: ``serial``, ``joblib`` (local processes) or ``slurm`` (non-blocking).
            jobs: processes for ``joblib`` (default: the CPUs available).
            slurm: Slurm options (``partition``, ``time_min``, ``cpus``, ``mem_gb``,
                ``gpus``, ``array_parallelism``, ``chunks``, ``workers``, ``additional``).
            resume: a mapped run directory to finish: failed and missing tasks run again.
            stop_on_error: serial only: the first failing task ends the map, its locals in
                ``stage.last.locals`` (as a single run's).
            cfg: a config layered over the defaults (as in a call).

        Returns:
            The map's run; ``run.result`` lists the results in task order (local backends).

        Raises:
            TaskError: some tasks failed (after all ran; they are recorded with tracebacks).

        Example:
            >>> run = main.map([{"input": p} for p in paths], backend="joblib")  # doctest: +SKIP
        """
        from .._parallel._map import MapOptions, map_stage

        base = self._defaults()
        if cfg is not None:
            base = _config.merge_layer(base, _as_layer(cfg), source="the cfg argument")
        options = MapOptions(
            key=key,
            backend=backend,
            jobs=jobs,
            slurm=dict(slurm or {}),
            resume=None if resume is None else Path(resume),
            stop_on_error=stop_on_error,
        )
        return map_stage(self, base, tasks, options)

    def sweep(
        self,
        grid: Mapping[str, typing.Sequence[Any]] | typing.Sequence[Mapping[str, Any]],
        *,
        backend: str = "serial",
        jobs: int | None = None,
        slurm: Mapping[str, Any] | None = None,
        cfg: Any = None,
    ) -> list[Any]:
        """Run the stage once per point of ``grid``, each point a full run of its own.

        ``grid`` maps dotted keys to value lists (their product is swept) or lists the
        override mappings. Every run.lock gets ``sweep: {id, point, total, values}``.

        Returns:
            The runs in grid order (serial, joblib); the Slurm job ids (slurm, non-blocking).

        Raises:
            TaskError: some points failed (after all ran).

        Example:
            >>> main.sweep({"lr": [0.1, 0.01], "seed": [0, 1]}, backend="joblib")  # doctest: +SKIP
        """
        from .._parallel._map import grid_points, sweep_stage

        base = self._defaults()
        if cfg is not None:
            base = _config.merge_layer(base, _as_layer(cfg), source="the cfg argument")
        points = grid_points(grid)
        return sweep_stage(self, base, points, backend=backend, jobs=jobs, slurm=dict(slurm or {}))


@dataclasses.dataclass
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


def _call_fn(active: ActiveRun) -> Outcome:
    result, local_vars, exc = call_capturing(active.stage.fn, active.config)
    return Outcome(result, local_vars, exc)


def _plan(stage: Stage[Any], cfg: DictConfig, settings: Settings, started: Any) -> RunPlan:
    """Check the config resolves (errors before any directory exists)."""
    probe = copy.deepcopy(cfg)
    with _config.now_at(started):
        _config.resolve(probe)
    if not isinstance(probe.get("save_dir"), str) or not probe.save_dir:
        msg = f"config key 'save_dir' must be a non-empty path, got {probe.get('save_dir')!r}"
        raise ConfigError(msg)
    return RunPlan(stage=stage, config=probe, settings=settings, started=started)


def _begin_tracking(stage: Stage[Any], active: ActiveRun) -> Any:
    """Start the MLflow sync of a run when tracking is on (mlflow is imported later, lazily)."""
    if not active.settings.tracking and "XPKIT_TRACKING" not in os.environ:
        return None
    try:
        from .._tracking._mlflow_live import begin_run

        return begin_run(stage, active.run, active.settings)
    except Exception as e:
        active.logger.warning("MLflow tracking disabled for this run: %s: %s", type(e).__name__, e)
        return None


def _entry(stage: Stage[Any], settings: Settings) -> dict[str, str]:
    """Where the stage is defined (module, attribute, file), for ``xp log`` to import it."""
    fn = stage.fn
    module_name = getattr(fn, "__module__", None) or ""
    module = sys.modules.get(module_name)
    name = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", ""))
    for attr, value in vars(module).items() if module is not None else ():
        if isinstance(value, Stage) and value.fn is fn:
            name = attr
            break
    code = getattr(fn, "__code__", None)
    file = getattr(module, "__file__", None) or getattr(code, "co_filename", None)
    return {
        "module": module_name,
        "qualname": name,
        "file": settings.relative(file) if file else "",
    }


def _start(
    plan: RunPlan,
    run_dir: Path,
    recorders: list[Recorder],
    argv: typing.Sequence[str] | None,
    *,
    run_id: str,
    extra: Mapping[str, Any],
) -> ActiveRun:
    paths = RunPaths(run_dir)
    config = _config.to_plain(plan.config)
    atomic_write_text(paths.config, dump_yaml(config))
    lock = RunLock(
        id=run_id,
        stage=plan.stage.name,
        dir=plan.settings.relative(run_dir),
        started=plan.started.isoformat(),
        pid=os.getpid(),
        host=hostname(),
        argv=tuple(sys.argv if argv is None else argv),
        config=config,
        extra={
            **dict(extra),
            "entry": _entry(plan.stage, plan.settings),
            "defaults": _config.changed_defaults(plan.stage.config, config, when=plan.started),
        },
    )
    logger = make_logger(plan.stage.name, lock.id)
    active = ActiveRun(plan=plan, run=Run(run_dir), lock=lock, recorders=recorders, logger=logger)
    active.update_lock()
    _point_latest(run_dir, plan.settings)
    return active


def _body(active: ActiveRun, recorders: list[Recorder], body: Body, *, fds: bool) -> Any:
    log = LogFile(active.paths.log)
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
    exc = outcome.error
    run.locals, run.result, run.error = outcome.locals, outcome.result, exc
    if exc is not None:
        raise exc.with_traceback(_user_traceback(exc))
    return outcome.result


def _guarded_body(body: Body, active: ActiveRun) -> Outcome:
    """Call ``body``; an exception escaping it (an xpkit bug, Ctrl-C) becomes the outcome."""
    try:
        return body(active)
    except BaseException as e:
        return Outcome(error=e)


def _finish(active: ActiveRun, recorders: list[Recorder], outcome: Outcome, log: LogFile) -> None:
    status, error = _outcome(outcome.error)
    if error is not None:
        reason = f"{error['type']}: {error['message']}" if error["message"] else error["type"]
        active.logger.error("run %s %s: %s", active.id, status, reason)
        log.write(error["traceback"])
    sections: dict[str, Any] = {}
    for recorder in recorders:
        value = _guarded(active, f"record {recorder.key}", recorder.finish, active)
        if value is not None:
            sections[recorder.key] = value
    if active.children:
        sections["upstream"] = {**sections.get("upstream", {}), **active.children}
    ended = now()
    known = {f.name for f in dataclasses.fields(RunLock)}
    extra = {k: v for k, v in sections.items() if k not in known}
    if outcome.detached:  # the last worker ends the run
        active.update_lock(
            extra={**active.lock.extra, **extra},
            **{k: v for k, v in sections.items() if k in known},
        )
        return
    lock = active.update_lock(
        status=status,
        ended=ended.isoformat(),
        duration_s=round((ended - active.started).total_seconds(), 3),
        error=error,
        metrics=dict(active.last_metrics) or None,
        extra={**active.lock.extra, **extra},
        **{k: v for k, v in sections.items() if k in known},
    )
    if status == "completed":
        active.logger.info("run %s completed in %.2f s", active.id, lock.duration_s or 0.0)
    if active.parent is not None:
        active.parent.children[lock.dir] = lock.to_dict()


def _guarded(active: ActiveRun, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call a recorder phase; its failure is a warning, never the run's outcome."""
    try:
        return fn(*args)
    except Exception as e:
        active.logger.warning("could not %s: %s: %s", what, type(e).__name__, e)
        return {"error": f"{type(e).__name__}: {e}"}


def _outcome(exc: BaseException | None) -> tuple[str, dict[str, str] | None]:
    if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
        return "completed", None
    import traceback

    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    error = {
        "type": _qualified_type(exc),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, _user_traceback(exc))),
    }
    return status, error


def _qualified_type(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _user_traceback(exc: BaseException) -> types.TracebackType | None:
    """The traceback without xpkit's own frames (the run machinery, the SIGTERM handler)."""
    kept: list[types.TracebackType] = []
    tb = exc.__traceback__
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(PACKAGE_DIR):
            kept.append(tb)
        tb = tb.tb_next
    if not kept:
        return exc.__traceback__
    if all(a.tb_next is b for a, b in zip(kept, [*kept[1:], None], strict=True)):
        return kept[0]  # only leading frames were dropped: the chain is reused as it is
    out = None
    for kept_tb in reversed(kept):
        out = types.TracebackType(out, kept_tb.tb_frame, kept_tb.tb_lasti, kept_tb.tb_lineno)
    return out


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


def _create_run_dir(path: Path) -> Path:
    """Create ``path`` atomically, or ``path-1``, ``path-2``... when it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.name}-{n}")


def _point_latest(run_dir: Path, settings: Settings) -> None:
    """Point ``<stage dir>/latest`` at ``run_dir`` (atomically) for runs under the results dir."""
    results = settings.results_path.resolve()
    if results not in run_dir.resolve().parents:
        return
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}.{run_dir.name}"
    with contextlib.suppress(OSError):
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
    with contextlib.suppress(OSError):
        tmp.unlink()


def _names(what: str, keys: typing.Iterable[str]) -> tuple[str, ...]:
    if isinstance(keys, str):
        keys = (keys,)
    out = tuple(keys)
    for key in out:
        if not isinstance(key, str) or not key:
            msg = f"xp.stage({what}=...) takes config keys (strings), got {key!r}"
            raise TypeError(msg)
    return out


def _default_name(fn: Callable[..., Any]) -> str:
    """The stem of the file defining ``fn`` (a module, a script, a console's file)."""
    for file in _source_files(fn):
        stem = Path(file).stem
        if stem != "__init__":
            return stem
    return getattr(fn, "__name__", "stage")


def _source_files(fn: Callable[..., Any]) -> list[str]:
    """Candidate paths of the file that defines ``fn``, best first.

    In a Jupyter kernel a cell's code is compiled under a generated name
    (``/tmp/ipykernel_<pid>/<hash>.py``, or ``<ipython-input-N-hash>``), which is skipped.
    VSCode's interactive window ("Run Current File" / "Run Cell" of a ``.py`` file) runs
    ``__file__ = '<path of the .py file>'`` in the kernel before the file's cells
    (vscode-jupyter, ``InteractiveWindow.setFileInKernel``), so ``__file__`` in the
    function's globals names the user's script; VSCode notebooks set ``__vsc_ipynb_file__``.
    """
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    namespace = getattr(fn, "__globals__", {})
    candidates = [
        namespace.get("__file__"),
        getattr(module, "__file__", None),
        getattr(getattr(fn, "__code__", None), "co_filename", None),
        namespace.get("__vsc_ipynb_file__"),
    ]
    return [
        str(file)
        for file in candidates
        if isinstance(file, str)
        and file.endswith((".py", ".ipynb"))
        and not os.path.basename(os.path.dirname(file)).startswith("ipykernel_")
    ]


def _schema_of(fn: Callable[..., Any]) -> type | None:
    param = _config_param(fn)
    if param is None:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    kind = hints.get(param.name, param.annotation)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return kind
    default = param.default
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return type(default)
    return None


def _config_param(fn: Callable[..., Any]) -> inspect.Parameter | None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    return params[0] if params else None


def _default_config(fn: Callable[..., Any]) -> DictConfig:
    param = _config_param(fn)
    if param is None:
        name = getattr(fn, "__qualname__", fn)
        msg = f"stage function {name!r} must take the config as its first parameter"
        raise TypeError(msg)
    schema = _schema_of(fn)
    default = param.default
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return typing.cast(DictConfig, OmegaConf.structured(default))
    if schema is not None:
        return typing.cast(DictConfig, OmegaConf.structured(schema))
    if isinstance(default, DictConfig):
        return copy.deepcopy(default)
    if isinstance(default, Mapping):
        return OmegaConf.create(dict(default))
    return OmegaConf.create({})


def _as_layer(cfg: Any) -> Any:
    if isinstance(cfg, (DictConfig, Mapping)):
        return cfg
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return OmegaConf.structured(cfg)
    msg = f"cfg must be a dataclass instance, a mapping or a DictConfig, got {type(cfg).__name__}"
    raise ConfigError(msg)


def _apply_kwargs(cfg: DictConfig, overrides: Mapping[str, Any]) -> DictConfig:
    """Merge keyword overrides; a dotted name (``**{"model.lr": 0.1}``) sets a nested key."""
    layer: dict[str, Any] = {}
    for key, value in overrides.items():
        node = layer
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    items = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    return _config.merge_layer(cfg, layer, source=f"overrides {items}")


@overload
def stage(fn: Callable[..., R], /) -> Stage[R]: ...


@overload
def stage(
    fn: None = None,
    /,
    *,
    name: str | None = ...,
    data: typing.Iterable[str] = ...,
    upstream: typing.Iterable[str] = ...,
    src: bool = ...,
    save_dir: str | None = ...,
) -> Callable[[Callable[..., R]], Stage[R]]: ...


def stage(
    fn: Callable[..., R] | None = None,
    /,
    *,
    name: str | None = None,
    data: typing.Iterable[str] = (),
    upstream: typing.Iterable[str] = (),
    src: bool = True,
    save_dir: str | None = None,
) -> Stage[R] | Callable[[Callable[..., R]], Stage[R]]:
    """Make ``fn(cfg)`` a tracked stage; every call is a run with its own directory.

    Args:
        fn: the function; its first parameter is the config, annotated with a dataclass.
        name: the stage name (default: the defining file's stem).
        data: config keys holding file/directory paths hashed on every run.
        upstream: config keys holding upstream run directories (or ids) this run consumes.
        src: snapshot the code to the ``run_logs`` branch on every run.
        save_dir: the run directory pattern (default ``results/<stage>/${now:%y%m%d-%H%M%S}``).

    Example:
        >>> @xp.stage(data=["raw"])  # doctest: +SKIP
        ... def main(cfg: Config):
        ...     return {"rows": len(load(cfg.raw))}
    """

    def wrap(f: Callable[..., R]) -> Stage[R]:
        return Stage(f, name=name, data=data, upstream=upstream, src=src, save_dir=save_dir)

    return wrap(fn) if fn is not None else wrap


def _restore_source_file(fn: Any, source: str) -> None:
    """Give back the file name of code that cloudpickle shipped by value (as ``<dynamic-code>``).

    A stage defined in a script reaches joblib and Slurm workers by value; without its file
    name, tracebacks of failed tasks show no source lines. The stage's function and the
    functions of its module it refers to get the file back.
    """
    code = getattr(fn, "__code__", None)
    if code is None or code.co_filename != "<dynamic-code>":
        return  # not shipped by value (a plain copy, or an importable module)
    module = getattr(fn, "__module__", None)
    namespace = getattr(fn, "__globals__", {})
    for obj in (fn, *namespace.values()):
        if not isinstance(obj, types.FunctionType) or obj.__module__ != module:
            continue
        if obj.__code__.co_filename == "<dynamic-code>":
            obj.__code__ = _with_file(obj.__code__, source)


def _with_file(code: types.CodeType, source: str) -> types.CodeType:
    consts = tuple(
        _with_file(c, source) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=source, co_consts=consts)
