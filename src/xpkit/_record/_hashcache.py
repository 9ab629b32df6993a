"""The persistent hash cache: a file's (path, size, mtime_ns, inode) -> xxh3_128 digest.

One SQLite file, shared by every process of the user. A row holds one directory: its
absolute path and a ``marshal``-ed dict ``name -> (size, mtime_ns, inode, digest)``.
Grouping by directory makes loading or rewriting the entries of 100,000 files take
~0.05 s instead of ~0.13 s / ~0.25 s with one row per file, and lets a walk load just the
rows below the directory it hashes (a range scan on the primary key).

The cache is an optimisation and never fatal: a locked database is retried and then
skipped, a corrupt one is moved aside (``<name>.corrupt``) and rebuilt, each with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ._hashworker import Entry

if TYPE_CHECKING:
    import sqlite3

__all__ = ["DirEntries", "Entry", "HashCache", "decode_row", "default_cache_path"]

DirEntries = dict[str, Entry]
"""File name -> entry, for the files of one directory."""

_SCHEMA_VERSION = 1
_TIMEOUT_S = 10.0
_WRITE_ATTEMPTS = 3


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/xpkit/hash-cache.sqlite`` (``~/.cache/xpkit/...`` by default).

    The keys are absolute paths on this machine, so the cache belongs to the user and the
    machine rather than to one project: every project reading the same data shares it, and
    ``xp hash`` run outside a project leaves no stray ``results/`` behind.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xpkit" / "hash-cache.sqlite"


class HashCache:
    """An open hash cache; use as a context manager around one walk.

    Example::

        with HashCache(path, log=log) as cache:
            known = cache.load("/data/raw")
            ...
            cache.store({"/data/raw/a": {"x.bin": (3, 1700000000000000000, 42, digest)}})
    """

    def __init__(self, path: Path, *, log: logging.Logger) -> None:
        self.path = path
        self._log = log
        self._con: sqlite3.Connection | None = None
        self._broken = False

    def __enter__(self) -> HashCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def load(self, path: str, *, subtree: bool = True) -> dict[str, DirEntries]:
        """Return the cached directories ``path`` and, when ``subtree``, all below it."""
        rows = self.load_rows(path, subtree=subtree)
        return {p: d for p, blob in rows.items() if (d := decode_row(blob)) is not None}

    def load_rows(self, path: str, *, subtree: bool = True) -> dict[str, bytes]:
        """Like :meth:`load`, each directory's entries still encoded (see :func:`decode_row`):
        a walk decodes a row when it enters the directory, and drops it after."""
        import sqlite3

        try:
            con = self._connect()
            if con is None:
                return {}
            lo, hi = _prefix_range(path)
            sql = "SELECT path, entries FROM dirs WHERE path = ?"
            args: tuple[bytes, ...] = (os.fsencode(path),)
            if subtree:
                sql += " OR (path >= ? AND path < ?)"
                args += (lo, hi)
            rows = con.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            self._fail("read", e)
            return {}
        return {os.fsdecode(p): blob for p, blob in rows}

    def store(
        self, dirs: dict[str, DirEntries], *, deletes: Iterable[str] = (), merge: bool = False
    ) -> None:
        """Write ``dirs`` and delete the rows of ``deletes``, in one transaction.

        With ``merge`` the entries are added to what is stored for each directory (a
        filtered walk saw only some of its files); otherwise they replace it.
        """
        import sqlite3

        deletes = list(deletes)
        if not dirs and not deletes:
            return
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                con = self._connect()
                if con is not None:
                    _write(con, dirs, deletes, merge=merge)
                return
            except sqlite3.OperationalError as e:
                if attempt + 1 < _WRITE_ATTEMPTS and ("locked" in str(e) or "busy" in str(e)):
                    time.sleep(0.05 * 2**attempt)
                    continue
                self._fail("write", e)
                return
            except sqlite3.Error as e:
                self._fail("write", e)  # corrupt: moved aside, the next attempt rebuilds it

    def _connect(self) -> sqlite3.Connection | None:
        """Open the database once, creating it (or rebuilding it when corrupt)."""
        import sqlite3

        for _ in range(2):
            if self._con is not None or self._broken:
                return self._con
            try:
                self._con = _open(self.path)
            except sqlite3.Error as e:
                self._fail("open", e)
        self._broken = self._con is None
        return self._con

    def _fail(self, what: str, e: Exception) -> None:
        """Move a corrupt database aside (rebuilt on next use); else go on without the cache."""
        import sqlite3

        self.close()
        if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError):
            self._log.warning("hash cache %s is corrupt (%s); rebuilding it", self.path, e)
            _move_aside(self.path)
        else:
            self._broken = True
            self._log.warning(
                "hash cache %s: cannot %s (%s); going on without it", self.path, what, e
            )


def _open(path: Path) -> sqlite3.Connection:
    """Connect in WAL mode and make sure the schema exists."""
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=_TIMEOUT_S, isolation_level=None)
    try:
        if con.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            con.execute("PRAGMA journal_mode=DELETE")
        con.execute("PRAGMA synchronous=NORMAL")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            con.execute("DROP TABLE IF EXISTS dirs")
        con.execute(
            "CREATE TABLE IF NOT EXISTS dirs (path BLOB PRIMARY KEY, entries BLOB NOT NULL)"
            " WITHOUT ROWID"
        )
        con.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
    except BaseException:
        con.close()
        raise
    return con


def _write(
    con: sqlite3.Connection, dirs: dict[str, DirEntries], deletes: list[str], *, merge: bool
) -> None:
    """Apply one store in a single ``BEGIN IMMEDIATE`` transaction."""
    con.execute("BEGIN IMMEDIATE")
    try:
        if deletes:
            con.executemany("DELETE FROM dirs WHERE path = ?", [(os.fsencode(d),) for d in deletes])
        rows = []
        for d, entries in dirs.items():
            key = os.fsencode(d)
            if merge:
                old = con.execute("SELECT entries FROM dirs WHERE path = ?", (key,)).fetchone()
                entries = {**(decode_row(old[0]) or {}), **entries} if old else entries
            rows.append((key, marshal.dumps(entries)))
        con.executemany("INSERT OR REPLACE INTO dirs (path, entries) VALUES (?, ?)", rows)
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def decode_row(blob: bytes) -> DirEntries | None:
    """Decode one row of :meth:`HashCache.load_rows`; None when it is not what this module
    writes."""
    try:
        value = marshal.loads(blob)
    except (EOFError, ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _prefix_range(path: str) -> tuple[bytes, bytes]:
    """Bounds ``[lo, hi)`` of the encoded paths strictly below directory ``path``."""
    lo = os.fsencode(path.rstrip(os.sep) + os.sep)
    return lo, lo[:-1] + bytes([lo[-1] + 1])


def _move_aside(path: Path) -> None:
    """Rename a corrupt database to ``<name>.corrupt`` and drop its WAL files."""
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):  # another process moved it first
        os.replace(path, f"{path}.corrupt")
