"""YAML at the edge: one safe loader and one dumper for every file xpkit reads or writes."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["YAMLError", "dump_yaml", "load_yaml", "yaml_error_where"]

YAMLError = yaml.YAMLError

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # base chosen at runtime
    """Safe dumper writing multi-line strings (tracebacks) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """Dump ``data`` as block-style YAML keeping key order."""
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def load_yaml(text: str | bytes) -> Any:
    """Parse YAML text safely (the C loader when PyYAML has it).

    Raises:
        yaml.YAMLError: the text is not valid YAML.
    """
    return yaml.load(text, Loader=_Loader)


def yaml_error_where(e: yaml.YAMLError) -> str:
    """`` line L column C: problem (while parsing X started at line L)`` of a YAML error."""
    mark = getattr(e, "problem_mark", None)
    where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None and (mark is None or start.line != mark.line):
        problem += f" ({context} started at line {start.line + 1})"
    return f"{where}: {problem}"
