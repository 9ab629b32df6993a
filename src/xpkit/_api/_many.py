"""The many-runs options of a stage script: ``--tasks``, ``--sweep``, ``--slurm``.

Reading a task file, splitting ``--sweep`` values and ``--slurm`` options into the values
``Stage.map`` and ``Stage.sweep`` take.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._core._yaml import YAMLError, load_yaml
from ..errors import ConfigError, TaskError

__all__ = ["parse_slurm_args", "parse_sweep_args", "read_tasks_file", "split_values"]


def parse_sweep_args(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=0.1,1", "seed=0,1"]`` -> ``{"lr": [0.1, 1], "seed": [0, 1]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name:
            msg = f"--sweep takes KEY=V1,V2,..., got {item!r}"
            raise ConfigError(msg)
        grid[name] = [_yaml_value(v) for v in split_values(values)]
    return grid


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
    try:
        return load_yaml(text) if text.strip() else text
    except YAMLError:
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
        try:
            data = load_yaml(text)
        except YAMLError as e:
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
