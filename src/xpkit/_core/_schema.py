"""The shape of a run.lock, checked once where a lock is read so that every reader can trust it.

:func:`check_lock` validates a parsed run.lock mapping: the schema version, the required
keys, the kind of each top-level key, and inside the sections the keys that readers use::

    src        commit, head, branch, remote, error: strings; dirty: a boolean;
               files: paths -> blob shas; skipped: a list of paths
    data       name -> {path, hash, error: strings; files, bytes: integers}
    upstream   key or path -> a whole run.lock, checked the same way (recursively)
    env        packages: name -> version; gpu: a list of mappings; slurm: a mapping
    metrics    name -> a number
    tasks      total, done, failed, resumed, chunks, workers: integers; jobs: a list
    error      type, message, traceback: strings
    sweep      point, total: integers; values: a mapping   (entry: module, qualname, file)

Keys it does not know are free, and None stands for "unknown" everywhere below the top.
Scalars only printed (a package version, a Python version) may be any scalar: a hand-edited
``python: 3.11`` is a float, and harmless. (YAML aliases that would make the tree recursive
or huge are refused earlier, by :func:`~xpkit._core._lock.load_yaml`.)
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import LockError, LockVersionError

__all__ = ["SCHEMA_VERSION", "STATUSES", "check_lock"]

SCHEMA_VERSION = 1
STATUSES = ("running", "completed", "failed", "interrupted")


class _Bad(Exception):
    """A value of the wrong kind at a dotted key (the file is named by the caller)."""

    def __init__(self, key: str, what: str, value: Any) -> None:
        super().__init__(key)
        self.key, self.what, self.value = key, what, value


Check = Callable[[Any, str], None]
_NONE = object()


@dataclass(frozen=True)
class _Kind:
    """Values of ``kinds`` (or None); a boolean passes only where ``bool`` is named."""

    kinds: tuple[type, ...]
    what: str

    def ok(self, value: Any) -> bool:
        if value is None:
            return True
        return isinstance(value, self.kinds) and (bool in self.kinds or not isinstance(value, bool))

    def __call__(self, value: Any, key: str) -> None:
        if not self.ok(value):
            raise _Bad(key, self.what, value)


def _kind(*kinds: type, what: str) -> _Kind:
    return _Kind(kinds, what)


def _mapping(
    fields: Mapping[str, Check] | None = None,
    *,
    values: Check | None = None,
    what: str = "a mapping",
) -> Check:
    """A mapping whose known ``fields`` (else every value, with ``values``) are checked."""
    known = dict(fields or {})

    def check(value: Any, key: str) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise _Bad(key, what, value)
        if values is None:  # only the known fields: the rest (a config) is not walked
            for name, inner in known.items():
                if name in value:
                    inner(value[name], f"{key}.{name}")
            return
        if isinstance(values, _Kind) and not known:  # 200 packages: no key built per item
            bad = next((n for n, item in value.items() if not values.ok(item)), _NONE)
            if bad is not _NONE:
                raise _Bad(f"{key}.{bad}", values.what, value[bad])
            return
        for name, item in value.items():
            inner = known.get(name, values) if isinstance(name, str) else values
            inner(item, f"{key}.{name}")

    return check


def _list(items: Check, *, what: str) -> Check:
    def check(value: Any, key: str) -> None:
        if value is None:
            return
        if not isinstance(value, list) or None in value:  # an item is never unknown
            raise _Bad(key, what, value)
        for i, item in enumerate(value):
            items(item, f"{key}[{i}]")

    return check


def _timestamp(value: Any, key: str) -> None:
    if value is None or value == "":
        return
    if isinstance(value, str):
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return
    raise _Bad(key, "an ISO 8601 timestamp string", value)


_STR = _kind(str, what="a string")
_INT = _kind(int, what="an integer")
_NUMBER = _kind(int, float, what="a number")
_BOOL = _kind(bool, what="true or false")
_SCALAR = _kind(str, int, float, bool, what="a string or a number")
_STRINGS = _list(_STR, what="a list of strings")


def _duration(value: Any, key: str) -> None:
    _NUMBER(value, key)
    if value is not None and not math.isfinite(value):
        raise _Bad(key, "a finite number of seconds", value)


_SRC = _mapping(
    {
        **dict.fromkeys(("commit", "head", "branch", "remote", "error", "reason"), _STR),
        "dirty": _BOOL,
        "files": _mapping(values=_STR, what="a mapping of paths to blob shas"),
        "skipped": _STRINGS,
    }
)
_DATA = _mapping(
    values=_mapping(
        {"path": _STR, "hash": _STR, "error": _STR, "files": _INT, "bytes": _INT},
        what="a mapping (path, hash, files, bytes)",
    ),
    what="a mapping of names to data entries",
)
_ENV = _mapping(
    {
        **dict.fromkeys(("python", "executable", "platform", "host"), _SCALAR),
        "cpus": _INT,
        "packages": _mapping(values=_SCALAR, what="a mapping of package names to versions"),
        "gpu": _list(_mapping(values=_SCALAR), what="a list of mappings"),
        "slurm": _mapping(values=_SCALAR),
    }
)
_METRICS = _mapping(values=_NUMBER, what="a mapping of metric names to numbers")
_TASKS = _mapping(
    {
        **dict.fromkeys(("total", "done", "failed", "resumed", "chunks", "workers"), _INT),
        **dict.fromkeys(("backend", "mode", "key"), _STR),
        "jobs": _list(_SCALAR, what="a list of job ids"),
    }
)
_ERROR = _mapping(dict.fromkeys(("type", "message", "traceback"), _STR))

# top-level key -> its check; ``upstream`` is checked by check_lock itself (recursively)
_TOP: dict[str, Check] = {
    "started": _timestamp,
    "ended": _timestamp,
    "duration_s": _duration,
    "pid": _INT,
    "host": _STR,
    "argv": _STRINGS,
    "config": _mapping(),
    "error": _ERROR,
    "src": _SRC,
    "data": _DATA,
    "env": _ENV,
    "metrics": _METRICS,
    "tasks": _TASKS,
    "sweep": _mapping({"id": _SCALAR, "point": _INT, "total": _INT, "values": _mapping()}),
    "entry": _mapping(dict.fromkeys(("module", "qualname", "file"), _STR)),
    "rerun_of": _STR,
}


def check_lock(data: Mapping[str, Any], source: str) -> None:
    """Check a parsed run.lock mapping (and its upstream locks); ``source`` names the file.

    Raises:
        LockVersionError: the lock comes from a newer schema.
        LockError: a required key is missing, or a key has the wrong kind: the message names
            the file and the full dotted key (``env.packages``, ``upstream.prepared.src``).
    """
    try:
        _check(data, "", source)
    except _Bad as e:
        msg = f"{source}: run.lock key {e.key!r} must be {e.what}, got {_shown(e.value)}"
        raise LockError(msg) from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(data: Mapping[str, Any], prefix: str, source: str) -> None:
    _check_identity(data, prefix, source)
    for key, check in _TOP.items():
        check(data.get(key), prefix + key)
    upstream = data.get("upstream")
    if upstream is None:
        return
    if not isinstance(upstream, dict):
        raise _Bad(prefix + "upstream", "a mapping of keys to run.locks", upstream)
    for key, lock in upstream.items():
        if not isinstance(lock, dict):
            raise _Bad(f"{prefix}upstream.{key}", "a run.lock mapping", lock)
        _check(lock, f"{prefix}upstream.{key}.", source)


def _check_identity(data: Mapping[str, Any], prefix: str, source: str) -> None:
    """The schema version and the keys every lock has (``prefix``: an upstream lock's key)."""
    where = f"run.lock key {prefix[:-1]!r}" if prefix else "run.lock"
    version = data.get("xpkit")
    if not isinstance(version, int) or isinstance(version, bool):
        what = f"{where} is not a run.lock" if prefix else "not a run.lock"
        msg = f"{source}: {what} (no integer 'xpkit' schema version)"
        raise LockError(msg)
    if version > SCHEMA_VERSION:
        newer = (
            f"{where} has schema {version}, newer"
            if prefix
            else f"{where} schema {version} is newer"
        )
        msg = (
            f"{source}: {newer} than this xpkit understands ({SCHEMA_VERSION}); "
            "upgrade xpkit to read it"
        )
        raise LockVersionError(msg)
    for key in ("id", "stage", "dir", "status"):
        if not isinstance(data.get(key), str):
            msg = f"{source}: run.lock key {prefix + key!r} is missing or not a string"
            raise LockError(msg)
    if data["status"] not in STATUSES:
        msg = (
            f"{source}: run.lock key {prefix + 'status'!r} is {data['status']!r}, "
            f"not one of {', '.join(STATUSES)}"
        )
        raise LockError(msg)
