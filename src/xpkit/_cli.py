"""The ``xp`` command: a table of subcommands, each imported only when it runs.

A subcommand is a function ``command(argv: list[str]) -> int`` (its own argparse parser,
``prog="xp NAME"``) named here as ``"module:function"``. An :class:`XpkitError` it raises
becomes a one-line ``error:`` message and exit status 2.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import XpkitError

__all__ = ["COMMANDS", "main"]

# name -> ("module:function", one-line help); keep sorted by name
COMMANDS: dict[str, tuple[str, str]] = {
    "log": ("xpkit._mlflow_cli:log_command", "sync runs into MLflow and re-apply stage loggers"),
    "ui": ("xpkit._mlflow_cli:ui_command", "serve the MLflow UI of the project on 127.0.0.1"),
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
    command = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(command(args[1:]) or 0)
    except XpkitError as e:
        print(f"xp {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


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
