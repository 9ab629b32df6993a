"""The console set-up: one transformer however often xp.run runs, never in a cell's way."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import xpkit as xp
from xpkit._api._console import BodyCells, enable_body_cells, enable_console, no_locals_note


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A real IPython shell, its profile in ``tmp_path``; ``sys.modules`` put back after."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=config)
    yield ip
    ip.restore_sys_module_state()
    InteractiveShell.clear_instance()


def test_enabling_twice_installs_one_transformer(shell: InteractiveShell) -> None:
    """Every xp.run in a kernel enables the console: the transformer is there once."""
    enable_console(shell)
    enable_console(shell)
    enable_body_cells(shell)
    ours = [t for t in shell.input_transformers_cleanup if isinstance(t, BodyCells)]
    assert len(ours) == 1
    assert shell.input_transformers_cleanup[0] is ours[0]  # before IPython's leading_indent
    assert "__xpkit_return__" in shell.user_ns_hidden


class HostilePath(str):
    """A ``__file__`` whose string methods fail: a fault inside the transformer."""

    def endswith(self, *args: Any) -> bool:
        raise RuntimeError("hostile path")


def test_a_fault_in_the_transformer_never_stops_a_cell(shell: InteractiveShell) -> None:
    """An error while looking for the cell's file: the cell runs as IPython would run it."""
    enable_body_cells(shell)
    shell.user_ns["__file__"] = HostilePath("/nowhere.py")
    assert shell.run_cell("value = 41 + 1").success
    assert shell.user_ns["value"] == 42
    result = shell.run_cell("value = (\n")  # dedented-looking and broken: the file is asked for
    assert isinstance(result.error_before_exec, SyntaxError)


@xp.stage(name="mapped")
def mapped(cfg: Any) -> int:
    return 2


def test_no_locals_note_names_a_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A map keeps no locals: the note says so, and how to keep a failing task's."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    run = mapped.map([{}, {}])
    assert no_locals_note(run).startswith("a map keeps none (--stop-on-error")
