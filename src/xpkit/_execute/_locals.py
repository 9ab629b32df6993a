"""Capture a function's local variables at its return or failure, without tracing.

The function is recompiled once into a twin whose body is wrapped in ``try/finally`` that
hands ``locals()`` to a sink. The twin has the original file name and line numbers (so
tracebacks, debuggers and ``# %%`` cells still point at the user's file) and costs nothing
per line or per call. When no twin can be built (no source, a closure, a generator, a
source file edited since the function was defined), locals are taken from the traceback on
failure and are unavailable on success.
"""

from __future__ import annotations
import __future__

import ast
import inspect
import linecache
import textwrap
import types
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

__all__ = ["call_capturing"]

_SINK = "__xpkit_sink__"
_FUTURE_FLAGS = 0
for _name in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _name).compiler_flag

_captured: ContextVar[list[dict[str, Any]] | None] = ContextVar("xpkit_locals", default=None)
_twins: dict[types.CodeType, Callable[..., Any] | None] = {}


def call_capturing(
    fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[Any, dict[str, Any] | None, BaseException | None]:
    """Call ``fn`` and return ``(result, locals, exception)``; never raises."""
    twin = _twin(fn)
    box: list[dict[str, Any]] = []
    token = _captured.set(box)
    try:
        result = (twin or fn)(*args, **kwargs)
    except BaseException as e:  # handed back to the caller, which re-raises it
        return None, box[-1] if box else _locals_from_traceback(fn, e), e
    finally:
        _captured.reset(token)
    return result, box[-1] if box else None, None


def _sink(values: dict[str, Any]) -> None:
    box = _captured.get()
    if box is not None:
        values.pop(_SINK, None)
        box.append(values)


def _locals_from_traceback(fn: Callable[..., Any], exc: BaseException) -> dict[str, Any] | None:
    code = getattr(fn, "__code__", None)
    tb = exc.__traceback__
    found = None
    while tb is not None:
        if tb.tb_frame.f_code is code:
            found = dict(tb.tb_frame.f_locals)
        tb = tb.tb_next
    return found


def _twin(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    code = getattr(fn, "__code__", None)
    if not isinstance(fn, types.FunctionType) or code is None:
        return None
    if code in _twins:
        return _twins[code]
    try:
        twin = _build_twin(fn)
    except (OSError, TypeError, SyntaxError, ValueError):
        twin = None
    _twins[code] = twin
    return twin


def _build_twin(fn: types.FunctionType) -> Callable[..., Any] | None:
    code = fn.__code__
    if code.co_freevars or code.co_flags & (
        inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
    ):
        return None
    linecache.checkcache(code.co_filename)
    node = _function_node(fn)
    if node is None or not _same_code(fn):
        return None
    _strip_evaluated_parts(node)
    sink_call = ast.Expr(
        ast.Call(
            func=ast.Name(_SINK, ast.Load()),
            args=[ast.Call(func=ast.Name("locals", ast.Load()), args=[], keywords=[])],
            keywords=[],
        )
    )
    node.body = [ast.Try(body=node.body, handlers=[], orelse=[], finalbody=[sink_call])]
    factory = _factory(node)
    compiled = compile(
        factory, code.co_filename, "exec", flags=code.co_flags & _FUTURE_FLAGS, dont_inherit=True
    )
    namespace: dict[str, Any] = {}
    exec(compiled, fn.__globals__, namespace)
    twin = namespace["__xpkit_factory__"](_sink)
    twin.__defaults__ = fn.__defaults__
    twin.__kwdefaults__ = fn.__kwdefaults__
    twin.__annotations__ = fn.__annotations__
    twin.__qualname__ = fn.__qualname__
    twin.__module__ = fn.__module__
    return typing_cast(twin)


def typing_cast(obj: Any) -> Callable[..., Any]:
    return obj  # type: ignore[no-any-return]  # Any in, a callable out: the cast itself


def _function_node(fn: types.FunctionType) -> ast.FunctionDef | None:
    lines, start = inspect.findsource(fn)
    block = inspect.getblock(lines[start:])
    tree = ast.parse(textwrap.dedent("".join(block)))
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        return None
    node = tree.body[0]
    if node.name != fn.__name__:
        return None
    ast.increment_lineno(node, start)
    return node


def _same_code(fn: types.FunctionType) -> bool:
    """True when the source file still compiles to ``fn``'s code (it was not edited since).

    The whole file is compiled, not the function alone: CPython's code generation depends on
    module-level context (e.g. method calls on imported modules). IPython compiles each
    top-level statement of a cell on its own, so that is tried too.
    """
    code = fn.__code__
    source = "".join(linecache.getlines(code.co_filename))
    try:
        tree = ast.parse(source, code.co_filename)
        units = [ast.Module(body=tree.body, type_ignores=[])]
        units += [ast.Module(body=[node], type_ignores=[]) for node in tree.body]
        for unit in units:
            module = compile(unit, code.co_filename, "exec", dont_inherit=True)
            if any(_is_twin_source(c, code) for c in _code_objects(module)):
                return True
    except (SyntaxError, ValueError):
        return False
    return False


def _is_twin_source(candidate: types.CodeType, code: types.CodeType) -> bool:
    return (
        candidate.co_name == code.co_name
        and candidate.co_firstlineno == code.co_firstlineno
        and candidate.co_code == code.co_code
        and candidate.co_names == code.co_names
        and candidate.co_consts == code.co_consts
    )


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const
            yield from _code_objects(const)


def _strip_evaluated_parts(node: ast.FunctionDef) -> None:
    """Drop decorators, defaults and annotations: they were evaluated once already."""
    node.decorator_list = []
    node.returns = None
    args = node.args
    args.defaults = [ast.Constant(None) for _ in args.defaults]
    args.kw_defaults = [None if d is None else ast.Constant(None) for d in args.kw_defaults]
    for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
        if arg is not None:
            arg.annotation = None


def _factory(node: ast.FunctionDef) -> ast.Module:
    factory = ast.FunctionDef(
        name="__xpkit_factory__",
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(_SINK)],
            vararg=None,
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=None,
            defaults=[],
        ),
        body=[node, ast.Return(ast.Name(node.name, ast.Load()))],
        decorator_list=[],
        returns=None,
        type_comment=None,
    )
    module = ast.Module(body=[factory], type_ignores=[])
    ast.fix_missing_locations(module)
    return module
