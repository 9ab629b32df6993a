"""A stage script in a real Jupyter kernel, driven the way VSCode's interactive window drives it.

VSCode (vscode-jupyter) starts the kernel in the file's directory, puts that directory on
``sys.path``, runs ``__file__ = '<the .py file>'`` hidden, then sends code as execute
requests: "Run Current File in Interactive Window" sends the whole file as one request;
"Run Cell" sends the lines of one ``# %%`` cell (marker line dropped, a line counting as a
marker whatever its indentation), which IPython dedents.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import SRC

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

SCRIPT = """# %%
from dataclasses import dataclass

import xpkit as xp
from helpers import scale


@dataclass
class Config:
    param: int = 2


# %%
@xp.stage
def main(cfg: Config):
    # %% load
    values = [scale(i) for i in range(cfg.param)]
    total = sum(values)
    # %% check
    from lazyhelp import offset

    shifted = total + offset()
    assert shifted < 0, f"shifted is {shifted}"
    return shifted


# %%
if __name__ == "__main__":
    xp.run(main)
"""

CELL_SCRIPT = """# %%
from dataclasses import dataclass

import xpkit as xp


@dataclass
class Config:
    n: int = 4


# %%
@xp.stage
def main(cfg: Config):
    squares = [i * i for i in range(cfg.n)]
    return sum(squares)


# %%
if __name__ == "__main__":
    result = xp.run(main)
"""

MARKER = re.compile(r"^(#\s*%%|#\s*<codecell>|#\s*In\[\d*?\]|#\s*In\[ \])")


def vscode_cells(text: str) -> list[str]:
    """Split a file like vscode-jupyter's generateCellRangesFromDocument, markers dropped."""
    cells: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if MARKER.match(line.strip()):
            cells.append([])
        elif cells:
            cells[-1].append(line)
    return ["".join(c) for c in cells if "".join(c).strip()]


class Kernel:
    """A real ipykernel and a client sending execute requests."""

    def __init__(self, cwd: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_TRACKING": "0"}
        env.pop("XPKIT_ROOT", None)
        self.manager = jupyter_client.KernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=str(cwd), env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.output: list[str] = []

    def execute(self, code: str, *, silent: bool = False, **expressions: str) -> dict[str, Any]:
        """Run code; return the reply's content with user_expressions decoded to text."""
        self.output = []
        reply = self.client.execute_interactive(
            code,
            silent=silent,
            user_expressions=expressions,
            timeout=60,
            output_hook=self._collect,
        )
        content: dict[str, Any] = reply["content"]
        values = {}
        for name, value in content.get("user_expressions", {}).items():
            values[name] = value["data"]["text/plain"] if value["status"] == "ok" else value
        content["values"] = values
        return content

    def _collect(self, msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            self.output.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            self.output.append("\n".join(msg["content"]["traceback"]))

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("console")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "prep.py").write_text(SCRIPT)
    (root / "cells.py").write_text(CELL_SCRIPT)
    (root / "helpers.py").write_text("def scale(x):\n    return 10 * x\n")
    (root / "lazyhelp.py").write_text("def offset():\n    return 1\n")
    return root


@pytest.fixture(scope="module")
def kernel(project: Path) -> Iterator[Kernel]:
    k = Kernel(project)
    # what VSCode runs before the first cell of a file (UpdateCWDAndPath, setFileInKernel)
    k.execute(
        f"import os as _v, sys as _s\n%cd {project}\n"
        "if _v.getcwd() not in _s.path:\n    _s.path.insert(0, _v.getcwd())\n"
        f"__file__ = {str(project / 'prep.py')!r}",
        silent=True,
    )
    yield k
    k.close()


def runs(project: Path, stage: str) -> list[Path]:
    return sorted(p for p in (project / "results" / stage).iterdir() if p.name != "latest")


def test_failing_run_leaves_locals_and_cfg_in_the_kernel(project: Path, kernel: Kernel) -> None:
    """Run Current File: the failure is shown, the kernel lives, locals and cfg are injected."""
    reply = kernel.execute(
        (project / "prep.py").read_text(),
        values="values",
        total="total",
        shifted="shifted",
        param="cfg.param",
        name="main.name",
        status="main.last.status",
        argv="__import__('sys').argv[1:2]",
    )
    assert reply["status"] == "ok"  # xp.run never raises nor exits in a console
    shown = "".join(kernel.output)
    assert "AssertionError: shifted is 11" in shown
    assert "cfg, offset, shifted, total, values" in shown
    got = reply["values"]
    assert got["values"] == "[0, 10]"
    assert got["total"] == "10"
    assert got["shifted"] == "11"
    assert got["param"] == "2"
    assert got["name"] == "'prep'"  # named after VSCode's __file__, not the cell's temp file
    assert got["status"] == "'failed'"
    assert got["argv"] == "['-f']"  # the kernel's own argv, which xp.run ignored
    (run_dir,) = runs(project, "prep")
    lock = yaml.safe_load((run_dir / "run.lock").read_text())
    assert lock["status"] == "failed"
    assert lock["error"]["type"] == "AssertionError"
    assert lock["argv"] == ["prep.py"]
    assert "shifted is 11" in (run_dir / "run.log").read_text()
    assert kernel.manager.is_alive()


def test_body_cell_reruns_alone_on_the_injected_locals(project: Path, kernel: Kernel) -> None:
    """Run Cell on a # %% cell of the body works on the injected cfg and locals."""
    load_cell = vscode_cells((project / "prep.py").read_text())[2]
    assert load_cell.startswith("    values = ")
    kernel.execute("cfg.param = 3")
    reply = kernel.execute(load_cell, total="total", values="values")
    assert reply["status"] == "ok", kernel.output
    assert reply["values"] == {"total": "30", "values": "[0, 10, 20]"}


def test_fixed_file_and_edited_modules_run_in_the_same_kernel(
    project: Path, kernel: Kernel
) -> None:
    """The file is fixed and a helper module edited: the next run uses the new code."""
    script = project / "prep.py"
    script.write_text(script.read_text().replace("assert shifted < 0", "assert shifted > 0"))
    (project / "helpers.py").write_text("def scale(x):\n    return 100 * x\n")
    # lazyhelp was first imported inside the body, during the first run
    (project / "lazyhelp.py").write_text("def offset():\n    return 5\n")
    reply = kernel.execute(
        script.read_text(),
        shifted="shifted",
        status="main.last.status",
        result="main.last.result",
    )
    assert reply["status"] == "ok", kernel.output
    assert reply["values"] == {"shifted": "105", "status": "'completed'", "result": "105"}
    latest = yaml.safe_load((project / "results" / "prep" / "latest" / "run.lock").read_text())
    assert latest["status"] == "completed"
    assert len(runs(project, "prep")) == 2
    assert kernel.manager.is_alive()


def test_module_first_imported_by_a_run_is_reloaded_when_edited(
    project: Path, kernel: Kernel
) -> None:
    """A module first imported inside the body, edited right after that run, is reloaded."""
    script = project / "prep.py"
    (project / "bonus.py").write_text("BONUS = 1000\n")
    script.write_text(
        script.read_text().replace(
            "    return shifted\n", "    from bonus import BONUS\n\n    return shifted + BONUS\n"
        )
    )
    reply = kernel.execute(script.read_text(), result="main.last.result")
    assert reply["values"] == {"result": "1105"}, kernel.output
    (project / "bonus.py").write_text("BONUS = 2000\n")
    reply = kernel.execute(script.read_text(), result="main.last.result")
    assert reply["values"] == {"result": "2105"}, kernel.output


def test_run_all_cells_of_a_cell_script(project: Path, kernel: Kernel) -> None:
    """Run All Cells: each top-level cell is a request; the __main__ cell makes the run."""
    script = project / "cells.py"
    kernel.execute(f"__file__ = {str(script)!r}", silent=True)  # VSCode: a new file submits
    cells = vscode_cells(script.read_text())
    assert len(cells) == 3
    for cell in cells:
        reply = kernel.execute(cell)
        assert reply["status"] == "ok", kernel.output
    reply = kernel.execute("", squares="squares", result="result.result", name="main.name")
    assert reply["values"] == {"squares": "[0, 1, 4, 9]", "result": "14", "name": "'cells'"}
    (run_dir,) = runs(project, "cells")
    assert yaml.safe_load((run_dir / "run.lock").read_text())["status"] == "completed"


METHOD_SCRIPT = """import json
from dataclasses import dataclass

import xpkit as xp


@dataclass
class Config:
    n: int = 3


@xp.stage
def main(cfg: Config):
    text = json.dumps(list(range(cfg.n)))
    xp.log_metrics({"chars": len(text)})
    return len(text)


if __name__ == "__main__":
    xp.run(main)
"""


def test_completed_run_hands_back_locals_when_the_body_calls_module_functions(
    project: Path, kernel: Kernel
) -> None:
    """A body calling ``json.dumps``/``xp.log_metrics``: its locals reach the kernel on success."""
    script = project / "method.py"
    script.write_text(METHOD_SCRIPT)
    kernel.execute(f"__file__ = {str(script)!r}", silent=True)
    reply = kernel.execute(script.read_text(), text="text", status="main.last.status")
    assert reply["status"] == "ok", kernel.output
    assert reply["values"] == {"text": "'[0, 1, 2]'", "status": "'completed'"}
    assert "in the console now: cfg, text" in "".join(kernel.output)


def test_body_cell_with_log_metrics_reruns_outside_the_run(project: Path, kernel: Kernel) -> None:
    """A body cell calling ``xp.log_metrics`` re-runs on the injected locals: nothing recorded."""
    script = project / "method.py"
    script.write_text(METHOD_SCRIPT)
    kernel.execute(f"__file__ = {str(script)!r}", silent=True)
    kernel.execute(script.read_text())
    body = script.read_text().split("def main(cfg: Config):\n")[1].split("    return")[0]
    metrics = project / "results" / "method" / "latest" / "metrics.jsonl"
    before = metrics.read_text()
    kernel.execute("cfg.n = 5")
    reply = kernel.execute(body, text="text")  # indented, as VSCode sends it: IPython dedents
    assert reply["status"] == "ok", kernel.output
    assert reply["values"] == {"text": "'[0, 1, 2, 3, 4]'"}
    assert "xp.log_metrics() outside a running stage: not recorded" in "".join(kernel.output)
    assert metrics.read_text() == before
