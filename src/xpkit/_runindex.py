"""Reading many run.lock files fast: only the sections a listing needs, with a stat cache.

A run.lock is mostly ``env.packages`` and the recursive ``upstream`` locks; a listing needs
neither. :func:`read_head` parses only the top-level sections named in :data:`HEAD_KEYS`
(cut out of the text by their column-0 key lines, as written by :func:`~xpkit._lock.dump_yaml`),
falling back to the full parse whenever the cut text does not validate, so a hand-written lock
is read correctly, just slower.

:class:`RunIndex` remembers each head in a JSON file keyed by the lock's (mtime_ns, size,
inode): a listing of unchanged runs reads no YAML at all.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from ._lock import RunLock, load_lock
from ._paths import atomic_write_text
from .errors import LockError, LockVersionError

__all__ = ["HEAD_KEYS", "RunIndex", "read_head"]

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
    }
)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INDEX_VERSION = 1


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
    try:
        data = yaml.load(_cut(text), Loader=_Loader)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) and "xpkit" in data else None


def read_head(path: str | os.PathLike[str]) -> RunLock:
    """Read the listing sections of a run.lock (``env``, ``upstream``, ``error`` left out).

    Raises:
        LockError: the file is missing, is not valid YAML or does not follow the schema.
        LockVersionError: the lock comes from a newer schema.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        msg = f"{p}: cannot read run.lock ({getattr(e, 'strerror', None) or e})"
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


class RunIndex:
    """Run.lock heads cached by (mtime_ns, size, inode) in one JSON file.

    ``path=None`` keeps the cache in memory only. A cache that cannot be read or written is
    silently ignored: it only ever saves time.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, list[Any]] = self._load()
        self._dirty = False

    def _load(self) -> dict[str, list[Any]]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != _INDEX_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def head(self, lock_path: str) -> RunLock:
        """The head of the run.lock at ``lock_path``, from the cache when unchanged.

        Raises:
            LockError: as :func:`read_head` (a cached failure is raised again).
        """
        try:
            st = os.stat(lock_path)
        except OSError as e:
            msg = f"{lock_path}: cannot read run.lock ({e.strerror})"
            raise LockError(msg) from None
        stamp = [st.st_mtime_ns, st.st_size, st.st_ino]
        entry = self._entries.get(lock_path)
        if entry is not None and entry[:3] == stamp:
            return _from_entry(entry[3], lock_path)
        try:
            lock = read_head(lock_path)
        except LockVersionError as e:
            self._store(lock_path, stamp, {"version_error": str(e)})
            raise
        except LockError as e:
            self._store(lock_path, stamp, {"error": str(e)})
            raise
        self._store(lock_path, stamp, {"lock": lock.to_dict()})
        return lock

    def _store(self, key: str, stamp: list[int], value: dict[str, Any]) -> None:
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError):
            return  # a value JSON cannot hold (a YAML date): parse again next time
        self._entries[key] = [*stamp, value]
        self._dirty = True

    def save(self) -> None:
        """Write the cache back when something changed (atomically; failures ignored)."""
        if self.path is None or not self._dirty:
            return
        self._entries = {k: v for k, v in self._entries.items() if os.path.exists(k)}
        text = json.dumps({"version": _INDEX_VERSION, "entries": self._entries})
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, text)
        self._dirty = False


def _from_entry(value: dict[str, Any], source: str) -> RunLock:
    if "lock" in value:
        return RunLock.from_dict(value["lock"], source=source)
    if "version_error" in value:
        raise LockVersionError(value["version_error"])
    raise LockError(value.get("error", f"{source}: invalid run.lock"))
