"""Capture a function's local variables at its return or failure, without tracing.

While a captured call runs, the function's code is swapped for a twin: its own source,
recompiled with the body wrapped in ``try/finally`` that hands ``locals()`` to a sink. The
twin is compiled from the same unit as the original (the whole file, or the one statement
of an IPython cell that defined it) with the same ``__future__`` flags, so it keeps the file
name, line numbers, qualified names and module-level context (tracebacks, debuggers and
``# %%`` cells still point at the user's file); it costs nothing per line or per call.
Decorators stacked under the stage (``functools.wraps`` wrappers) are looked through.

When no twin can be built (no source, a generator, a source file edited since the function
was defined), locals are taken from the traceback on failure, and
:func:`missing_locals_reason` says in one line why none came back.
"""

from __future__ import annotations
import __future__

import ast
import contextlib
import inspect
import linecache
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, NamedTuple

__all__ = ["call_capturing", "missing_locals_reason"]

_FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag
_NOT_PLAIN = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
# A string no source contains: compiled as a constant, then replaced by the sink object.
_PLACEHOLDER = "\x00xpkit: locals sink\x00"

_captured: ContextVar[list[dict[str, Any]] | None] = ContextVar("xpkit_locals", default=None)
_reason: ContextVar[str | None] = ContextVar("xpkit_locals_reason", default=None)


class _Twin(NamedTuple):  # not a dataclass: this module loads with ``import xpkit``
    """A function's capturing twin code, or why there is none."""

    code: types.CodeType | None
    problem: str | None = None


# by identity: code objects compare equal across files (co_filename is not compared)
_twins: dict[int, tuple[weakref.ref[types.CodeType], _Twin]] = {}
# a function whose code is swapped: (its own code, the twin installed, captures running)
_swapped: dict[types.FunctionType, tuple[types.CodeType, types.CodeType, int]] = {}
_swap_lock = threading.Lock()


class _Sink:
    """What a twin's ``finally`` calls: keeps the locals for the capture of this context."""

    __slots__ = ()

    def append(self, values: dict[str, Any]) -> None:
        box = _captured.get()
        if box is not None:
            box.append(values)


_SINK = _Sink()


def call_capturing(
    fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[Any, dict[str, Any] | None, BaseException | None]:
    """Call ``fn`` and return ``(result, locals, exception)``; never raises."""
    target = _target(fn)
    twin = _twin(target) if target is not None else _Twin(None, _not_python(fn))
    box: list[dict[str, Any]] = []
    token = _captured.set(box)
    try:
        with _installed(target, twin.code):
            result = fn(*args, **kwargs)
    except BaseException as e:  # handed back to the caller, which re-raises it
        found = box[-1] if box else _locals_from_traceback(target, e)
        _reason.set(None if found is not None else twin.problem or _not_started(fn))
        return None, found, e
    finally:
        _captured.reset(token)
    found = box[-1] if box else None
    _reason.set(None if found is not None else twin.problem or _not_seen(fn))
    return result, found, None


def missing_locals_reason() -> str | None:
    """Why the last :func:`call_capturing` of this context gave no locals (None: it gave)."""
    return _reason.get()


def _target(fn: Callable[..., Any]) -> types.FunctionType | None:
    """The function whose body runs: ``fn``, or the one it wraps (``__wrapped__``)."""
    try:
        inner = inspect.unwrap(fn)
    except ValueError:  # a __wrapped__ cycle
        inner = fn
    return inner if isinstance(inner, types.FunctionType) else None


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", None) or f"a {type(fn).__name__} object")


def _not_python(fn: Callable[..., Any]) -> str:
    return f"{_name(fn)} is not a plain Python function"


def _not_started(fn: Callable[..., Any]) -> str:
    return f"{_name(fn)} failed before its body ran"


def _not_seen(fn: Callable[..., Any]) -> str:
    return f"the body of {_name(fn)} did not run through the capture (a decorator replaced it?)"


@contextlib.contextmanager
def _installed(fn: types.FunctionType | None, twin: types.CodeType | None) -> Iterator[None]:
    """Run the block with ``fn``'s code swapped for ``twin`` (counted: threads, recursion)."""
    if fn is None or twin is None:
        yield
        return
    with _swap_lock:
        original, installed, active = _swapped.get(fn, (fn.__code__, twin, 0))
        if active == 0:
            fn.__code__ = installed
        _swapped[fn] = (original, installed, active + 1)
    try:
        yield
    finally:
        with _swap_lock:
            original, installed, active = _swapped.pop(fn)
            if active > 1:
                _swapped[fn] = (original, installed, active - 1)
            elif fn.__code__ is installed:  # unless something (a reload) replaced it meanwhile
                fn.__code__ = original


def _original_code(fn: types.FunctionType) -> types.CodeType:
    with _swap_lock:
        return _swapped[fn][0] if fn in _swapped else fn.__code__


def _locals_from_traceback(
    fn: types.FunctionType | None, exc: BaseException
) -> dict[str, Any] | None:
    code = _original_code(fn) if fn is not None else None
    tb = exc.__traceback__
    found = None
    while tb is not None:
        if tb.tb_frame.f_code is code:
            found = dict(tb.tb_frame.f_locals)
        tb = tb.tb_next
    return found


def _twin(fn: types.FunctionType) -> _Twin:
    code = _original_code(fn)
    ref, twin = _twins.get(id(code), (None, None))
    if twin is None or ref is None or ref() is not code:
        try:
            twin = _build_twin(fn, code)
        except (OSError, SyntaxError, ValueError, TypeError, RecursionError) as e:
            twin = _Twin(None, f"{fn.__name__} cannot be recompiled: {type(e).__name__}: {e}")
        _twins[id(code)] = (weakref.ref(code), twin)
    return twin


def _build_twin(fn: types.FunctionType, code: types.CodeType) -> _Twin:
    if code.co_flags & _NOT_PLAIN:
        return _Twin(None, f"{fn.__name__} is a generator or async function")
    filename = code.co_filename
    linecache.checkcache(filename)
    source = "".join(linecache.getlines(filename, fn.__globals__))
    if not source:
        return _Twin(None, f"the source of {fn.__name__} is not available ({filename})")
    flags = code.co_flags & _FUTURE_FLAGS
    tree = _parse(source, filename)
    for unit in _units(tree, code.co_firstlineno) if tree is not None else ():
        compiled = _compile(unit, filename, flags)
        if compiled is not None and any(c == code for c in _code_objects(compiled)):
            return _recompile(unit, code, flags)
    if fn.__module__ == "__main__":
        return _Twin(None, f"{filename} was edited since {fn.__name__} was defined (run it again)")
    return _Twin(
        None, f"module {fn.__module__} was edited since {fn.__name__} was imported (reload it)"
    )


def _parse(source: str, filename: str) -> ast.Module | None:
    try:
        return ast.parse(source, filename)
    except (SyntaxError, ValueError):  # edited into invalid code since
        return None


def _units(tree: ast.Module, line: int) -> Iterator[ast.Module]:
    """The whole file, then the top-level statement holding ``line`` alone.

    CPython's code generation depends on the unit compiled (e.g. method calls on modules the
    unit imports); IPython compiles each top-level statement of a cell on its own.
    """
    yield tree
    for node in tree.body:
        if _first_line(node) <= line <= (node.end_lineno or node.lineno):
            yield ast.Module(body=[node], type_ignores=[])
            return


def _first_line(node: ast.stmt) -> int:
    decorators: list[ast.expr] = getattr(node, "decorator_list", None) or []
    return min([node.lineno, *(d.lineno for d in decorators)])


def _compile(unit: ast.Module, filename: str, flags: int) -> types.CodeType | None:
    try:
        code: types.CodeType = compile(unit, filename, "exec", flags=flags, dont_inherit=True)
    except (SyntaxError, ValueError):  # e.g. a __future__ import that is not first here
        return None
    return code


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const
            yield from _code_objects(const)


def _recompile(unit: ast.Module, code: types.CodeType, flags: int) -> _Twin:
    """Compile ``unit`` again with the function's body wrapped (in place: the tree was
    parsed for this), and take the twin's code."""
    node = _function_node(unit, code)
    if node is None:
        return _Twin(None, f"{code.co_name} was not found in its source")
    _wrap_body(node)
    compiled = compile(unit, code.co_filename, "exec", flags=flags, dont_inherit=True)
    twin = next((c for c in _code_objects(compiled) if _same_place(c, code)), None)
    if twin is None or twin.co_freevars != code.co_freevars:
        return _Twin(None, f"{code.co_name} cannot be recompiled as it was compiled")
    consts = tuple(_SINK if _is_placeholder(c) else c for c in twin.co_consts)
    return _Twin(twin.replace(co_consts=consts))


def _function_node(unit: ast.Module, code: types.CodeType) -> ast.FunctionDef | None:
    for node in ast.walk(unit):
        if (
            isinstance(node, ast.FunctionDef)
            and node.name == code.co_name
            and _first_line(node) == code.co_firstlineno
        ):
            return node
    return None


def _same_place(candidate: types.CodeType, code: types.CodeType) -> bool:
    return (
        candidate.co_name == code.co_name
        and candidate.co_firstlineno == code.co_firstlineno
        and getattr(candidate, "co_qualname", None) == getattr(code, "co_qualname", None)
    )


def _is_placeholder(const: object) -> bool:
    return isinstance(const, str) and const == _PLACEHOLDER


def _wrap_body(node: ast.FunctionDef) -> None:
    """``body`` becomes ``try: body finally: <sink>.append(locals())`` (docstring kept first)."""
    body = node.body
    doc = body[:1] if _is_docstring(body[0]) else []
    rest = body[len(doc) :] or [ast.Pass()]
    sink = ast.Expr(
        ast.Call(
            func=ast.Attribute(ast.Constant(_PLACEHOLDER), "append", ast.Load()),
            args=[ast.Call(func=ast.Name("locals", ast.Load()), args=[], keywords=[])],
            keywords=[],
        )
    )
    last = rest[-1]
    for part in ast.walk(sink):  # the sink's line: the body's last, as a debugger expects
        if isinstance(part, (ast.expr, ast.stmt)):
            part.lineno = part.end_lineno = last.end_lineno or last.lineno
            part.col_offset = part.end_col_offset = 0
    wrapped = ast.Try(body=rest, handlers=[], orelse=[], finalbody=[sink])
    node.body = [*doc, ast.copy_location(wrapped, rest[0])]
    ast.fix_missing_locations(node)


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )
