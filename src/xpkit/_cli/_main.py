"""The ``xp`` command: a table of subcommands, each imported only when it runs.

A subcommand is a function ``command(argv: list[str]) -> int`` (its own argparse parser,
``prog="xp NAME"``) named here as ``"module:function"``. An :class:`XpkitError` it raises
becomes a one-line ``error:`` message and exit status 2.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import XpkitError

__all__ = ["COMMANDS", "main"]

# name -> ("module:function" of this package, one-line help); keep sorted by name
COMMANDS: dict[str, tuple[str, str]] = {
    "checkout": (
        "_git_cli:checkout_command",
        "restore a run's code snapshot as a git worktree",
    ),
    "diff": (
        "_browse_cli:diff_command",
        "compare two runs: config, code, data, env, metrics",
    ),
    "hash": (
        "_hash_cli:hash_command",
        "xxh3-128 hashes of files and directories (cached)",
    ),
    "lineage": ("_browse_cli:lineage_command", "the tree of upstream runs of a run"),
    "log": (
        "_mlflow_cli:log_command",
        "sync runs into MLflow and re-apply stage loggers",
    ),
    "ls": ("_ls_cli:ls_command", "list runs with varying config keys and metrics"),
    "pull": (
        "_store_cli:pull_command",
        "bring a run's lineage (runs + code) from a store",
    ),
    "push": (
        "_store_cli:push_command",
        "copy runs' whole lineage (runs + code) to a store",
    ),
    "rerun": (
        "_rerun_cli:rerun_command",
        "run a past run again from its code snapshot; --verify compares outputs",
    ),
    "rm": (
        "_rm_cli:rm_command",
        "delete runs and their MLflow mirror (not runs that kept runs consumed)",
    ),
    "show": (
        "_browse_cli:show_command",
        "one run: summary, config, data, lineage, error",
    ),
    "store": ("_store_cli:store_command", "inspect a store: xp store ls"),
    "tasks": (
        "_tasks_cli:main",
        "progress of a mapped run: done, failed, left, Slurm jobs",
    ),
    "ui": ("_ui_cli:ui_command", "serve the MLflow UI and print the runs table's address"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xp ARGS``; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        print(f"xpkit {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(
            f"xp: unknown command {name!r}{hint} (commands: {', '.join(COMMANDS)})", file=sys.stderr
        )
        return 2
    target = COMMANDS[name][0]
    module_name, func_name = target.split(":")
    command = getattr(importlib.import_module(f".{module_name}", __package__), func_name)
    try:
        status = int(command(args[1:]) or 0)
        sys.stdout.flush()  # a reader gone (`xp ls | head`) shows here, not at the exit
        return status
    except XpkitError as e:
        print(f"xp {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `xp ls | head`: the reader left; no traceback, no flush error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _usage() -> str:
    width = max((len(n) for n in COMMANDS), default=0)
    lines = [
        "usage: xp COMMAND [ARGS...]   (xp COMMAND --help for one command)",
        "",
        "Browse, compare, sync and share the runs of xpkit stages.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {doc}" for name, (_, doc) in sorted(COMMANDS.items())]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
