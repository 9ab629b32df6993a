"""Reading the head of one run.lock: only the sections a listing needs, fast.

A run.lock is mostly ``env.packages`` and the recursive ``upstream`` locks; a listing needs
neither. :func:`read_head` parses only the top-level sections named in :data:`HEAD_KEYS`
(cut out of the text by their column-0 key lines, as written by :func:`~xpkit._lock.dump_yaml`),
with a small parser for the plain YAML that dump_yaml writes there, PyYAML for anything else,
and the full parse whenever the cut text does not validate: a hand-written lock is read
correctly, just slower.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

from .._core import _yaml
from .._core._lock import RunLock, decode_lock, load_lock
from .._core._yaml import load_yaml
from ..errors import LockError, LockVersionError

__all__ = ["HEAD_KEYS", "read_head"]

# the sections of run.lock a listing shows; ``env``, ``upstream``, ``argv``, ``error`` are left
HEAD_KEYS = frozenset(
    {
        "xpkit",
        "id",
        "stage",
        "dir",
        "status",
        "started",
        "ended",
        "duration_s",
        "pid",
        "host",
        "config",
        "src",
        "data",
        "metrics",
        "tasks",
        "sweep",
    }
)


def _cut(text: str) -> str:
    """The lines of the top-level sections in :data:`HEAD_KEYS`."""
    out: list[str] = []
    keep = False
    for line in text.splitlines(keepends=True):
        first = line[:1]
        if first and first not in " \t-#\r\n":
            keep = line.split(":", 1)[0] in HEAD_KEYS
        if keep:
            out.append(line)
    return "".join(out)


def _head_dict(text: str) -> dict[str, Any] | None:
    """The head sections parsed, or None when the cut text is not a plain mapping."""
    head = _cut(text)
    try:
        data = _simple_yaml(head)
    except (_Unsupported, ValueError):  # ValueError: an integer of more than 4300 digits
        try:
            data = load_yaml(head)
        except _yaml.YAMLError:
            return None
    return data if isinstance(data, dict) and "xpkit" in data else None


# -- a parser for the plain subset of YAML that dump_yaml writes for configs and metrics -----
#
# PyYAML builds every value in Python even with the C loader (~0.5 ms for 50 config keys);
# this reads block mappings of `key: scalar` lines, indentless lists of scalars, quoted
# strings and {} / [] in ~5x less. Anything else (a literal block, a wrapped long string,
# flow collections, anchors, a scalar PyYAML would read as a date or a special float) raises
# _Unsupported and PyYAML parses the text: the result is always what PyYAML would give.


class _Unsupported(Exception):
    pass


_KEY_LINE = re.compile(r"( *)([A-Za-z_][A-Za-z0-9_.-]*):(?: (.*))?\Z")
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]+(?:[eE][-+][0-9]+)?\Z")
_WORDS: dict[str, Any] = {"null": None, "Null": None, "NULL": None, "~": None}
_WORDS.update(dict.fromkeys(["true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"], True))
_WORDS.update(
    dict.fromkeys(["false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"], False)
)


@functools.cache
def _resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    """PyYAML's implicit resolvers (what a plain scalar reads as), by first character."""
    import yaml

    resolvers: dict[str, list[tuple[str, re.Pattern[str]]]]
    resolvers = yaml.resolver.Resolver.yaml_implicit_resolvers
    return resolvers


def _scalar(text: str) -> Any:
    first = text[:1]
    if first == "'":
        body = text[1:-1]
        if len(text) < 2 or not text.endswith("'") or "'" in body.replace("''", ""):
            raise _Unsupported
        return body.replace("''", "'")
    if text == "{}":
        return {}
    if text == "[]":
        return []
    special = first in '"&*!|>%@`{[]},#?:-'
    if not text or (special and not _INT.match(text) and not _FLOAT.match(text)):
        raise _Unsupported
    if ": " in text or " #" in text or text.endswith((":", " ")):
        raise _Unsupported
    if text.isascii() and text.isdigit() and (first != "0" or text == "0"):
        return int(text)  # the commonest config value, without the regular expressions
    for tag, regexp in _resolvers().get(first, ()):
        if regexp.match(text):
            if tag.endswith(":int") and _INT.match(text):
                return int(text)
            if tag.endswith(":float") and _FLOAT.match(text):
                return float(text)
            if (tag.endswith((":bool", ":null"))) and text in _WORDS:
                return _WORDS[text]
            raise _Unsupported  # a date, 0x1f, 1_000, .inf...: let PyYAML decide
    return text


def _simple_yaml(text: str) -> dict[str, Any]:
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(0, root)]  # (indent of its keys, mapping)
    open_key: tuple[int, dict[str, Any], str] | None = None  # `key:` awaiting its block
    for line in text.splitlines():
        m = _KEY_LINE.match(line)
        if m is None:  # only an item of an indentless list under the open key may follow
            stripped = line.lstrip(" ")
            if open_key is None or not stripped.startswith("- "):
                raise _Unsupported
            indent, parent, key = open_key
            items = parent.setdefault(key, [])
            if len(line) - len(stripped) != indent or not isinstance(items, list):
                raise _Unsupported
            items.append(_scalar(stripped[2:]))
            continue
        indent, key, value = len(m.group(1)), m.group(2), m.group(3)
        if key in _WORDS:
            raise _Unsupported  # `yes:` is a boolean key in YAML 1.1
        if open_key is not None:
            o_indent, parent, o_key = open_key
            open_key = None
            if o_key not in parent:  # no list started: a nested mapping must
                if indent != o_indent + 2:
                    raise _Unsupported
                child: dict[str, Any] = {}
                parent[o_key] = child
                stack.append((indent, child))
        while stack[-1][0] > indent:
            stack.pop()
        level, node = stack[-1]
        if level != indent or key in node:
            raise _Unsupported
        if value is None:
            open_key = (indent, node, key)
        else:
            node[key] = _scalar(value)
    if open_key is not None and open_key[2] not in open_key[1]:
        raise _Unsupported
    return root


def read_head(path: str | os.PathLike[str]) -> RunLock:
    """Read the listing sections of a run.lock (``env``, ``upstream``, ``error`` left out).

    Raises:
        LockError: the file is missing, is not valid YAML or does not follow the schema.
        LockVersionError: the lock comes from a newer schema.
    """
    p = Path(path)
    try:
        text = decode_lock(p.read_bytes(), p)
    except OSError as e:
        msg = f"{p}: cannot read run.lock ({e.strerror or e})"
        raise LockError(msg) from None
    # xpkit writes whole files ending in a newline: anything else may be cut short in a
    # section the head skips, so let the full parse judge it
    data = _head_dict(text) if text.endswith("\n") else None
    if data is not None:
        try:
            return RunLock.from_dict(data, source=str(p))
        except LockVersionError:
            raise
        except LockError:
            pass  # an unusual layout: the full parse below names the real problem
    full = load_lock(p)
    return full.replace(env=None, upstream=None, error=None, argv=(), extra={})
