"""The ``--where`` expression language of ``xp ls``: parsed by hand, never ``eval``-ed.

::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := operand [("==" | "=" | "!=" | "<" | "<=" | ">" | ">=") operand]
    operand    := field | number | 'quoted' | "quoted" | bare-word

Fields are ``config.<dotted.key>``, ``metrics.<name>``, ``id``, ``stage``, ``status``,
``dir``, ``started``, ``duration_s`` and ``commit``; a config key or metric name may drop its
prefix, as the ``xp ls`` table shows it (``lr``, ``optim.lr``, ``loss``), when the runs'
``keys`` name exactly one; any other bare word is a string.
Two numbers compare as numbers, anything else as text (``true``, ``false``, ``null`` for
booleans and None). A field the run does not have makes its comparison false; a field
alone tests that its value is truthy. A field that no run of ``keys`` has is an error naming
the closest keys (a typo would match nothing); so is a status that does not exist.

A compiled expression tests one flat record, or gives the mask of a whole column store at
once (:meth:`Where.mask`): a listing of 100,000 runs compares lists, not dicts.

Example:
    >>> test = compile_where("config.lr > 0.01 and (status == completed or not metrics.acc)")
    >>> test({"config.lr": 0.1, "status": "completed"})
    True
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._core._schema import STATUSES
from ..errors import ExpressionError
from ._table import ABSENT

__all__ = [
    "FIELDS",
    "Where",
    "closest_keys",
    "compile_where",
    "known_field",
    "resolve_field",
    "unknown_key",
]

FIELDS = ("id", "stage", "status", "dir", "started", "duration_s", "commit")
_PREFIXES = ("config.", "metrics.")

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>==|!=|<=|>=|<|>|=)
      | (?P<paren>[()])
      | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<word>[^\s()<>=!'"]+)
      | (?P<bad>\S)
    )""",
    re.VERBOSE,
)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_KEYWORDS = ("and", "or", "not")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_MISSING = ABSENT  # a field the run does not have, as a column store marks it

Record = Mapping[str, Any]
Test = Callable[[Record], bool]
Column = Callable[[str], Sequence[Any]]  # a field's values, one per row (_MISSING where none)


@dataclass(frozen=True)
class _Token:
    kind: str  # op, paren, str, word, keyword, end
    text: str
    pos: int


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.lastgroup is None:  # only trailing spaces left
            break
        kind, text, start = m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup)
        if kind == "bad":
            what = "'!' must be followed by '='" if text == "!" else f"unexpected {text!r}"
            if text in "'\"":
                what = "unterminated string"
            raise _error(expr, start, what)
        if kind == "word" and text.lower() in _KEYWORDS:
            kind, text = "keyword", text.lower()
        tokens.append(_Token(kind, text, start))
        pos = m.end()
    tokens.append(_Token("end", "", len(expr)))
    return tokens


def _error(expr: str, pos: int, what: str) -> ExpressionError:
    return ExpressionError(f"bad --where expression at column {pos + 1}: {what}, in: {expr}")


class _Parser:
    def __init__(self, expr: str, keys: Collection[str] = ()) -> None:
        self.expr = expr
        self.keys = keys
        self.tokens = _tokenize(expr)
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, what: str) -> ExpressionError:
        tok = self.tok
        found = "the end" if tok.kind == "end" else repr(tok.text)
        return _error(self.expr, tok.pos, f"{what}, found {found}")

    def parse(self) -> _Node:
        if self.tok.kind == "end":
            raise self.fail("expected a condition such as config.lr > 0.01")
        test = self.or_expr()
        if self.tok.kind != "end":
            raise self.fail("expected 'and', 'or' or the end")
        return test

    def or_expr(self) -> _Node:
        parts = [self.and_expr()]
        while self.tok == _Token("keyword", "or", self.tok.pos):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else _Or(tuple(parts))

    def and_expr(self) -> _Node:
        parts = [self.not_expr()]
        while self.tok == _Token("keyword", "and", self.tok.pos):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else _And(tuple(parts))

    def not_expr(self) -> _Node:
        tok = self.tok
        if tok.kind == "keyword" and tok.text == "not":
            self.take()
            return _Not(self.not_expr())
        if tok.kind == "paren" and tok.text == "(":
            self.take()
            inner = self.or_expr()
            if self.tok.text != ")":
                raise self.fail("expected ')'")
            self.take()
            return inner
        return self.comparison()

    def comparison(self) -> _Node:
        start = self.tok
        left = self.operand()
        if self.tok.kind != "op":
            if not isinstance(left, _Field):
                raise self.fail("expected a comparison operator (== != < <= > >=)")
            return _Truthy(left)
        op = self.take().text
        right = self.operand()
        if not isinstance(left, _Field) and not isinstance(right, _Field):
            fields = f"config.KEY, metrics.NAME, {', '.join(FIELDS)}"
            what = f"one side must be a field ({fields})"
            close = closest_keys(start.text, self.keys)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise _error(self.expr, start.pos, f"{what}, found {start.text!r}{hint}")
        if op in ("==", "=", "!="):
            _check_status(self.expr, start.pos, left, right)
        return _Compare(left, _OPS[op], right)

    def operand(self) -> _Field | Any:
        tok = self.tok
        if tok.kind == "str":
            self.take()
            return _unquote(tok.text)
        if tok.kind == "word":
            self.take()
            try:
                full = resolve_field(tok.text, self.keys)
            except ExpressionError as e:
                raise _error(self.expr, tok.pos, str(e)) from None
            value = _Field(full) if full is not None else _word(tok.text)
            if isinstance(value, _Field) and self.keys and not known_field(value.name, self.keys):
                raise _error(self.expr, tok.pos, unknown_key(value.name, self.keys))
            return value
        raise self.fail("expected a field (config.KEY, metrics.NAME, status, ...) or a value")


@dataclass(frozen=True)
class _Field:
    name: str

    def get(self, record: Record) -> Any:
        return record.get(self.name, _MISSING)


# -- the parsed expression: each node tests a record, or masks columns ---------------------


class _Node:
    def test(self, record: Record) -> bool:
        raise NotImplementedError

    def mask(self, column: Column, n: int) -> list[bool]:
        raise NotImplementedError


@dataclass(frozen=True)
class _Or(_Node):
    parts: tuple[_Node, ...]

    def test(self, record: Record) -> bool:
        return any(p.test(record) for p in self.parts)

    def mask(self, column: Column, n: int) -> list[bool]:
        masks = [p.mask(column, n) for p in self.parts]
        return list(map(any, zip(*masks, strict=True)))


@dataclass(frozen=True)
class _And(_Node):
    parts: tuple[_Node, ...]

    def test(self, record: Record) -> bool:
        return all(p.test(record) for p in self.parts)

    def mask(self, column: Column, n: int) -> list[bool]:
        masks = [p.mask(column, n) for p in self.parts]
        return list(map(all, zip(*masks, strict=True)))


@dataclass(frozen=True)
class _Not(_Node):
    inner: _Node

    def test(self, record: Record) -> bool:
        return not self.inner.test(record)

    def mask(self, column: Column, n: int) -> list[bool]:
        return [not v for v in self.inner.mask(column, n)]


@dataclass(frozen=True)
class _Truthy(_Node):
    field: _Field

    def test(self, record: Record) -> bool:
        return _truthy(self.field.get(record))

    def mask(self, column: Column, n: int) -> list[bool]:
        return list(map(_truthy, column(self.field.name)))


@dataclass(frozen=True)
class _Compare(_Node):
    left: Any  # a _Field or a value
    compare: Callable[[Any, Any], bool]
    right: Any

    def test(self, record: Record) -> bool:
        return _compare(_value(self.left, record), _value(self.right, record), self.compare)

    def mask(self, column: Column, n: int) -> list[bool]:
        left, right, compare = self.left, self.right, self.compare
        if not isinstance(right, _Field):
            return _compare_with(column(left.name), right, compare)
        if not isinstance(left, _Field):
            swapped = _SWAPPED[compare]
            return _compare_with(column(right.name), left, swapped)
        pairs = zip(column(left.name), column(right.name), strict=True)
        return [_compare(a, b, compare) for a, b in pairs]


# ``constant OP field`` is ``field SWAPPED(OP) constant``
_SWAPPED = {
    operator.eq: operator.eq,
    operator.ne: operator.ne,
    operator.lt: operator.gt,
    operator.le: operator.ge,
    operator.gt: operator.lt,
    operator.ge: operator.le,
}


def _compare_with(
    values: Sequence[Any], constant: Any, compare: Callable[[Any, Any], bool]
) -> list[bool]:
    """``_compare(v, constant, compare)`` for each value; numbers with a number, and texts
    with a text, without the general path."""
    if _is_number(constant):
        return [
            compare(v, constant)
            if type(v) is int or type(v) is float
            else _compare(v, constant, compare)
            for v in values
        ]
    text = _text(constant)
    return [compare(v, text) if type(v) is str else _compare(v, constant, compare) for v in values]


@dataclass(frozen=True)
class Where:
    """A compiled ``--where`` expression: call it on a record, or :meth:`mask` columns."""

    expr: str
    node: _Node

    def __call__(self, record: Record) -> bool:
        return self.node.test(record)

    def mask(self, column: Column, n: int) -> list[bool]:
        """For each of ``n`` rows, whether the expression holds; ``column(name)`` gives a
        field's ``n`` values, ``ABSENT`` where a row has none."""
        return self.node.mask(column, n)


def _value(operand: Any, record: Record) -> Any:
    return operand.get(record) if isinstance(operand, _Field) else operand


def _word(text: str) -> Any:
    if text in FIELDS or text.startswith(_PREFIXES):
        return _Field(text)
    if _NUMBER.fullmatch(text):
        number = float(text)
        return int(number) if number.is_integer() and not re.search("[.eE]", text) else number
    literals = {"true": True, "false": False, "null": None, "none": None}
    return literals.get(text.lower(), text)


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _compare(a: Any, b: Any, compare: Callable[[Any, Any], bool]) -> bool:
    if a is _MISSING or b is _MISSING:
        return False
    if _is_number(a) and _is_number(b):
        return compare(a, b)
    return compare(_text(a), _text(b))


def _truthy(value: Any) -> bool:
    return value is not _MISSING and bool(value)


def resolve_field(name: str, keys: Collection[str]) -> str | None:
    """The field ``name`` stands for: itself when a field, else the one ``config.<name>`` or
    ``metrics.<name>`` among ``keys`` (the runs' record keys); None when neither.

    Raises:
        ExpressionError: ``name`` is both a config key and a metric.
    """
    if name in FIELDS or name.startswith(_PREFIXES):
        return name
    found = [prefix + name for prefix in _PREFIXES if prefix + name in keys]
    if len(found) > 1:
        msg = f"{name!r} is both {found[0]} and {found[1]}: write one of them"
        raise ExpressionError(msg)
    return found[0] if found else None


def known_field(name: str, keys: Collection[str]) -> bool:
    """Whether ``name`` (a resolved field) is a base field or a key some run has."""
    return name in FIELDS or name in keys


def closest_keys(name: str, keys: Collection[str]) -> list[str]:
    """Up to three fields or keys of ``keys`` closest to ``name``: full names, or short ones
    (``lr``, as ``xp ls`` heads its columns) for a short ``name`` when they are unambiguous."""
    short: dict[str, list[str]] = {}
    for key in sorted(keys):
        if key.startswith(_PREFIXES):
            short.setdefault(key.split(".", 1)[1], []).append(key)
    prefixed = name.startswith(_PREFIXES)
    bare = name.split(".", 1)[1] if prefixed else name
    pool = [*short] if prefixed else [*short, *FIELDS]
    close = []
    for match in difflib.get_close_matches(bare, pool, n=3):
        full = short.get(match, [match])
        close += [match] if not prefixed and len(full) == 1 else full
    return close[:3]


def unknown_key(name: str, keys: Collection[str]) -> str:
    """``no listed run has 'config.lrr'; closest: config.lr``."""
    close = closest_keys(name, keys)
    return f"no listed run has {name!r}" + (f"; closest: {', '.join(close)}" if close else "")


def _check_status(expr: str, pos: int, left: Any, right: Any) -> None:
    """``status == complted`` would (never) match, silently: name the statuses instead."""
    for field, value in ((left, right), (right, left)):
        if field == _Field("status") and isinstance(value, str) and value not in STATUSES:
            what = f"status is one of {', '.join(STATUSES)}, not {value!r}"
            raise _error(expr, pos, what)


def compile_where(expr: str, keys: Collection[str] = ()) -> Where:
    """Parse ``expr`` into a test of one flat run record (``{"config.lr": 0.1, ...}``), or
    of columns of them (:meth:`Where.mask`).

    ``keys``: the record keys of the runs, so that ``lr`` may stand for ``config.lr``.

    Raises:
        ExpressionError: ``expr`` is not valid; the message points at the column.
    """
    return Where(expr, _Parser(expr, keys).parse())
