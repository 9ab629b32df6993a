"""``xp.run``: the entry point of a stage script, in a shell or an interactive console."""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from .._catalog._run import Run
from .._core import _config
from .._core._flat import flatten
from .._core._lock import now
from .._core._paths import display_path
from .._execute._ending import in_user_code, user_traceback
from .._execute._lifecycle import RunRequest, RunResult
from .._tracking._hook import TRACKING
from ..errors import ConfigError, TasksFailed, XpkitError
from ._cells import console_shell
from ._stage import Stage, _source_files

if TYPE_CHECKING:
    from .._parallel._backends import Backend
    from .._parallel._sweep import Sweep

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
    shell = console_shell()
    interactive = shell is not None or bool(sys.flags.interactive)
    if shell is not None:
        from ._console import enable_console

        enable_console(shell)
    args = list(argv) if argv is not None else _script_argv(interactive)
    session = _Session(interactive, sys._getframe(1).f_globals, stage)
    try:
        options = build_parser(stage).parse_intermixed_args(args)
    except SystemExit as e:  # --help, or an argparse usage error (already printed)
        session.exit(int(e.code or 0))
        return None
    except XpkitError as e:  # bad settings or defaults, found while describing the fields
        session.usage_error(e)
        return None
    try:
        cfg = build_config(stage, options)
        if options.print_config:
            print(_preview(cfg), end="")
            session.exit(0)
            return None
        return _launch(stage, cfg, options, session, argv=[_script_name(stage), *args])
    except XpkitError as e:  # bad input: nothing ran, no run directory
        session.usage_error(e)
        return None


class _Session:
    """Where ``xp.run`` was called from: a script (exits) or a console (hands locals back)."""

    def __init__(self, interactive: bool, namespace: dict[str, Any], stage: Stage[Any]) -> None:
        self.interactive = interactive
        self.namespace = namespace
        self.stage = stage

    def exit(self, code: int) -> None:
        """Exit with ``code`` in a script; nothing in a console."""
        if not self.interactive:
            raise SystemExit(code)

    def usage_error(self, e: XpkitError) -> None:
        """Bad input: one line, exit status 2."""
        print(f"error: {e}", file=sys.stderr)
        self.exit(EXIT_USAGE)

    def hand_back(self, run: Run) -> None:
        """In a console: ``cfg`` and the stage function's locals into its namespace; for a
        stage defined in an imported module, the module's own names too (its body cells use
        them), never over a name the console already has."""
        if not self.interactive:
            return
        module = getattr(self.stage.fn, "__globals__", self.namespace)
        if module is not self.namespace:
            for name, value in module.items():
                if not name.startswith("_"):
                    self.namespace.setdefault(name, value)
        _hand_back(run, self.namespace)


def _launch(
    stage: Stage[Any],
    cfg: DictConfig,
    options: argparse.Namespace,
    session: _Session,
    *,
    argv: list[str],
) -> Run | None:
    """A single run, a map over ``--tasks`` (or ``--resume``), or a ``--sweep``."""
    src = not options.no_src
    if options.sweep:
        return _sweep(stage, cfg, options, session, src=src)
    fds = not session.interactive
    if options.tasks or options.resume:
        if options.reuse:
            msg = "--reuse applies to single runs and sweep points; a map resumes with --resume"
            raise ConfigError(msg)
        result = _map(stage, cfg, options, argv=argv, fds=fds, src=src)
    else:
        if options.backend or options.jobs or options.slurm or options.stop_on_error:
            msg = "--backend, --jobs, --slurm and --stop-on-error need --tasks, --resume or --sweep"
            raise ConfigError(msg)
        request = RunRequest(
            stage=stage,
            config=cfg,
            argv=argv,
            fds=fds,
            src=src,
            hooks=(TRACKING,),
            reuse=options.reuse or stage.reuse,
        )
        result = stage._execute(request)
    return _ended(result, options, session)


def _map(
    stage: Stage[Any],
    cfg: DictConfig,
    options: argparse.Namespace,
    *,
    argv: list[str],
    fds: bool,
    src: bool,
) -> RunResult:
    """``--tasks FILE`` / ``--resume RUN_DIR``."""
    from .._parallel._map import MapOptions
    from ._many import read_tasks_file

    backend = _backend(options)
    map_options = MapOptions(
        key=options.task_key,
        resume=Path(options.resume) if options.resume else None,
        stop_on_error=options.stop_on_error or (options.pdb and backend.in_process),
    )
    tasks = read_tasks_file(options.tasks) if options.tasks else None
    return stage._map(tasks, map_options, backend, base=cfg, argv=argv, fds=fds, src=src)


def _sweep(
    stage: Stage[Any], cfg: DictConfig, options: argparse.Namespace, session: _Session, *, src: bool
) -> Run | None:
    """``--sweep KEY=V1,V2 ...``: one run per point, then one summary line."""
    from .._parallel._sweep import SweepFailed, grid_points
    from ._many import parse_sweep_args

    if options.tasks or options.resume:
        msg = "--sweep makes one run per point; it does not combine with --tasks or --resume"
        raise ConfigError(msg)
    points = grid_points(parse_sweep_args(options.sweep))
    try:
        reuse = options.reuse or stage.reuse
        sweep = stage._sweep(points, _backend(options), base=cfg, src=src, reuse=reuse)
    except SweepFailed as e:  # each failed point logged its error; its traceback is recorded
        print(f"error: {e}", file=sys.stderr)
        if e.sweep.last is not None:
            session.hand_back(e.sweep.last.run)
        session.exit(EXIT_FAILED)
        return stage.last
    print(_sweep_summary(sweep, len(points)), file=sys.stderr)
    if sweep.last is None:
        return None  # submitted to Slurm: its runs start in the jobs
    session.hand_back(sweep.last.run)
    return sweep.last.run


def _backend(options: argparse.Namespace) -> Backend:
    from .._parallel._registry import make_backend
    from ._many import parse_slurm_args

    slurm = parse_slurm_args(options.slurm)
    return make_backend(options.backend or "serial", jobs=options.jobs, slurm=slurm)


def _sweep_summary(sweep: Sweep, points: int) -> str:
    """One line after a CLI sweep: where its runs are, or the Slurm jobs it submitted."""
    if sweep.jobs:
        jobs = ", ".join(sweep.jobs)
        return f"[xpkit] sweep of {points} points submitted to Slurm: jobs {jobs}"
    where = display_path(sweep.runs[0].dir.parent) if sweep.runs else "(no run)"
    return (
        f"[xpkit] sweep {sweep.id}: {len(sweep.runs)} runs completed in {where}"
        f" (compare them: xp ls {where})"
    )


def _ended(result: RunResult, options: argparse.Namespace, session: _Session) -> Run | None:
    """Hand a run back (console), or report its failure and exit (script)."""
    exc = result.error
    if exc is None:
        session.hand_back(result.run)
        return result.run
    said = isinstance(exc, TasksFailed)  # each failed task and the map's run.log line said it
    if said or (isinstance(exc, XpkitError) and not in_user_code(exc)):
        if not said:  # xpkit's own refusal (Slurm refused the jobs...): run.lock keeps the rest
            print(f"error: {exc}", file=sys.stderr)
        session.hand_back(result.run)
        session.exit(EXIT_FAILED)
        return result.run
    return _failed(result.run, exc, options, session)


def build_parser(stage: Stage[Any]) -> argparse.ArgumentParser:
    """The command line of a stage script (see ``--help``)."""
    parser = _StageParser(
        stage,
        prog=_script_name(stage),
        description=_description(stage),
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
        help="a named node of the config file (default file: <script>.yaml beside the "
        "script; listed below)",
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
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a completed run with the same config, code, data and upstream runs",
    )
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
        self._args: list[str] = []

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._remember(args)
        return super().parse_known_args(args, namespace)

    def parse_known_intermixed_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._remember(args)
        return super().parse_known_intermixed_args(args, namespace)

    def _remember(self, args: Any) -> None:
        """Keep the arguments: --help lists the experiments of the --config given with it."""
        if args is not None:
            self._args = [str(a) for a in args]

    def format_help(self) -> str:
        if self.epilog is None:
            listing = _experiments_help(self._stage, _config_arg(self._args))
            self.epilog = _fields_help(self._stage) + (f"\n\n{listing}" if listing else "")
        return super().format_help()


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


def _config_arg(args: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``args`` (the last one wins, as in argparse)."""
    found = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--config="):
            found = arg.split("=", 1)[1]
    return found


def _experiments_help(stage: Stage[Any], config: str | None) -> str:
    """The experiments (top-level mappings that are not config groups) of the config file
    in use: ``--config FILE``, else ``<script>.yaml`` beside the script; "" when none."""
    script = _script_path(stage)
    default = script.with_suffix(".yaml") if script is not None else None
    if config is not None:
        path = config
    elif default is not None and default.is_file():
        path = display_path(default)
    else:
        return ""
    try:
        data = _config.load_config_file(path)
    except ConfigError as e:
        return f"experiments: {e}"
    groups = set(stage.config())
    found = {
        str(k): v
        for k, v in data.items_ex(resolve=False)
        if isinstance(v, DictConfig) and str(k) not in groups
    }
    if not found:
        return ""
    width = max(len(k) for k in found)
    lines = [f"experiments in {path} (--experiment NAME):"]
    for name, node in found.items():
        lines.append(f"  {name:<{width}}  {_summary(node)}")
    return "\n".join(lines)


def _summary(node: DictConfig, limit: int = 70) -> str:
    """``a.b=1, c=x`` for the values an experiment sets, cut to ``limit`` characters."""
    flat = flatten(OmegaConf.to_container(node, resolve=False))  # type: ignore[arg-type]  # a DictConfig gives a dict
    text = ", ".join(f"{k}={v}" for k, v in flat.items())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    run: Run, exc: BaseException, options: argparse.Namespace, session: _Session
) -> Run | None:
    """Print the failure's traceback, hand the locals back, ``--pdb``, exit 1 (130 on Ctrl-C)."""
    import traceback

    tb = user_traceback(exc)
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    if session.interactive:
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
        if sys.version_info >= (3, 12):
            sys.last_exc = exc
        session.hand_back(run)
    if options.pdb and tb is not None:
        import pdb

        pdb.post_mortem(tb)
    session.exit(EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_FAILED)
    return run


def _hand_back(run: Run, namespace: dict[str, Any]) -> None:
    """Put ``cfg`` and the stage function's locals into the console namespace."""
    values = dict(run.locals or {})
    if "cfg" not in values:
        values["cfg"] = _run_config(run)
    namespace.update(values)
    names = ", ".join(sorted(values)[:12]) + (" ..." if len(values) > 12 else "")
    where = display_path(run.dir)
    from ._console import no_locals_note

    why = "" if run.locals is not None else f" (no locals: {no_locals_note(run)})"
    print(f"[xpkit] {run.status} run {where}; in the console now: {names}{why}", file=sys.stderr)


def _run_config(run: Run) -> Any:
    try:
        return run.config
    except XpkitError:
        return None


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


def _description(stage: Stage[Any]) -> str:
    """The function's docstring, else its script's, else a generic line."""
    for doc in (stage.fn.__doc__, _script_doc(stage)):
        if _first_line(doc):
            return _first_line(doc)
    return f"Run the {stage.name!r} stage, tracked."


def _script_doc(stage: Stage[Any]) -> str | None:
    """The docstring of the module loaded from the stage's script (not a console's)."""
    module = sys.modules.get(getattr(stage.fn, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    script = _script_path(stage)
    if script is None or not isinstance(file, str) or Path(file).resolve() != script:
        return None
    return getattr(module, "__doc__", None)


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def _fields_help(stage: Stage[Any]) -> str:
    fields = _config.describe_fields(stage.schema)
    cfg = stage.config()
    if not fields:
        flat = flatten(OmegaConf.to_container(cfg, resolve=False))  # type: ignore[arg-type]  # a DictConfig gives a dict
        fields = [_config.FieldInfo(k, type(v).__name__, repr(v), "") for k, v in flat.items()]
    if not any(f.key == "save_dir" for f in fields):
        fields.append(
            _config.FieldInfo("save_dir", "str", repr(_raw(cfg, "save_dir")), "the run directory")
        )
    width = max(len(f.key) for f in fields)
    twidth = max(len(f.type) for f in fields)
    dwidth = min(max(len(f.default) for f in fields), 24)  # a long default overflows alone
    lines = ["config fields (override with KEY=VALUE or -o KEY=VALUE):"]
    for f in fields:
        line = f"  {f.key:<{width}}  {f.type:<{twidth}}  default {f.default:<{dwidth}}  {f.doc}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _raw(cfg: DictConfig, key: str) -> Any:
    """A config value without resolving its interpolations."""
    return OmegaConf.to_container(cfg, resolve=False).get(key)  # type: ignore[union-attr]
