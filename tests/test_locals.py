"""Locals capture: the body's variables at its return or failure, whatever the source holds."""

from __future__ import annotations

import functools
import importlib
import linecache
import sys
import textwrap
import threading
import traceback
import types
from pathlib import Path
from typing import Any

import pytest
from IPython.core.compilerop import CachingCompiler

from xpkit._execute._locals import call_capturing, missing_locals_reason

BODY = """\
import json


def main(cfg):
    \"\"\"The stage.\"\"\"
    text = json.dumps(cfg)
    squares = [i * i for i in range(3)]
    total = sum(s for s in squares)
    key = lambda r: -r
    ordered = sorted(squares, key=key)

    class Local:
        kind = "local"

    def helper():
        return text

    obj = Local()
    echoed = helper()
    if cfg.get("fail"):
        raise ValueError("asked to fail")
    return len(text)
"""

EXPECTED = {"cfg", "text", "squares", "total", "key", "ordered", "Local", "helper", "obj", "echoed"}


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> Any:
    """Import ``source`` as module ``name`` from a real file."""
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


def ipython_cell(source: str, number: int, *, compiler: CachingCompiler) -> dict[str, Any]:
    """Run ``source`` as IPython runs a cell: one compile per top-level statement, with the
    ``__future__`` flags of earlier cells, its text in linecache under a generated name."""
    import ast

    name = compiler.cache(source, number)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for node in ast.parse(source).body:
        code = compiler(ast.Module(body=[node], type_ignores=[]), name, "exec")
        exec(code, namespace)
    return namespace


@pytest.mark.parametrize("future", ["", "from __future__ import annotations\n"])
def test_locals_of_a_module_function_come_back_at_return_and_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, future: str
) -> None:
    """Comprehensions, generators, lambdas, nested classes and functions: all come back."""
    module = load(tmp_path, monkeypatch, f"body{len(future)}", future + BODY)
    result, found, error = call_capturing(module.main, {"n": 1})
    assert (result, error) == (8, None)
    assert found is not None
    assert set(found) == EXPECTED
    assert missing_locals_reason() is None
    _, found, error = call_capturing(module.main, {"fail": True})
    assert isinstance(error, ValueError)
    assert found is not None
    assert set(found) == EXPECTED


def test_twin_keeps_qualified_names_docstring_and_line_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects made by the body look as without xpkit; tracebacks name the user's lines."""
    module = load(tmp_path, monkeypatch, "names", BODY)
    _, found, error = call_capturing(module.main, {"fail": True})
    assert found is not None
    assert type(found["obj"]).__qualname__ == "main.<locals>.Local"
    assert found["helper"].__qualname__ == "main.<locals>.helper"
    assert found["key"].__qualname__ == "main.<locals>.<lambda>"
    assert module.main.__doc__ == "The stage."
    frame = traceback.extract_tb(error.__traceback__)[-1]
    assert (frame.name, frame.lineno) == ("main", 21)
    assert frame.line == 'raise ValueError("asked to fail")'


def test_the_function_keeps_its_own_code_after_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The twin is in place only while the captured call runs, even when it fails."""
    module = load(tmp_path, monkeypatch, "restored", BODY)
    code = module.main.__code__
    call_capturing(module.main, {})
    call_capturing(module.main, {"fail": True})
    assert module.main.__code__ is code
    assert module.main({}) == 2  # a plain call, as before


def test_no_tracing_or_profiling_while_the_body_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The capture costs nothing per line or call: no trace or profile function is set."""
    module = load(
        tmp_path,
        monkeypatch,
        "hooks",
        "import sys\n\ndef main(cfg):\n    hooks = (sys.gettrace(), sys.getprofile())\n"
        "    return hooks\n",
    )
    result, found, _ = call_capturing(module.main, {})
    assert result == (None, None)
    assert found is not None
    assert found["hooks"] == (None, None)


def test_ipython_cells_with_an_earlier_future_import(tmp_path: Path) -> None:
    """A cell compiled after another cell had ``from __future__ import annotations`` (so
    with its flag), statement by statement, calling a method of a module it imports."""
    compiler = CachingCompiler()
    ipython_cell("from __future__ import annotations\n", 1, compiler=compiler)
    namespace = ipython_cell(BODY, 2, compiler=compiler)
    assert namespace["main"].__code__.co_flags & 0x1000000  # CO_FUTURE_ANNOTATIONS
    _, found, _ = call_capturing(namespace["main"], {"n": 2})
    assert found is not None
    assert set(found) == EXPECTED


def test_ipython_cell_holding_its_own_future_import() -> None:
    """The whole file run as one cell, starting with ``from __future__ import annotations``."""
    compiler = CachingCompiler()
    namespace = ipython_cell("from __future__ import annotations\n" + BODY, 1, compiler=compiler)
    _, found, _ = call_capturing(namespace["main"], {"n": 2})
    assert found is not None
    assert set(found) == EXPECTED


def test_decorators_under_the_stage_are_looked_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``functools.wraps`` wrapper (e.g. ``torch.no_grad()``): the wrapped body's locals."""
    module = load(
        tmp_path,
        monkeypatch,
        "wrapped",
        "import functools\n\n"
        "def logged(fn):\n"
        "    @functools.wraps(fn)\n"
        "    def wrapper(*args, **kwargs):\n"
        "        return fn(*args, **kwargs)\n"
        "    return wrapper\n\n"
        "@logged\n"
        "def main(cfg):\n"
        "    inner = cfg * 2\n"
        "    return inner\n",
    )
    result, found, _ = call_capturing(module.main, 3)
    assert result == 6
    assert found == {"cfg": 3, "inner": 6}


def test_a_closure_stage_brings_its_locals_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage defined inside a function (it closes over a variable) is captured too."""
    module = load(
        tmp_path,
        monkeypatch,
        "closure",
        "def make(offset):\n"
        "    def main(cfg):\n"
        "        shifted = cfg + offset\n"
        "        return shifted\n"
        "    return main\n",
    )
    result, found, _ = call_capturing(module.make(10), 1)
    assert result == 11
    assert found == {"cfg": 1, "shifted": 11, "offset": 10}


def test_concurrent_calls_each_get_their_own_locals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads capturing the same function at once: each its own locals, code restored."""
    module = load(
        tmp_path,
        monkeypatch,
        "threads",
        "import time\n\ndef main(cfg):\n    mine = cfg\n    time.sleep(0.05)\n    return mine\n",
    )
    code = module.main.__code__
    got: dict[int, Any] = {}

    def worker(n: int) -> None:
        got[n] = call_capturing(module.main, n)[1]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {n: {"cfg": n, "mine": n} for n in range(4)}
    assert module.main.__code__ is code


def test_a_file_edited_since_the_import_is_not_recompiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The twin would run the new source: no locals on success, and the reason says why;
    a failure still gives the locals of the failing frame."""
    module = load(tmp_path, monkeypatch, "edited", BODY)
    path = tmp_path / "edited.py"
    path.write_text(BODY.replace("text = json.dumps(cfg)", "text = 'EDITED'"))
    linecache.checkcache(str(path))
    result, found, _ = call_capturing(module.main, {"n": 1})
    assert result == 8  # the code that was imported ran, not the edited file
    assert found is None
    assert missing_locals_reason() == "module edited was edited since main was imported (reload it)"
    _, found, error = call_capturing(module.main, {"fail": True})
    assert isinstance(error, ValueError)
    assert found is not None
    assert found["text"] == '{"fail": true}'


def test_functions_without_a_twin_say_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No source, a generator, not a Python function: a one-line reason each."""
    namespace: dict[str, Any] = {}
    exec(compile("def made(cfg):\n    x = cfg\n    return x\n", "<made>", "exec"), namespace)
    assert call_capturing(namespace["made"], 1)[:2] == (1, None)
    assert missing_locals_reason() == "the source of made is not available (<made>)"

    module = load(tmp_path, monkeypatch, "gen", "def main(cfg):\n    yield cfg\n")
    result, found, _ = call_capturing(module.main, 1)
    assert isinstance(result, types.GeneratorType)
    assert found is None
    assert missing_locals_reason() == "main is a generator or async function"

    call_capturing(functools.partial(max, 1), 2)
    assert missing_locals_reason() == "a partial object is not a plain Python function"


def test_failure_before_the_body_runs_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrapper that fails before calling the body: no locals, and the reason says so."""
    module = load(
        tmp_path,
        monkeypatch,
        "early",
        textwrap.dedent(
            """\
            import functools

            def refuse(fn):
                @functools.wraps(fn)
                def wrapper(*args):
                    raise RuntimeError("no")
                return wrapper

            @refuse
            def main(cfg):
                x = cfg
                return x
            """
        ),
    )
    _, found, error = call_capturing(module.main, 1)
    assert isinstance(error, RuntimeError)
    assert found is None
    assert missing_locals_reason() == "main failed before its body ran"
