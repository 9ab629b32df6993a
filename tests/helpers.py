"""Helpers shared by the test modules: this checkout's code, scratch projects, task records."""

from __future__ import annotations

import collections
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from xpkit._core._paths import RunPaths
from xpkit._core._settings import clear_settings_cache

SRC = Path(__file__).resolve().parents[1] / "src"
"""This checkout's package directory: subprocesses get it as PYTHONPATH."""


def import_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str
) -> ModuleType:
    """A fresh git repo in ``tmp_path`` (the working directory) with module ``name`` imported."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XPKIT_ROOT", raising=False)
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    clear_settings_cache()
    return importlib.import_module(name)


def ok_counts(run_dir: Path) -> collections.Counter[int]:
    """How many ``ok`` records each task index has, over every worker's file."""
    counts: collections.Counter[int] = collections.Counter()
    for path in RunPaths(run_dir).done.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record["status"] == "ok":
                counts[record["i"]] += 1
    return counts
