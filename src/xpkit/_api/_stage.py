"""``xp.stage``: a tracked function, and the lifecycle of one of its runs."""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from omegaconf import DictConfig, OmegaConf, open_dict

from .._catalog._run import Run
from .._core import _config
from .._core._settings import load_settings
from .._execute._lifecycle import RunRequest, RunResult, execute
from .._tracking._hook import TRACKING
from ..errors import ConfigError

if typing.TYPE_CHECKING:
    from .._parallel._backends import Backend
    from .._parallel._map import MapOptions
    from .._parallel._sweep import Sweep

__all__ = ["Stage", "stage"]

R = TypeVar("R")


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
        reuse: bool = False,
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
        self.reuse = _reuse_option(reuse)
        self.last: Run | None = None
        self.loggers: list[Callable[..., None]] = []
        self._entry: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"<Stage {self.name!r} of {getattr(self.fn, '__qualname__', self.fn)!r}>"

    def __getstate__(self) -> dict[str, Any]:
        # sent to worker processes: where it is defined, found here; never the last run
        code = getattr(self.fn, "__code__", None)
        state = {**self.__dict__, "_entry": self.entry(), "last": None}
        return {**state, "_source_file": getattr(code, "co_filename", None)}

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

    def __call__(self, cfg: Any = None, /, *, reuse: bool | None = None, **overrides: Any) -> R:
        """Run the stage, tracked: return the function's value, or raise its exception.

        ``reuse=True`` (default: the stage's ``reuse``) returns the value of a completed run
        with the same config, code, inputs and upstream runs instead of running again.
        ``reuse`` is always this option, never a config key: a config field named
        ``reuse`` is set through ``cfg`` (``main({"reuse": 1})``).
        """
        request = RunRequest(
            stage=self,
            config=self._build(cfg, overrides),
            hooks=(TRACKING,),
            reuse=self.reuse if reuse is None else _reuse_option(reuse),
        )
        return typing.cast(R, self._execute(request).value())

    def entry(self) -> dict[str, str]:
        """Where the stage is defined: ``{module, qualname, file}`` (run.lock ``entry``)."""
        if self._entry is None:
            from .._execute._entry import find_entry

            self._entry = find_entry(self, self.fn)
        return self._entry

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

    def _build(self, cfg: Any, overrides: Mapping[str, Any]) -> DictConfig:
        """Defaults, then ``cfg`` (a dataclass, mapping or DictConfig), then ``overrides``."""
        base = self._defaults()
        if cfg is not None:
            base = _config.merge_layer(base, _as_layer(cfg), source="the cfg argument")
        return _apply_kwargs(base, overrides) if overrides else base

    def _execute(self, request: RunRequest) -> RunResult:
        """One run of this stage (a call, a script run, a sweep point)."""
        return self._remember(execute(request))

    def _remember(self, result: RunResult) -> RunResult:
        self.last = result.run  # the one place Stage.last is written
        return result

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
        from .._parallel._map import MapOptions
        from .._parallel._registry import make_backend

        chosen = make_backend(backend, jobs=jobs, slurm=slurm)
        options = MapOptions(
            key=key, resume=None if resume is None else Path(resume), stop_on_error=stop_on_error
        )
        result = self._map(tasks, options, chosen, base=self._build(cfg, {}))
        result.value()  # some tasks failed: TasksFailed
        return result.run

    def _map(
        self,
        tasks: typing.Iterable[Any] | None,
        options: MapOptions,
        backend: Backend,
        *,
        base: DictConfig,
        argv: typing.Sequence[str] | None = None,
        fds: bool = False,
        src: bool = True,
    ) -> RunResult:
        """One run of this stage over ``tasks`` (``Stage.map``, ``--tasks``)."""
        from .._parallel._map import map_stage

        result = map_stage(
            self, base, tasks, options, backend, argv=argv, fds=fds, src=src, hooks=(TRACKING,)
        )
        return self._remember(result)

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
        from .._parallel._registry import make_backend
        from .._parallel._sweep import grid_points

        points = grid_points(grid)
        chosen = make_backend(backend, jobs=jobs, slurm=slurm)
        done = self._sweep(points, chosen, base=self._build(cfg, {}))
        return list(done.jobs) if done.jobs else list(done.runs)

    def _sweep(
        self,
        points: list[dict[str, Any]],
        backend: Backend,
        *,
        base: DictConfig,
        src: bool = True,
        reuse: bool | None = None,
    ) -> Sweep:
        """One run of this stage per point (``Stage.sweep``, ``--sweep``)."""
        from .._parallel._sweep import SweepFailed, sweep_stage

        configs = [_apply_kwargs(base, point) for point in points]
        reuse = self.reuse if reuse is None else reuse
        try:
            done = sweep_stage(
                self, configs, points, backend, src=src, hooks=(TRACKING,), reuse=reuse
            )
        except SweepFailed as e:
            if e.sweep.last is not None:
                self._remember(e.sweep.last)
            raise
        if done.last is not None:
            self._remember(done.last)
        return done


def _reuse_option(value: Any) -> bool:
    if not isinstance(value, bool):
        msg = (
            f"reuse= takes True or False, got {value!r}; it is the call's reuse option, not a"
            " config key (set a config field named reuse through cfg: main({'reuse': ...}))"
        )
        raise TypeError(msg)
    return value


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
    reuse: bool = ...,
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
    reuse: bool = False,
) -> Stage[R] | Callable[[Callable[..., R]], Stage[R]]:
    """Make ``fn(cfg)`` a tracked stage; every call is a run with its own directory.

    Args:
        fn: the function; its first parameter is the config, annotated with a dataclass.
        name: the stage name (default: the defining file's stem).
        data: config keys holding file/directory paths hashed on every run.
        upstream: config keys holding upstream run directories (or ids) this run consumes.
        src: snapshot the code to the ``run_logs`` branch on every run.
        save_dir: the run directory pattern (default ``results/<stage>/${now:%y%m%d-%H%M%S}``).
        reuse: a call returns the value of a completed run with the same config, code
            (``src.files``), inputs and upstream runs instead of running (``--reuse``).

    Example:
        >>> @xp.stage(data=["raw"])  # doctest: +SKIP
        ... def main(cfg: Config):
        ...     return {"rows": len(load(cfg.raw))}
    """

    def wrap(f: Callable[..., R]) -> Stage[R]:
        return Stage(
            f, name=name, data=data, upstream=upstream, src=src, save_dir=save_dir, reuse=reuse
        )

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
