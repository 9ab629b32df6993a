"""The head cache of listings: every run.lock head read once, kept as columns in one file.

Reading a head (:func:`~._head.read_head`) costs ~100 us; 100,000 of them take seconds. The
index keeps, for each run.lock it read, its stamp (mtime_ns, size, inode), its flat record
as a row of a :class:`~._table.HeadTable` and its whole head, marshalled. A listing of
unchanged runs stats each run.lock and loads the table in one ``marshal.loads``: no YAML,
no object per run; a head is read back from the file only when a ``Run`` asks for it.

The file: 16 bytes of magic and version, the length of the table section (8 bytes, little
endian), the table section (one marshal: the runs and stamps of its rows, head offsets, the
table's plain and coded columns, the locks that could not be read and why), mapped and
loaded in place, then the heads one after another. The runs and stamps are kept as the
bytes of :meth:`Found.key` (a marshal of version 0, which writes equal values as equal
bytes): a listing of the same unchanged runs makes the same bytes, and one comparison
stands for 100,000 (decoding them takes longer). It is replaced atomically; an index keeps
the file it loaded open, so its heads stay those of its table.

A head read from a lock modified in the last two seconds is used but not cached: another
write within the same mtime tick could keep its stamp (git's "racily clean" problem).
"""

from __future__ import annotations

import contextlib
import dataclasses
import marshal
import mmap
import os
import struct
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .._core._lock import RunLock
from .._core._paths import LOCK, atomic_write_bytes
from ..errors import LockError, LockVersionError
from ._head import read_head
from ._table import Coded, HeadTable, data_hashes, head_record

__all__ = ["Found", "RunIndex", "Stamp", "lock_stamp"]

Stamp = tuple[int, int, int]  # (st_mtime_ns, st_size, st_ino) of a run.lock

_MAGIC = b"xpkit runindex11"  # the last 1-2 characters are the version
_HEADER = struct.Struct("<16sQ")
# A lock modified this recently may be rewritten within the same mtime tick (the "racily
# clean" problem of git): its head is used but not cached.
_RACY_NS = 2_000_000_000
_FEW_UNSEEN = 1000  # runs of the file a listing did not find, checked for removal
_LOCK_FIELDS = frozenset(f.name for f in dataclasses.fields(RunLock)) - {"extra"}
_SECTION_KEYS = ("found", "at", "columns", "coded", "shapes", "shape", "data", "errors")


def lock_stamp(st: os.stat_result) -> Stamp:
    """What says a run.lock is unchanged: (mtime_ns, size, inode)."""
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclasses.dataclass
class Found:
    """Runs found, grouped by the directory that holds them: ``groups`` of (that directory,
    the names of its runs, their run.lock stamps), in the order found; two groups in a row
    are never of the same directory. A run's directory is ``<dir>/<name>``, its lock
    ``<dir>/<name>/run.lock``: 100,000 runs of one stage are one path, 100,000 names and
    stamps, and a path per run is built only when asked for.
    """

    groups: list[tuple[str, list[str], list[Stamp]]] = dataclasses.field(default_factory=list)

    def add(self, parent: str, names: list[str], stamps: list[Stamp]) -> None:
        """Runs ``names`` of the directory ``parent`` (after those already found); the lists
        become the collection's."""
        if not names:
            return
        if self.groups and self.groups[-1][0] == parent:
            self.groups[-1][1].extend(names)
            self.groups[-1][2].extend(stamps)
        else:
            self.groups.append((parent, names, stamps))

    def add_dir(self, run_dir: str, stamp: Stamp) -> None:
        """One run, by its directory."""
        parent, name = os.path.split(run_dir.rstrip(os.sep) or run_dir)
        self.add(parent, [name], [stamp])

    def __len__(self) -> int:
        return sum(len(names) for _, names, _ in self.groups)

    def runs(self) -> Iterator[tuple[str, str, Stamp]]:
        """(directory, name, stamp) of each run."""
        for parent, names, stamps in self.groups:
            for name, stamp in zip(names, stamps, strict=True):
                yield parent, name, stamp

    def dirs(self) -> list[str]:
        """The run directories."""
        return [f + n for f, names in self._prefixes() for n in names]

    def locks(self) -> list[str]:
        """The runs' run.lock files."""
        lock = os.sep + LOCK
        return [f + n + lock for f, names in self._prefixes() for n in names]

    def stamps(self) -> list[Stamp]:
        return [s for _, _, stamps in self.groups for s in stamps]

    def key(self) -> bytes:
        """The runs and stamps as bytes, the same bytes for the same runs and stamps (no
        name holds a NUL)."""
        return marshal.dumps([(d, "\0".join(n), s) for d, n, s in self.groups], 0)

    @classmethod
    def of_key(cls, key: bytes) -> Found:
        """The runs of :meth:`key`'s bytes.

        Raises:
            ValueError: the bytes are not such a key.
        """
        try:
            groups = marshal.loads(key)
        except (EOFError, TypeError) as e:
            raise ValueError(str(e)) from None
        if type(groups) is not list or not all(
            type(g) is tuple and len(g) == 3 and type(g[0]) is str and type(g[1]) is str
            for g in groups
        ):
            msg = "not the runs of an index"
            raise ValueError(msg)
        found = cls([(d, names.split("\0"), stamps) for d, names, stamps in groups])
        if not all(type(s) is list and len(n) == len(s) for _, n, s in found.groups):
            msg = "not the runs of an index"
            raise ValueError(msg)
        return found

    @classmethod
    def of_locks(cls, locks: Sequence[str], stamps: Sequence[Stamp]) -> Found:
        """The runs of these run.lock files."""
        found = cls()
        cut = len(os.sep + LOCK)
        for lock, stamp in zip(locks, stamps, strict=True):
            found.add_dir(lock[:-cut], stamp)
        return found

    def _prefixes(self) -> Iterator[tuple[str, list[str]]]:
        for parent, names, _ in self.groups:
            yield (parent if parent.endswith(os.sep) else parent + os.sep), names


class RunIndex:
    """Run.lock heads, cached by stamp in one file (``path=None``: in memory only).

    A cache that cannot be read or written is ignored: it only ever saves time.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.table = HeadTable()
        self._found = Found().key()  # the file's rows' locks and stamps, undecoded
        self._locks: list[str] = []  # per row (once decoded)
        self._stamps: list[Stamp] = []  # per row (once decoded)
        self._decoded = True
        self._keep: list[bool] = []  # per row: may be written to the file
        self._heads: dict[int, dict[str, Any]] = {}  # heads read in this process, by row
        self._errors: dict[str, tuple[Stamp, bool, str]] = {}  # lock -> stamp, newer?, message
        self._by_lock: dict[str, int] | None = None  # lock -> its current row
        self._seen: dict[int, None] = {}  # rows looked up, in order
        self._file = _HeadFile(None, 0, [])
        self._loaded = 0  # rows that came from the file
        self._dirty = False
        self._load()

    # -- reading ----------------------------------------------------------------------

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
        try:
            loaded = _read_section(fd)
        except (OSError, EOFError, ValueError, TypeError, struct.error):
            loaded = None
        if loaded is None:
            os.close(fd)
            return
        section, base, coded = loaded
        self._file = _HeadFile(fd, base, section["at"])
        weakref.finalize(self, os.close, fd)
        self.table = HeadTable(
            columns=section["columns"],
            shapes=section["shapes"],
            shape=section["shape"],
            data=section["data"],
            coded=coded,
        )
        self._found = section["found"]
        self._decoded = False
        self._loaded = len(section["shape"])
        self._keep = [True] * self._loaded
        self._errors = section["errors"]

    def _decode(self) -> None:
        """The locks and stamps of the file's rows, decoded (a file whose rows do not decode
        is forgotten)."""
        if self._decoded:
            return
        self._decoded = True
        try:
            found = Found.of_key(self._found)
            locks, stamps = found.locks(), found.stamps()
        except ValueError:
            locks, stamps = [], []
        if len(locks) != self._loaded:
            self.table, self._loaded, self._keep = HeadTable(), 0, []
            locks, stamps = [], []
        self._locks, self._stamps = locks, stamps

    def lookup(self, found: Found) -> tuple[list[int], list[str]]:
        """The row of the head of each run found (read when changed; -1 for a lock that
        could not be read), and one message per such lock."""
        if not self._decoded and len(found) == self._loaded and found.key() == self._found:
            self._unchanged = True  # the same runs, unchanged, in the same order
            rows = list(range(self._loaded))
            self._seen.update(dict.fromkeys(rows))
            return rows, []
        locks, stamps = found.locks(), found.stamps()
        by_lock = self._lock_rows()
        rows, skipped = [], []
        for lock, stamp in zip(locks, stamps, strict=True):
            row = by_lock.get(lock)
            if row is None or self._stamps[row] != stamp:
                try:
                    row = self._read(lock, stamp)
                except LockError as e:
                    skipped.append(str(e))
                    row = -1
            rows.append(row)
        self._seen.update(dict.fromkeys(r for r in rows if r >= 0))
        return rows, skipped

    _unchanged = False  # a lookup found the file's runs as they are

    def head(self, lock_path: str) -> RunLock:
        """The head of the run.lock at ``lock_path``, from the cache when unchanged.

        Raises:
            LockError: as :func:`read_head` (a cached failure is raised again).
        """
        try:
            stamp = lock_stamp(os.stat(lock_path))
        except OSError as e:
            msg = f"{lock_path}: cannot read run.lock ({e.strerror})"
            raise LockError(msg) from None
        row = self._lock_rows().get(lock_path)
        if row is None or self._stamps[row] != stamp:
            row = self._read(lock_path, stamp)
        self._seen[row] = None
        head = self.head_of(row)
        return head if head is not None else read_head(lock_path)

    def head_of(self, row: int) -> RunLock | None:
        """The head of a row (None when the file no longer holds it: read the lock)."""
        data = self._heads.get(row)
        if data is None:
            data = self._file.head(row)
        if data is None or row >= len(self.table) or data.get("id") != self.table.value("id", row):
            return None
        return _trusted(data)

    def _lock_rows(self) -> dict[str, int]:
        self._decode()
        if self._by_lock is None:
            self._by_lock = dict(zip(self._locks, range(len(self._locks)), strict=True))
        return self._by_lock

    def _read(self, lock: str, stamp: Stamp) -> int:
        """Read a head into a new row; a failure is remembered (for its stamp) and raised."""
        self._decode()
        now = time.time_ns()  # before reading: a write after the read has a later mtime
        racy = now - stamp[0] < _RACY_NS
        cached = self._errors.get(lock)
        if cached is not None and cached[0] == stamp and not racy:
            raise (LockVersionError if cached[1] else LockError)(cached[2])
        try:
            head = read_head(lock)
        except LockError as e:
            if not racy:
                self._errors[lock] = (stamp, isinstance(e, LockVersionError), str(e))
                self._dirty = True
            raise
        self._errors.pop(lock, None)
        data = _interned(head.to_dict())
        record = head_record(head)
        row = self.table.append(record, data_hashes(head))
        self._locks.append(lock)
        self._stamps.append(stamp)
        self._heads[row] = data
        self._keep.append(not racy and _storable((data, record)))
        by_lock = self._lock_rows()
        if racy:
            by_lock.pop(lock, None)  # read it again next time
        else:
            by_lock[lock] = row
            self._dirty = self._dirty or self._keep[row]
        return row

    # -- writing ----------------------------------------------------------------------

    def save(self) -> None:
        """Write the cache back when something changed (atomically; failures ignored)."""
        if self.path is None:
            return
        rows = self._rows_to_keep()
        if rows is None:
            return
        with contextlib.suppress(OSError):
            data = self._encode(rows)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, data)
        self._dirty = False

    def _rows_to_keep(self) -> list[int] | None:
        """The rows to write, those looked up first; None when the file holds them already."""
        if not self._dirty and (self._unchanged or not self._seen):
            return None
        current = self._lock_rows()
        seen = [r for r in self._seen if self._keep[r] and current.get(self._locks[r]) == r]
        unseen = [r for r in current.values() if r not in self._seen and self._keep[r]]
        if self._dirty:
            return seen + [r for r in unseen if os.path.exists(self._locks[r])]
        if unseen:
            # runs not listed: of other directories (kept), or removed (dropped, so that the
            # next listing of the same runs is one comparison again); checked when few
            if len(unseen) > max(_FEW_UNSEEN, self._loaded // 10):
                return None
            kept = [r for r in unseen if os.path.exists(self._locks[r])]
            return None if len(kept) == len(unseen) else seen + kept
        # all the file's runs listed, but in another order: write them in this one
        if seen == list(range(self._loaded)) or len(seen) != self._loaded:
            return None
        return seen

    def _encode(self, rows: list[int]) -> bytes:
        table = self.table.subset(rows)
        blobs = [self._blob(r) for r in rows]
        at = [0]
        for blob in blobs:
            at.append(at[-1] + len(blob))
        errors = {k: v for k, v in self._errors.items() if os.path.exists(k)}
        section = marshal.dumps(
            {
                "found": Found.of_locks(
                    [self._locks[r] for r in rows], [self._stamps[r] for r in rows]
                ).key(),
                "at": at,
                "columns": table.columns,
                "coded": {k: v.stored() for k, v in table.coded.items()},
                "shapes": table.shapes,
                "shape": table.shape,
                "data": table.data,
                "errors": errors,
            }
        )
        return b"".join([_HEADER.pack(_MAGIC, len(section)), section, *blobs])

    def _blob(self, row: int) -> bytes:
        data = self._heads.get(row)
        if data is not None:
            return marshal.dumps(data)
        return self._file.blob(row)


class _HeadFile:
    """The heads section of the file an index loaded, read a head at a time."""

    def __init__(self, fd: int | None, base: int, at: list[int]) -> None:
        self.fd = fd
        self.base = base
        self.at = at
        self._all: bytes | None = None

    def blob(self, row: int) -> bytes:
        """The marshalled head of a row (b"" when the file no longer has it)."""
        if self.fd is None:
            return b""
        if self._all is None:  # saving: every head, in one read
            with contextlib.suppress(OSError):
                self._all = os.pread(self.fd, self.at[-1], self.base)
        if self._all is not None:
            return self._all[self.at[row] : self.at[row + 1]]
        return b""

    def head(self, row: int) -> dict[str, Any] | None:
        if self.fd is None or row + 1 >= len(self.at):
            return None
        start, end = self.at[row], self.at[row + 1]
        try:
            if self._all is not None:
                data = marshal.loads(self._all[start:end])
            else:
                data = marshal.loads(os.pread(self.fd, end - start, self.base + start))
        except (OSError, EOFError, ValueError, TypeError):
            return None
        return data if isinstance(data, dict) else None


def _read_section(fd: int) -> tuple[dict[str, Any], int, dict[str, Coded]] | None:
    """The table section of an index file, where its heads start and its coded columns;
    None when foreign."""
    magic, size = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
    if magic != _MAGIC or _HEADER.size + size > os.fstat(fd).st_size:
        return None
    try:  # mapped, not read: marshal reads it in place (28 MB for 100,000 runs)
        with (
            mmap.mmap(fd, _HEADER.size + size, access=mmap.ACCESS_READ) as mapped,
            memoryview(mapped)[_HEADER.size :] as view,
        ):
            section = marshal.loads(view)
    except (OSError, ValueError, BufferError):  # a file that cannot be mapped: read it
        raw = os.pread(fd, size, _HEADER.size)
        if len(raw) != size:
            return None
        section = marshal.loads(raw)
    if not _valid(section):
        return None
    coded: dict[str, Coded] = {}
    for key, stored in section["coded"].items():
        column = Coded.loaded(stored, len(section["shape"]))
        if column is None or key in section["columns"]:
            return None
        coded[key] = column
    return section, _HEADER.size + size, coded


def _valid(section: Any) -> bool:
    """Whether a loaded table section has the shape this index writes (values unchecked)."""
    if not isinstance(section, dict) or sorted(section) != sorted(_SECTION_KEYS):
        return False
    lists = ("at", "shape", "data", "shapes")
    if not all(type(section[k]) is list for k in lists):
        return False
    if any(type(section[k]) is not dict for k in ("columns", "coded", "errors")):
        return False
    if type(section["found"]) is not bytes:
        return False
    n = len(section["shape"])
    if len(section["data"]) != n or len(section["at"]) != n + 1:
        return False
    if any(type(v) is not list or len(v) != n for v in section["columns"].values()):
        return False
    shapes = section["shapes"]
    keys = section["columns"].keys() | section["coded"].keys()
    if not all(type(s) is tuple and set(s) <= keys for s in shapes):
        return False
    shape, at = section["shape"], section["at"]
    if shape and not (
        set(map(type, shape)) == {int} and 0 <= min(shape) <= max(shape) < len(shapes)
    ):
        return False
    if set(map(type, at)) != {int} or at[0] != 0 or sorted(at) != at:
        return False
    errors = section["errors"].values()
    return all(type(e) is tuple and len(e) == 3 for e in errors)


def _interned(value: Any) -> Any:
    """``value`` with its mapping keys interned: marshal writes an interned string once and
    refers to it after. Values are left alone: an interned id or commit in the table would
    be interned again by every load (100,000 of them: 30 ms)."""
    if isinstance(value, dict):
        return {(sys.intern(k) if type(k) is str else k): _interned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned(v) for v in value]
    return value


def _storable(value: Any) -> bool:
    """Whether marshal can write ``value`` (a YAML date cannot be cached)."""
    try:
        marshal.dumps(value)
    except ValueError:
        return False
    return True


def _trusted(data: Any) -> RunLock | None:
    """A lock from a head this index validated when it stored it (no second check)."""
    try:
        known = {k: v for k, v in data.items() if k in _LOCK_FIELDS}
        known["argv"] = tuple(known.get("argv") or ())
        known["config"] = known.get("config") or {}
        extra = {k: v for k, v in data.items() if k not in _LOCK_FIELDS}
        return RunLock(**known, extra=extra)
    except (AttributeError, TypeError):
        return None  # not what this index writes: read the lock again
