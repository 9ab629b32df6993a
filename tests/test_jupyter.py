"""A stage script in a real Jupyter kernel, driven the way VSCode's interactive window drives it.

VSCode (vscode-jupyter) starts the kernel in the file's directory, puts that directory on
``sys.path``, runs ``__file__ = '<the .py file>'`` hidden, then sends code as execute
requests: "Run Current File in Interactive Window" sends the whole file as one request;
"Run Cell" sends the lines of one ``# %%`` cell (marker line dropped, a line counting as a
marker whatever its indentation; ``helpers.vscode_cells``), which current releases dedent
by the first code line's indentation (``helpers.vscode_dedent``) and older ones, like
Jupyter's "run selection", send as they are.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import symtable
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import SRC, vscode_cells, vscode_dedent

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
        self.results: list[str] = []

    def execute(self, code: str, *, silent: bool = False, **expressions: str) -> dict[str, Any]:
        """Run code; return the reply's content with user_expressions decoded to text."""
        self.output = []
        self.results = []
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
        if msg["msg_type"] == "execute_result":
            self.results.append(msg["content"]["data"]["text/plain"])
        elif msg["msg_type"] == "stream":
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


# -- the example pipeline, the README's layout, as a new user runs them ------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "pipeline"
README = Path(__file__).resolve().parents[1] / "README.md"
STAGES = ("prepare", "train", "evaluate")
FUTURE = "from __future__ import annotations\n"
STATUS = "main.last.status"


def git_project(root: Path) -> Path:
    """``root`` as a git repository with one commit of what it holds."""
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "commit", "-qm", "start", "--allow-empty"], check=True)
    return root


def vscode_kernel(project: Path) -> Kernel:
    """A kernel started as VSCode starts one for a file of ``project``."""
    k = Kernel(project)
    k.execute(
        f"import os as _v, sys as _s\n%cd {project}\n"
        "if _v.getcwd() not in _s.path:\n    _s.path.insert(0, _v.getcwd())\n",
        silent=True,
    )
    return k


def run_file(k: Kernel, path: Path, text: str | None = None, **expressions: str) -> dict[str, Any]:
    """Run Current File in Interactive Window: ``__file__`` set, then the file as one cell."""
    k.execute(f"__file__ = {str(path)!r}", silent=True)
    return k.execute(path.read_text() if text is None else text, **expressions)


def body_locals(source: str) -> list[str]:
    """Every local variable of the body of ``main`` in ``source`` (its parameters included)."""
    table = symtable.symtable(source, "<stage>", "exec")
    (main,) = [t for t in table.get_children() if t.get_name() == "main"]
    return sorted(main.get_locals())  # type: ignore[attr-defined]  # a function's table


def cell_locals(cell: str) -> list[str]:
    """The local variables a body cell (as in the file) binds before any use: removed from
    the console before the cell is sent, they can only come back from the cell itself."""
    body = []
    for line in cell.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            break  # the guard or other top-level code after the body
        body.append(line)
    source = "def main():\n" + "".join(body)
    augmented = {
        id(node.target) for node in ast.walk(ast.parse(source)) if isinstance(node, ast.AugAssign)
    }
    first: dict[str, bool] = {}
    names = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)]
    for node in sorted(names, key=lambda n: (n.lineno, n.col_offset)):
        bound = isinstance(node.ctx, ast.Store) and id(node) not in augmented
        first.setdefault(node.id, bound)
    return [name for name in body_locals(source) if first.get(name)]


def missing(names: list[str]) -> str:
    """A user expression listing which of ``names`` are not in the console namespace."""
    return f"[n for n in {names!r} if n not in globals()]"


def forget(k: Kernel, names: list[str]) -> None:
    k.execute(f"for _n in {names!r}:\n    globals().pop(_n, None)", silent=True)


def with_failure(text: str) -> str:
    """The file with a failure injected just before the body's final ``return``."""
    head, tail = text.rsplit("\n    return ", 1)
    return f"{head}\n    raise RuntimeError('injected')\n    return {tail}"


@pytest.mark.parametrize("future", ["in the file", "not there", "in an earlier cell"])
def test_pipeline_files_as_one_cell_hand_back_every_local(tmp_path: Path, future: str) -> None:
    """Run Current File, for each example: every local of the body is in the console after a
    success and after a failure, whatever ``from __future__ import annotations`` says."""
    project = git_project(shutil.copytree(EXAMPLES, tmp_path / "p"))
    k = vscode_kernel(project)
    try:
        if future == "in an earlier cell":
            k.execute(FUTURE)
        texts = {stage: (project / f"{stage}.py").read_text() for stage in STAGES}
        assert all(FUTURE in text for text in texts.values())
        if future != "in the file":
            texts = {stage: text.replace(FUTURE, "") for stage, text in texts.items()}
        for stage in STAGES:  # in order: each consumes the previous one's latest run
            names = body_locals(texts[stage])
            assert len(names) > 4
            reply = run_file(
                k, project / f"{stage}.py", texts[stage], missing=missing(names), status=STATUS
            )
            assert reply["values"] == {"missing": "[]", "status": "'completed'"}, k.output
        for stage in reversed(STAGES):  # a failed run is no upstream: the last stage first
            names = body_locals(texts[stage])
            forget(k, names)
            failing = with_failure(texts[stage])
            reply = run_file(
                k, project / f"{stage}.py", failing, missing=missing(names), status=STATUS
            )
            assert reply["values"] == {"missing": "[]", "status": "'failed'"}, k.output
            assert "RuntimeError: injected" in "".join(k.output)
    finally:
        k.close()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Kernel]]:
    """The example pipeline in a kernel where each stage has run once."""
    project = git_project(shutil.copytree(EXAMPLES, tmp_path_factory.mktemp("pipeline") / "p"))
    k = vscode_kernel(project)
    for stage in STAGES:
        reply = run_file(k, project / f"{stage}.py", status="main.last.status")
        assert reply["values"] == {"status": "'completed'"}, k.output
    yield project, k
    k.close()


@pytest.mark.parametrize("form", ["as in the file", "dedented by VSCode"])
@pytest.mark.parametrize("stage", STAGES)
def test_each_body_cell_of_the_pipeline_reruns_alone_after_a_run(
    pipeline: tuple[Path, Kernel], stage: str, form: str
) -> None:
    """Run Cell on each ``# %%`` cell after a run: it recomputes its variables; the last one,
    followed by the guard, shows the body's return value as Out and binds it to ``_``."""
    project, k = pipeline
    path = project / f"{stage}.py"
    reply = run_file(k, path, status="main.last.status")
    assert reply["values"] == {"status": "'completed'"}, k.output
    made = len(runs(project, stage))
    cells = vscode_cells(path.read_text())
    assert len(cells) >= 2
    assert "\nif __name__" in cells[-1]
    assert "\n    return " in cells[-1]
    for cell in cells:
        names = cell_locals(cell)
        forget(k, [*names, "_"])
        sent = cell if form == "as in the file" else vscode_dedent(cell)
        reply = k.execute(sent, missing=missing(names), shown="repr(main.last.result)")
        assert reply["status"] == "ok", k.output
        assert reply["values"]["missing"] == "[]", (cell, k.output)
    assert k.results == [ast.literal_eval(reply["values"]["shown"])]  # Out[N] of the last
    reply = k.execute("", same="_ == main.last.result")
    assert reply["values"] == {"same": "True"}
    assert len(runs(project, stage)) == made  # the guard did not start a run


@pytest.mark.parametrize("form", ["as in the file", "dedented by VSCode"])
def test_body_cells_run_as_sent_before_any_run(tmp_path: Path, form: str) -> None:
    """A new kernel: the lines above the stage run as a selection, ``cfg`` made at the
    prompt, then each cell of the body, with no ``xp.run`` yet: ``import xpkit`` alone makes
    them run as sent; the last one's ``return`` shows as Out, its guard starts no run."""
    project = git_project(shutil.copytree(EXAMPLES, tmp_path / "p"))
    path = project / "prepare.py"
    text = path.read_text()
    k = vscode_kernel(project)
    try:
        k.execute(f"__file__ = {str(path)!r}", silent=True)
        top = text.split("\n@xp.stage", 1)[0]
        prompt = "\ncfg = Config()\ncfg.save_dir = 'scratch'\n_v.mkdir('scratch')\n"
        reply = k.execute(top + prompt)
        assert reply["status"] == "ok", k.output
        cells = vscode_cells(text)
        assert len(cells) >= 2
        assert "\n    return " in cells[-1]
        assert "\nif __name__" in cells[-1]
        for cell in cells:
            names = cell_locals(cell)
            sent = cell if form == "as in the file" else vscode_dedent(cell)
            reply = k.execute(sent, missing=missing(names))
            assert reply["status"] == "ok", k.output
            assert reply["values"]["missing"] == "[]", (cell, k.output)
        assert k.results == ["{'rows': 400}"]  # Out[N] of the last cell
        reply = k.execute("", n_test="n_test", made="_v.path.isdir('results')")
        assert reply["values"] == {"n_test": "100", "made": "False"}, k.output  # no run
        assert (project / "scratch" / "train.json").is_file()
    finally:
        k.close()


def readme_example() -> str:
    """The README's first Python block: the stage script it teaches."""
    block = README.read_text().split("```python\n# prepare.py\n", 1)[1].split("```", 1)[0]
    return "# prepare.py\n" + block


def test_readme_example_works_as_documented(tmp_path: Path) -> None:
    """The README's script in a kernel: %run, locals, each body cell (the last shows the
    result), ``cfg`` edited in place, a cell run again."""
    project = tmp_path / "readme"
    (project / "data").mkdir(parents=True)
    (project / "prepare.py").write_text(readme_example())
    (project / "data" / "raw.csv").write_text("a,b\n1, 2\n3,4\n5,\n")
    git_project(project)
    k = vscode_kernel(project)
    try:
        reply = k.execute("%run prepare.py", kept="kept", rows="len(rows)", r="main.last.result")
        assert reply["values"] == {
            "kept": "[{'a': '1', 'b': '2'}, {'a': '3', 'b': '4'}, {'a': '5', 'b': ''}]",
            "rows": "3",
            "r": "{'kept': 3}",
        }, k.output
        assert "in the console now: cfg, f, kept, rows" in "".join(k.output)
        k.execute(f"__file__ = {str(project / 'prepare.py')!r}", silent=True)
        load, keep = vscode_cells((project / "prepare.py").read_text())
        for sent in (load, keep, vscode_dedent(load), vscode_dedent(keep)):
            reply = k.execute(sent)
            assert reply["status"] == "ok", k.output
        assert k.results == ["{'kept': 3}"]
        k.execute("cfg.min_len = 2")
        reply = k.execute(vscode_dedent(keep), result="_")
        assert reply["values"] == {"result": "{'kept': 2}"}
        assert len(runs(project, "prepare")) == 1
    finally:
        k.close()


STAGE_MODULE = """from __future__ import annotations

import functools
from dataclasses import dataclass

import xpkit as xp
from helpers import scale


def traced(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


@dataclass
class Config:
    n: int = 3


@xp.stage
@traced
def main(cfg: Config) -> int:
    # %% scale
    scaled = [scale(i) for i in range(cfg.n)]
    # %% sum
    total = sum(scaled)
    return total
"""


def test_an_edited_module_is_used_by_the_next_run_and_a_resent_cell(tmp_path: Path) -> None:
    """The script's body calls a project module; the module is edited: a re-sent body cell
    and the next run use the new code, without a restart."""
    project = tmp_path / "mods"
    project.mkdir()
    script = project / "script.py"
    script.write_text(STAGE_MODULE + '\n\nif __name__ == "__main__":\n    xp.run(main)\n')
    (project / "helpers.py").write_text("def scale(x):\n    return 10 * x\n")
    git_project(project)
    k = vscode_kernel(project)
    try:
        reply = run_file(k, script, scaled="scaled", total="total")
        assert reply["values"] == {"scaled": "[0, 10, 20]", "total": "30"}, k.output
        (project / "helpers.py").write_text("def scale(x):\n    return 100 * x\n")
        scale_cell = vscode_cells(script.read_text())[0]
        reply = k.execute(vscode_dedent(scale_cell), scaled="scaled")
        assert reply["values"] == {"scaled": "[0, 100, 200]"}, k.output
        reply = run_file(k, script, total="total", result="main.last.result")
        assert reply["values"] == {"total": "300", "result": "300"}, k.output
    finally:
        k.close()


def test_a_stage_imported_from_a_module_hands_back_its_locals(tmp_path: Path) -> None:
    """``from stages import main; xp.run(main)``: a stage with a future import and two
    decorators hands its locals back, and the module's own names its body cells use;
    after an edit of the module, the next run's."""
    project = tmp_path / "mods"
    project.mkdir()
    stages = project / "stages.py"
    stages.write_text(STAGE_MODULE)
    (project / "helpers.py").write_text("def scale(x):\n    return 10 * x\n")
    git_project(project)
    k = vscode_kernel(project)
    run = "import xpkit as xp\nfrom stages import main\nxp.run(main)\n"
    try:
        reply = k.execute(run, scaled="scaled", total="total", helper="scale(2)")
        assert reply["values"] == {"scaled": "[0, 10, 20]", "total": "30", "helper": "20"}
        stages.write_text(STAGE_MODULE.replace("total = sum(scaled)", "total = sum(scaled) + 1"))
        reply = k.execute(run, total="total", result="main.last.result")
        assert reply["values"] == {"total": "31", "result": "31"}, k.output
    finally:
        k.close()


def test_missing_locals_are_explained_in_the_hand_back_line(tmp_path: Path) -> None:
    """A stage whose source cannot be read back: the console says why there are no locals."""
    project = git_project(tmp_path)
    k = vscode_kernel(project)
    source = textwrap.dedent(
        """\
        import xpkit as xp

        @xp.stage(name="made")
        def main(cfg):
            x = 1
            return x
        """
    )
    try:
        k.execute(f"exec(compile({source!r}, '<generated>', 'exec'))\nxp.run(main)")
        out = "".join(k.output)
        assert "in the console now: cfg (no locals: the source of main is not available" in out
    finally:
        k.close()


def test_editing_cfg_at_the_prompt_prints_no_conversion_warning(tmp_path: Path) -> None:
    """``cfg.lr = 1`` on a float field: OmegaConf's implicit-conversion FutureWarning (2.4)
    is not printed at the prompt; other warnings still are."""
    project = git_project(tmp_path)
    (project / "fit.py").write_text(
        "from dataclasses import dataclass, field\nimport xpkit as xp\n\n"
        "@dataclass\nclass Model:\n    C: float = 1.0\n\n"
        "@dataclass\nclass Config:\n    model: Model = field(default_factory=Model)\n\n"
        "@xp.stage\ndef main(cfg: Config):\n    c = cfg.model.C\n    return c\n\n"
        "if __name__ == '__main__':\n    xp.run(main)\n"
    )
    k = vscode_kernel(project)
    try:
        run_file(k, project / "fit.py")
        reply = k.execute("cfg.model.C = 10", value="cfg.model.C")
        assert reply["values"] == {"value": "10.0"}
        assert k.output == []  # OmegaConf >= 2.4 warns here without xpkit's filter
        message = (
            "Implicit conversion from int to float at 'model.C' during assignment is "
            "deprecated; pass the declared type or use OmegaConf.update() for an existing path."
        )
        k.execute(f"import warnings\nwarnings.warn({message!r}, FutureWarning)")
        assert k.output == []
        k.execute("warnings.warn('something else', FutureWarning)")
        assert "FutureWarning: something else" in "".join(k.output)
    finally:
        k.close()
