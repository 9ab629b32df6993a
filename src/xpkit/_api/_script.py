"""``xp.run``: the entry point of a stage script, in a shell or an interactive console."""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .._catalog._run import Run
from .._core import _config
from .._core._lock import now
from .._core._paths import display_path
from ..errors import ConfigError, TaskError, TasksFailed, XpkitError
from ._stage import Stage, _source_files, _user_traceback

__all__ = ["build_config", "build_parser", "run"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def run(stage: Stage[Any], argv: Sequence[str] | None = None) -> Run | None:
    """Run ``stage`` from the command line, or from an interactive console.

    In a script: parses ``argv`` (default ``sys.argv[1:]``), runs, prints a failure's
    traceback and exits non-zero on failure (2 for bad input, 1 for a failed run, 130 when
    interrupted). In IPython/Jupyter/VSCode: ignores the kernel's own arguments, never
    exits, and puts ``cfg`` and the stage function's local variables (at its return or
    failure) into the console namespace; project modules edited since the last run are
    reloaded before the next cell runs.

    Returns:
        The run, or None when no run was made (``--help``, ``--print-config``, bad input).
    """
    if not isinstance(stage, Stage):
        # unreachable for mypy; a plain function passed at runtime lands here
        msg = f"xp.run expects a stage (decorate the function with @xp.stage), got {stage!r}"  # type: ignore[unreachable]
        raise TypeError(msg)
    shell = _console()
    interactive = shell is not None or bool(sys.flags.interactive)
    if shell is not None:
        from ._reload import enable_project_reload

        enable_project_reload(shell)
    args = list(argv) if argv is not None else _script_argv(interactive)
    caller = sys._getframe(1).f_globals
    try:
        options = build_parser(stage).parse_intermixed_args(args)
    except SystemExit as e:  # --help, or an argparse usage error (already printed)
        _exit(interactive, int(e.code or 0))
        return None
    except XpkitError as e:  # bad settings or defaults, found while describing the fields
        print(f"error: {e}", file=sys.stderr)
        _exit(interactive, EXIT_USAGE)
        return None
    before = stage.last
    try:
        cfg = build_config(stage, options)
        if options.print_config:
            print(_preview(cfg), end="")
            _exit(interactive, 0)
            return None
        argv_run = [_script_name(stage), *args]
        _launch(stage, cfg, options, argv=argv_run, fds=not interactive)
    except BaseException as e:
        if isinstance(e, TaskError) and (options.sweep or isinstance(e, TasksFailed)):
            # each failed task or point logged its error; its traceback is recorded
            if options.sweep:  # a map's own run.log line already said it
                print(f"error: {e}", file=sys.stderr)
            if interactive and stage.last is not None and stage.last is not before:
                _hand_back(stage.last, caller)
            _exit(interactive, EXIT_FAILED)
            return stage.last if interactive else None
        if stage.last is before or stage.last is None:
            if isinstance(e, XpkitError):  # bad input: nothing ran, no run directory
                print(f"error: {e}", file=sys.stderr)
                _exit(interactive, EXIT_USAGE)
                return None
            raise
        return _failed(stage.last, e, options, interactive=interactive, namespace=caller)
    if stage.last is None or stage.last is before:
        return None  # a sweep submitted to Slurm: its runs start in the jobs
    if interactive:
        _hand_back(stage.last, caller)
    return stage.last


def build_parser(stage: Stage[Any]) -> argparse.ArgumentParser:
    """The command line of a stage script (see ``--help``)."""
    parser = _StageParser(
        stage,
        prog=_script_name(stage),
        description=_first_line(stage.fn.__doc__) or f"Run the {stage.name!r} stage, tracked.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (dotted keys)"
    )
    parser.add_argument(
        "-o",
        "--override",
        dest="dotlist",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides (dotted keys), same as bare KEY=VALUE",
    )
    parser.add_argument("--config", metavar="FILE", help="a YAML config file")
    parser.add_argument(
        "--experiment",
        metavar="NAME",
        help="a named node of the config file (default file: <script>.yaml beside the script)",
    )
    parser.add_argument(
        "--overrides-path",
        "--overrides_path",
        dest="overrides_path",
        metavar="FILE",
        help="a YAML file of overrides, applied after --config",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument("--pdb", action="store_true", help="post-mortem debugger on failure")
    parser.add_argument("--no-src", action="store_true", help="no code snapshot for this run")
    many = parser.add_argument_group("many runs: map over tasks, or sweep a grid")
    many.add_argument(
        "--tasks",
        metavar="FILE",
        help="map over tasks: JSON lines, a YAML list, or one item per line (one run)",
    )
    many.add_argument("--task-key", metavar="KEY", help="set each task at this config key")
    many.add_argument(
        "--backend", choices=("serial", "joblib", "slurm"), help="how to run the tasks or points"
    )
    many.add_argument("--jobs", type=int, metavar="N", help="local processes (joblib)")
    many.add_argument(
        "--slurm",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="Slurm options: partition, time_min, cpus, mem_gb, gpus, array_parallelism, "
        "chunks, workers (pool mode), additional.NAME",
    )
    many.add_argument("--resume", metavar="RUN_DIR", help="finish a mapped run: failed + missing")
    many.add_argument(
        "--stop-on-error",
        action="store_true",
        help="serial map: stop at the first failing task and keep its locals",
    )
    many.add_argument(
        "--sweep",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=V1,V2",
        help="one full run per point of the grid of these values",
    )
    return parser


class _StageParser(argparse.ArgumentParser):
    """The parser of a stage script; the config fields' listing is built for --help only
    (reading the dataclass source for its comments costs ~10 ms on every run otherwise)."""

    def __init__(self, stage: Stage[Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stage = stage

    def format_help(self) -> str:
        if self.epilog is None:
            self.epilog = _fields_help(self._stage)
        return super().format_help()


def _launch(
    stage: Stage[Any], cfg: DictConfig, options: argparse.Namespace, *, argv: list[str], fds: bool
) -> None:
    """A single run, a map over ``--tasks`` (or ``--resume``), or a ``--sweep``."""
    from .._parallel import _map

    src = not options.no_src
    if options.sweep:
        _map.sweep_from_cli(stage, cfg, options, src=src)
    elif options.tasks or options.resume:
        _map.map_from_cli(stage, cfg, options, argv=argv, fds=fds, src=src)
    else:
        if options.backend or options.jobs or options.slurm or options.stop_on_error:
            msg = "--backend, --jobs, --slurm and --stop-on-error need --tasks, --resume or --sweep"
            raise ConfigError(msg)
        stage._execute(cfg, argv=argv, fds=fds, src=src)


def build_config(stage: Stage[Any], options: argparse.Namespace) -> DictConfig:
    """Layer defaults < --config/--experiment < --overrides-path < KEY=VALUE overrides.

    Raises:
        ConfigError: a file, experiment, key or value is invalid.
    """
    cfg = stage.config()
    config_path = options.config
    if config_path is None and options.experiment:
        config_path = _experiments_file(stage)
    if config_path is not None:
        file_cfg = _config.load_config_file(config_path)
        source = f"--config {config_path}"
        if options.experiment:
            file_cfg = _config.select_experiment(file_cfg, options.experiment, source=config_path)
            source = f"--experiment {options.experiment} of {config_path}"
        cfg = _config.merge_layer(cfg, file_cfg, source=source)
    if options.overrides_path:
        layer = _config.load_config_file(options.overrides_path)
        cfg = _config.merge_layer(cfg, layer, source=f"--overrides-path {options.overrides_path}")
    cfg = _config.apply_dotlist(cfg, options.overrides, source="command line")
    return _config.apply_dotlist(cfg, options.dotlist, source="-o")


def _experiments_file(stage: Stage[Any]) -> str:
    script = _script_path(stage)
    if script is None:
        msg = "--experiment needs --config FILE here (the stage's script file is unknown)"
        raise XpkitError(msg)
    candidate = script.with_suffix(".yaml")
    if not candidate.is_file():
        msg = (
            f"--experiment needs --config FILE or a {candidate.name} beside the script "
            f"(looked for {candidate})"
        )
        raise ConfigError(msg)
    return str(candidate)


def _preview(cfg: DictConfig) -> str:
    shown = copy.deepcopy(cfg)
    with _config.now_at(now()):
        _config.resolve(shown)
    return OmegaConf.to_yaml(shown)


def _failed(
    run: Run,
    exc: BaseException,
    options: argparse.Namespace,
    *,
    interactive: bool,
    namespace: dict[str, Any],
) -> Run | None:
    import traceback

    tb = _user_traceback(exc)
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    if interactive:
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
        if sys.version_info >= (3, 12):
            sys.last_exc = exc
        _hand_back(run, namespace)
    if options.pdb and tb is not None:
        import pdb

        pdb.post_mortem(tb)
    if interactive:
        return run
    code = EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_FAILED
    raise SystemExit(code)


def _hand_back(run: Run, namespace: dict[str, Any]) -> None:
    """Put ``cfg`` and the stage function's locals into the console namespace."""
    values = dict(run.locals or {})
    if "cfg" not in values:
        values["cfg"] = _run_config(run)
    namespace.update(values)
    names = ", ".join(sorted(values)[:12]) + (" ..." if len(values) > 12 else "")
    where = display_path(run.dir)
    print(f"[xpkit] {run.status} run {where}; in the console now: {names}", file=sys.stderr)


def _run_config(run: Run) -> Any:
    try:
        return run.config
    except XpkitError:
        return None


def _exit(interactive: bool, code: int) -> None:
    if not interactive:
        raise SystemExit(code)


def _console() -> Any:
    """The running IPython shell (Jupyter, VSCode, IPython terminal), or None."""
    # looked up, not imported: IPython 8 leaves get_ipython unexported and unannotated,
    # IPython 9 types it, and mypy must pass with either
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    return None if get_ipython is None else get_ipython()


def _script_argv(interactive: bool) -> list[str]:
    """``sys.argv[1:]``, except a Jupyter kernel's own arguments (``-f kernel-*.json``)."""
    args = sys.argv[1:]
    if not interactive:
        return args
    launcher = os.path.basename(sys.argv[0]) if sys.argv else ""
    if launcher in ("ipykernel_launcher.py", "__main__.py") or any(
        a.endswith(".json") and "kernel" in a for a in args
    ):
        return []
    return args


def _script_path(stage: Stage[Any]) -> Path | None:
    for file in _source_files(stage.fn):
        if file.endswith(".py") and os.path.isfile(file):
            return Path(file).resolve()
    return None


def _script_name(stage: Stage[Any]) -> str:
    script = _script_path(stage)
    return script.name if script is not None else stage.name


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def _fields_help(stage: Stage[Any]) -> str:
    fields = _config.describe_fields(stage.schema)
    cfg = stage.config()
    if not fields:
        flat = _config.flatten(OmegaConf.to_container(cfg, resolve=False))  # type: ignore[arg-type]  # a DictConfig gives a dict
        fields = [_config.FieldInfo(k, type(v).__name__, repr(v), "") for k, v in flat.items()]
    if not any(f.key == "save_dir" for f in fields):
        fields.append(
            _config.FieldInfo("save_dir", "str", repr(_raw(cfg, "save_dir")), "the run directory")
        )
    width = max(len(f.key) for f in fields)
    twidth = max(len(f.type) for f in fields)
    lines = ["config fields (override with KEY=VALUE or -o KEY=VALUE):"]
    for f in fields:
        doc = f"  {f.doc}" if f.doc else ""
        lines.append(f"  {f.key:<{width}}  {f.type:<{twidth}}  default {f.default}{doc}")
    return "\n".join(lines)


def _raw(cfg: DictConfig, key: str) -> Any:
    """A config value without resolving its interpolations."""
    return OmegaConf.to_container(cfg, resolve=False).get(key)  # type: ignore[union-attr]
