"""Nested mappings as dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``), without OmegaConf:
listing runs, diffing and MLflow params use it on plain run.lock data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["flatten"]


def flatten(
    data: Mapping[str, Any], prefix: str = "", *, into: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Flatten nested dicts into ``{prefix + "a.b.c": value}`` (added to ``into`` when given).

    Lists and empty dicts stay values.
    """
    out: dict[str, Any] = {} if into is None else into
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:  # (a dict, not any Mapping: 3x faster here)
            flatten(value, f"{name}.", into=out)
        else:
            out[name] = value
    return out
