"""Body cells sent alone to a real IPython shell run as sent; every other cell is untouched."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from helpers import vscode_dedent
from xpkit._api._cells import transform_body_cell
from xpkit._api._console import enable_body_cells

SCRIPT = '''\
import xpkit as xp


@xp.stage
def main(cfg):
    # %% load
    rows = list(range(cfg.n))
    query = """
SELECT *
  FROM t
"""
    # %% fit
    for epoch in range(2):
        loss = epoch * 10
        # %% inside the loop
        loss += 1
        trace.append(loss)
    total = sum(rows)
    if total > 1000:
        return "too big"
    # %% last
    total += 1
    return {"total": total, "loss": loss}


def helper():
    return "fresh helper"


if __name__ == "__main__":
    guard_ran.append(True)
    xp.run(main)
'''


def cell(name: str) -> str:
    """The lines of a ``# %% name`` cell of SCRIPT, as Jupyter sends them (marker dropped)."""
    lines = SCRIPT.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == f"# %% {name}")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("# %%")),
        len(lines),
    )
    return "".join(lines[start + 1 : end])


class Namespace:
    """Where ``cfg`` has ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteractiveShell]:
    """A real IPython shell with xpkit's body-cell transformer installed (its profile and
    history in a temporary directory, not the user's). IPython puts its namespace in
    ``sys.modules["__main__"]`` (multiprocessing's spawn then fails): put back afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
        mp.setitem(sys.modules, "__main__", sys.modules["__main__"])
        config = Config()
        config.HistoryManager.hist_file = ":memory:"
        ip = InteractiveShell.instance(config=config)
        enable_body_cells(ip)
        yield ip
        ip.restore_sys_module_state()
        InteractiveShell.clear_instance()


@pytest.fixture
def ns(shell: InteractiveShell, tmp_path: Path) -> dict[str, Any]:
    """The console namespace after a run of SCRIPT failed in its loop: cfg and locals."""
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    state = {
        "__file__": str(script),
        "cfg": Namespace(3),
        "rows": [0, 1, 2],
        "trace": [],
        "guard_ran": [],
        "epoch": 0,
        "loss": 0,
    }
    for name in ("total", "query", "_"):
        shell.user_ns.pop(name, None)
    shell.user_ns.update(state)
    return shell.user_ns


def run(shell: InteractiveShell, code: str) -> Any:
    result = shell.run_cell(code, store_history=True)
    assert result.error_before_exec is None, result.error_before_exec
    assert result.error_in_exec is None, result.error_in_exec
    return result.result


@pytest.mark.parametrize(
    "code",
    [
        "x = 1\nprint(x)\n",
        "def f():\n    return 1\n",
        "%time y = 2\n",
        "!true\n",
        ">>> z = 3\n",
        "x = (\n1)\n",
        "# only a comment\n",
        "",
        "if __name__ == '__main__':\n    pass\n",
    ],
)
def test_ordinary_cells_are_left_exactly_as_they_are(code: str) -> None:
    """A cell that starts at column 0 and runs as it stands is returned unchanged."""
    lines = code.splitlines(keepends=True)
    assert transform_body_cell(lines, files=lambda: ["/nonexistent.py"]) is lines


def test_an_indented_pasted_snippet_runs_as_ipython_ran_it(
    shell: InteractiveShell, ns: dict[str, Any]
) -> None:
    """Indented code without a guard or return: it runs and its last expression shows."""
    assert run(shell, "    a = 2\n    a * 21\n") == 42
    assert ns["a"] == 2
    assert run(shell, "    a * 2;\n") is None  # a final ';' silences it, as in IPython


def test_last_cell_runs_into_the_guard_which_is_left_out(
    shell: InteractiveShell, ns: dict[str, Any]
) -> None:
    """The body's last cell: its return value shows as Out and binds ``_``; no guard."""
    ns["total"] = 10
    assert run(shell, cell("last")) == {"total": 11, "loss": 0}
    assert ns["_"] == {"total": 11, "loss": 0}
    assert ns["total"] == 11
    assert ns["guard_ran"] == []
    assert ns["helper"]() == "fresh helper"  # top-level code after the body still runs


def test_an_early_return_ends_the_cell(shell: InteractiveShell, ns: dict[str, Any]) -> None:
    """``return`` inside an ``if`` of the body stops the cell there, as it stops the body."""
    code = "    total = 5000\n    if total > 1000:\n        return 'too big'\n    total = 0\n"
    assert run(shell, code) == "too big"
    assert ns["total"] == 5000


def test_return_is_not_caught_by_the_body_except_exception(
    shell: InteractiveShell, ns: dict[str, Any]
) -> None:
    """A body's own ``except Exception`` does not swallow the cell's return."""
    code = "    try:\n        return 7\n    except Exception:\n        caught = True\n"
    assert run(shell, code) == 7
    assert "caught" not in ns


def test_returns_of_functions_defined_in_the_cell_stay_returns(
    shell: InteractiveShell, ns: dict[str, Any]
) -> None:
    """Only the body's own ``return`` is rewritten, not those of functions it defines."""
    code = "    def double(v):\n        return 2 * v\n    got = double(4)\n    f = lambda: 1\n"
    run(shell, code)
    assert ns["got"] == 8
    assert ns["double"](1) == 2


def test_a_cell_starting_inside_a_loop_runs_the_rest_of_the_body(
    shell: InteractiveShell, ns: dict[str, Any]
) -> None:
    """Deeper lines first, then the less indented ones, each level under its own header."""
    ns["loss"] = 10
    assert run(shell, cell("inside the loop")) is None
    assert ns["trace"] == [11]
    assert ns["total"] == 3


def test_dangling_except_and_finally_keep_their_meaning(
    shell: InteractiveShell, ns: dict[str, Any]
) -> None:
    """A cell from inside a ``try``: its ``except`` catches, its ``finally`` runs."""
    code = (
        "            value = int('x')\n"
        "        except ValueError:\n"
        "            value = -1\n"
        "        finally:\n"
        "            closed = True\n"
        "    after = value * 2\n"
    )
    run(shell, code)
    assert (ns["value"], ns["closed"], ns["after"]) == (-1, True, -2)


def test_multiline_strings_keep_their_text(shell: InteractiveShell, ns: dict[str, Any]) -> None:
    """A string whose lines start at column 0 (IPython's own dedent fails on it) is intact."""
    run(shell, cell("load"))
    assert ns["query"] == "\nSELECT *\n  FROM t\n"
    assert ns["rows"] == [0, 1, 2]


def test_unicode_before_a_return_on_the_same_line(
    shell: InteractiveShell, ns: dict[str, Any]
) -> None:
    """AST columns are UTF-8 bytes: text before ``return`` on its line does not shift it."""
    assert run(shell, "    word = 'héllo ✓'; return word.upper()\n") == "HÉLLO ✓"


def test_returns_of_any_shape(shell: InteractiveShell, ns: dict[str, Any]) -> None:
    """Bare, tuple, parenthesized over lines with a comment, after a form feed."""
    assert run(shell, "    return\n") is None
    assert run(shell, "    return 1, 2\n") == (1, 2)
    assert run(shell, "    return (1 +\n        2)  # three\n") == 3
    assert run(shell, "    a = 1\n\x0c\n    return a + 1\n") == 2


def test_vscode_dedented_cell_gets_its_indentation_from_the_file(
    shell: InteractiveShell, ns: dict[str, Any]
) -> None:
    """Current VSCode dedents a cell by its first line: the file gives the layout back."""
    ns["total"] = 1
    assert run(shell, vscode_dedent(cell("last"))) == {"total": 2, "loss": 0}
    assert ns["guard_ran"] == []
    assert ns["helper"]() == "fresh helper"
    ns["loss"] = 0
    run(shell, vscode_dedent(cell("inside the loop")))
    assert ns["trace"] == [1]


def test_vscode_dedented_cell_with_unsaved_edits(
    shell: InteractiveShell, ns: dict[str, Any]
) -> None:
    """Not in the file as saved: a return and a guard that lost its indentation still work."""
    edited = cell("last").replace("total += 1", "total += 100")
    ns["total"] = 1
    assert run(shell, vscode_dedent(edited).split("\n\ndef helper")[0] + GUARD) == {
        "total": 101,
        "loss": 0,
    }
    assert ns["guard_ran"] == []


GUARD = '\n\nif __name__ == "__main__":\nguard_ran.append(True)\n'


def test_a_broken_body_cell_reports_the_real_error(shell: InteractiveShell) -> None:
    """A typo in a body cell is a SyntaxError about the typo, not about indentation."""
    result = shell.run_cell("    x = (1,\n    return x\n\nif __name__ == '__main__':\n    pass\n")
    assert isinstance(result.error_before_exec, SyntaxError)
    assert not isinstance(result.error_before_exec, IndentationError)


def test_unreadable_candidate_files_are_skipped(
    shell: InteractiveShell, ns: dict[str, Any], tmp_path: Path
) -> None:
    """A ``__file__`` that is binary, a directory or missing: the cell runs as IPython would."""
    binary = tmp_path / "blob.py"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for file in (binary, tmp_path, tmp_path / "missing.py"):
        ns["__file__"] = str(file)
        assert run(shell, "x = 1\n") is None
        result = shell.run_cell("x = (\n")  # an ordinary error stays IPython's
        assert isinstance(result.error_before_exec, SyntaxError)


def test_return_name_comes_back_after_a_reset(shell: InteractiveShell) -> None:
    """``%reset`` empties the namespace; the next body cell with ``return`` still works."""
    shell.run_cell("%reset -f")
    assert run(shell, "    return 5\n") == 5


def test_rewritten_text_of_a_typical_last_cell() -> None:
    """What IPython compiles for the README's last cell: readable, same lines, guard out."""
    code = textwrap.dedent(
        """\
            xp.log_metrics({"rows": len(rows)})
            return {"rows": len(rows)}

        if __name__ == "__main__":
            xp.run(main)
        """
    )
    out = "".join(transform_body_cell(code.splitlines(keepends=True)))
    assert out == textwrap.dedent(
        """\
        try:
            xp.log_metrics({"rows": len(rows)})
            raise __xpkit_return__(({"rows": len(rows)}))
        except __xpkit_return__ as __xpkit_r__:
            get_ipython().displayhook(__xpkit_r__.value)



        """
    )


def test_the_hook_adds_no_warning_of_its_own(shell: InteractiveShell, ns: dict[str, Any]) -> None:
    """Parsing a cell to look at it warns nothing (IPython warns, once its own way)."""
    for code in ('pattern = "\\d"\n', '    indented = "\\d"\n    return indented\n'):
        with pytest.warns(DeprecationWarning, match="invalid escape") as caught:
            run(shell, code)
        files = {w.filename for w in caught}
        assert files.isdisjoint({"<cell>", "<unknown>"}), files
