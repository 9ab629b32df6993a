"""Helpers shared by the test modules: this checkout's code, scratch projects, task records."""

from __future__ import annotations

import collections
import importlib
import json
import re
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


_MARKER = re.compile(r"^(#\s*%%|#\s*<codecell>|#\s*In\[\d*?\]|#\s*In\[ \])")


def vscode_cells(text: str) -> list[str]:
    """Split a file like vscode-jupyter's ``generateCellRangesFromDocument``: a cell starts
    at each marker line (whatever its indentation); lines before the first are no cell."""
    cells: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _MARKER.match(line.strip()):
            cells.append([])
        elif cells:
            cells[-1].append(line)
    return ["".join(c) for c in cells if "".join(c).strip()]


def vscode_dedent(cell: str) -> str:
    """What current VSCode sends for a cell (``generateInteractiveCode``): leading and
    trailing blank lines dropped, then ``dedentCode``: the indentation of the first line that
    is not blank or a comment removed from every line that starts with it."""
    lines = cell.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    first = next((x for x in lines if x.strip() and not x.strip().startswith("#")), "")
    prefix = first[: len(first) - len(first.lstrip())]
    return "".join((x[len(prefix) :] if x.startswith(prefix) else x) + "\n" for x in lines)
