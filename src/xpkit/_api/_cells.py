"""A cell of a stage's body, sent alone to the console, runs there as it was sent.

After a run, ``cfg`` and the body's locals are in the console namespace, and the user sends
one ``# %%`` cell of the body. It arrives indented (Jupyter, older VSCode), or dedented by the
first line's indentation (current VSCode, which leaves less indented lines as they were);
it may run into the ``if __name__ == "__main__":`` guard and hold a body-level ``return``.
Python rejects all three. :func:`transform_body_cell` is an IPython input transformer that
makes such a cell module-level code for the console namespace:

- the body lines keep their indentation under an ``if True:`` (or ``try:``) header, so
  multi-line strings are untouched; a cell that starts deeper (inside a loop) gets one
  header per level, ``try:`` where an ``except``/``finally`` clause follows;
- the guard block is left out; other top-level code after the body (helpers) runs;
- a body-level ``return X`` (and a final expression) ends the cell and shows ``X`` as
  ``Out[N]``, bound to ``_`` like any result;
- a dedented cell is matched against the file it came from (``__file__``, the scripts of the
  stages in the namespace) to get its indentation back; unsaved, it is re-indented as body.

Every other cell is left exactly as it was: a cell is only rewritten when it starts
indented, or when Python cannot run it as it stands.
"""

from __future__ import annotations

import ast
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["RETURN_NAME", "CellReturn", "console_shell", "transform_body_cell"]

RETURN_NAME = "__xpkit_return__"
"""The name a rewritten ``return`` raises, put in the console namespace (hidden)."""

_GUARD = re.compile(r"""^if\s+__name__\s*==\s*(['"])__main__\1\s*:\s*(#.*)?$""")
_MAX_LEVELS = 32
_MAX_SOURCE_BYTES = 10 * 2**20  # a "script" bigger than this is not searched for the cell
_CLAUSE_HEADERS = {"except": "try:", "finally": "try:"}
_OPAQUE = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


class CellReturn(BaseException):
    """Raised by a body cell's ``return``: ends the cell; its value is the cell's result.

    A ``BaseException`` so that the body's own ``except Exception`` does not catch it.
    """

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


def console_shell() -> Any:
    """The running IPython shell (Jupyter, VSCode, IPython terminal), or None."""
    # looked up, not imported: a script or a worker never loads IPython for this; IPython 8
    # leaves get_ipython unexported and unannotated, IPython 9 types it, and mypy must pass
    # with either
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    return None if get_ipython is None else get_ipython()


def transform_body_cell(
    lines: list[str], *, files: Callable[[], Iterable[str]] = tuple
) -> list[str]:
    """The cell's lines as console code; ``lines`` themselves unless it is stage body code.

    Args:
        lines: the cell, one line each (with its newline), as IPython's transformers get it.
        files: the files the cell may come from, asked only for a dedented cell that does
            not run as it stands.
    """
    first = _first_code_line(lines)
    if first is None:
        return lines
    raw = lines
    if not _indent(lines[first]):
        if _runs_as_is(lines):
            return lines
        found = _from_files(lines, files()) or _reindented(lines)
        if found is None or not _indent(found[_first_code_line(found) or 0]):
            return lines
        raw = found
    return _as_module_code(raw) or lines


def _first_code_line(lines: list[str]) -> int | None:
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return i
    return None


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _runs_as_is(lines: list[str]) -> bool:
    """Whether Python compiles the cell (a ``return`` outside a function fails there too);
    compiling is the cheapest check: no Python objects for the tree, no walk over it."""
    try:
        with warnings.catch_warnings():  # IPython compiles it again and warns then
            warnings.simplefilter("ignore")
            compile("".join(lines), "<cell>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def _parse(text: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():  # e.g. invalid escapes: IPython warns once, later
            warnings.simplefilter("ignore")
            return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


def _body_returns(stmts: list[ast.stmt]) -> list[ast.Return]:
    """``return`` statements of this code itself, not of functions defined in it."""
    found: list[ast.Return] = []
    todo: list[ast.AST] = [*stmts]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Return):
            found.append(node)
        elif not isinstance(node, _OPAQUE):
            todo.extend(ast.iter_child_nodes(node))
    return sorted(found, key=lambda r: (r.lineno, r.col_offset))


# -- a dedented cell: its indentation back from its file, or re-indented as body -------------


def _from_files(lines: list[str], files: Iterable[str]) -> list[str] | None:
    """The lines of a file that, dedented the way VSCode does, are exactly this cell."""
    code = _trimmed([line.rstrip() for line in lines])
    if not code:
        return None
    for path in dict.fromkeys(files):
        found = _find_in_file(code, path)
        if found is not None:
            return found
    return None


def _trimmed(code: list[str]) -> list[str]:
    start = next((i for i, line in enumerate(code) if line.strip()), len(code))
    end = len(code)
    while end > start and not code[end - 1].strip():
        end -= 1
    return code[start:end]


def _find_in_file(code: list[str], path: str) -> list[str] | None:
    try:
        file = Path(path)
        if not file.is_file() or file.stat().st_size > _MAX_SOURCE_BYTES:
            return None
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    file_lines = [line.rstrip() for line in text.splitlines()]
    head = code[0].strip()
    for i in range(len(file_lines) - len(code) + 1):
        if file_lines[i].strip() == head:
            window = file_lines[i : i + len(code)]
            if _vscode_dedent(window) == code:
                return [line + "\n" for line in window]
    return None


def _vscode_dedent(lines: list[str]) -> list[str]:
    """VSCode's ``dedentCode``: the first code line's indentation off every line that has it."""
    first = _first_code_line(lines)
    prefix = _indent(lines[first]) if first is not None else ""
    return [line[len(prefix) :] if line.startswith(prefix) else line for line in lines]


def _reindented(lines: list[str]) -> list[str] | None:
    """A dedented body cell whose file does not hold it (unsaved edits), indented back.

    Only when it cannot run as it stands for a body's reasons: a body-level ``return``, or a
    guard whose block lost its indentation (which is then left out).
    """
    text = "".join(lines)
    tree = _parse(text)
    if tree is None:
        guard = _dedented_guard(lines)
        if guard is None:
            return None
        lines = lines[:guard]
        tree = _parse("".join(lines))
        if tree is None:
            return None
    elif not _body_returns(tree.body):
        return None
    inside = _string_continuations(tree)
    return [
        line if i + 1 in inside or not line.strip() else "    " + line
        for i, line in enumerate(lines)
    ]


def _dedented_guard(lines: list[str]) -> int | None:
    """The index of a guard line followed by an unindented line (VSCode dedented its block)."""
    for i, line in enumerate(lines):
        if _GUARD.match(line.rstrip()):
            after = _first_code_line(lines[i + 1 :])
            if after is not None and not _indent(lines[i + 1 + after]):
                return i
    return None


def _string_continuations(tree: ast.Module) -> set[int]:
    """Lines (1-based) inside a multi-line string, after its first line: not to re-indent."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Constant, ast.JoinedStr)) and node.end_lineno:
            lines.update(range(node.lineno + 1, node.end_lineno + 1))
    return lines


# -- an indented cell: module code under headers ----------------------------------------------


def _as_module_code(raw: list[str]) -> list[str] | None:
    """Body lines under headers (one per indentation level), guard out, returns shown."""
    levels = _levels(raw)
    if levels is None:
        return _unparsable(raw)
    text, tree = levels
    body, rest = tree.body[0], tree.body[1:]
    if not isinstance(body, ast.If):  # the level-0 header is the first statement
        return None
    edits = _Edits(text)
    returns = _body_returns(body.body)
    for ret in returns:
        edits.rewrite_return(ret)
    final = _final_expression(body, edits)
    if final is not None:
        edits.wrap(final, f"raise {RETURN_NAME}((", "))")
    for stmt in rest:
        if _is_guard(stmt):
            edits.blank_lines(stmt.lineno, stmt.end_lineno or stmt.lineno)
    if returns or final is not None:
        edits.replace_line(1, "try:\n")
        # IPython's displayhook: Out[N], and ``_`` bound, as for a cell's last expression
        clause = (
            f"except {RETURN_NAME} as __xpkit_r__:\n"
            "    get_ipython().displayhook(__xpkit_r__.value)\n"
        )
        edits.insert_line(body.end_lineno or body.lineno, clause)
    return edits.apply().splitlines(keepends=True)


def _unparsable(raw: list[str]) -> list[str] | None:
    """Cells Python rejects anyway: IPython's own handling when all lines share the indent
    (prompts, magics); else a header so that the error names the real problem."""
    first = _first_code_line(raw)
    indent = _indent(raw[first]) if first is not None else ""
    if all(line.startswith(indent) or not line.strip() for line in raw):
        return None
    return ["if True:\n", *raw]


def _levels(raw: list[str]) -> tuple[str, ast.Module] | None:
    """The cell under headers, one per less indented level Python stumbles on, parsed."""
    first = _first_code_line(raw)
    indent0 = _indent(raw[first]) if first is not None else ""
    headers: dict[str, str] = {"": "if True:"}
    for _ in range(_MAX_LEVELS):
        ordered = sorted(headers.items(), key=lambda h: len(h[0]))
        text = "".join(f"{indent}{header}\n" for indent, header in ordered) + "".join(raw)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return text, ast.parse(text)
        except SyntaxError as e:
            level = _dangling_level(e, raw, len(ordered), indent0)
            if level is None or level[0] in headers:
                return None
            headers[level[0]] = level[1]
    return None


def _dangling_level(
    error: SyntaxError, raw: list[str], n_headers: int, indent0: str
) -> tuple[str, str] | None:
    """The header for a line less indented than the cell's first (e.g. after a loop's end)."""
    if not isinstance(error, IndentationError) or error.lineno is None:
        return None
    index = error.lineno - 1 - n_headers
    if not 0 <= index < len(raw):
        return None
    indent = _indent(raw[index])
    if not (0 < len(indent) < len(indent0) and indent0.startswith(indent)):
        return None
    word = raw[index].split(None, 1)[0].rstrip(":")
    return indent, _CLAUSE_HEADERS.get(word, "if True:")


def _final_expression(body: ast.If, edits: _Edits) -> ast.Expr | None:
    """The body's last statement when it is an expression not ended by ``;`` (shown)."""
    last = body.body[-1] if body.body else None
    if not isinstance(last, ast.Expr):
        return None
    end = edits.offset(last.end_lineno or last.lineno, last.end_col_offset or 0)
    after = edits.text[end:].split("\n", 1)[0]
    return None if after.lstrip().startswith(";") else last


def _is_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    sides = [test.left, *test.comparators]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    values = [s.value for s in sides if isinstance(s, ast.Constant)]
    return (
        len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and names == ["__name__"]
        and values == ["__main__"]
    )


class _Edits:
    """Replacements at AST positions (line, UTF-8 byte column) of a text, applied at once."""

    def __init__(self, text: str) -> None:
        self.text = text
        # lines as the parser counts them (str.splitlines also splits at form feeds)
        self.lines = [line + "\n" for line in text.split("\n")]
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.changes: list[tuple[int, int, str]] = []

    def offset(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode()[:col].decode(errors="replace"))

    def rewrite_return(self, node: ast.Return) -> None:
        start = self.offset(node.lineno, node.col_offset)
        if node.value is None:
            self.changes.append((start, start + len("return"), f"raise {RETURN_NAME}(None)"))
            return
        after = start + len("return")
        while self.text[after] in " \t":  # ``return  x`` -> ``raise ...((x))``
            after += 1
        self.changes.append((start, after, f"raise {RETURN_NAME}(("))
        end = self.offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
        self.changes.append((end, end, "))"))

    def wrap(self, node: ast.stmt, before: str, after: str) -> None:
        start = self.offset(node.lineno, node.col_offset)
        end = self.offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
        self.changes += [(start, start, before), (end, end, after)]

    def blank_lines(self, first: int, last: int) -> None:
        self.changes.append((self.starts[first - 1], self.starts[last], "\n" * (last - first + 1)))

    def replace_line(self, lineno: int, line: str) -> None:
        self.changes.append((self.starts[lineno - 1], self.starts[lineno], line))

    def insert_line(self, after: int, line: str) -> None:
        at = self.starts[after]
        prefix = "" if self.text[:at].endswith("\n") else "\n"
        self.changes.append((at, at, prefix + line))

    def apply(self) -> str:
        text = self.text
        for start, end, new in sorted(self.changes, key=lambda c: (c[0], c[1]), reverse=True):
            text = text[:start] + new + text[end:]
        return text
