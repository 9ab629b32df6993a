"""Walking a data tree against the hash cache: every regular file, in relpath order.

A walk visits directories depth first, each directory's entries sorted by name with ``/``
after a directory's name, which yields files in the order of their POSIX relpaths without
sorting a million relpaths at the end. Each directory is opened once: its entries come
from ``os.scandir`` on its descriptor, and a file the cache knows is stat-ed relative to
it (``fstatat``), the cheapest way to learn that nothing changed. A file the cache does
not know is not stat-ed at all: reading it gives its stat.

Cached rows are decoded one directory at a time, when the walk enters it, and dropped
once compared, so memory holds the raw rows plus the walk's own lists.
"""

from __future__ import annotations

import bisect
import fnmatch
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import DataError
from ._hashcache import DirEntries, decode_row
from ._hashworker import Entry, StatChecker

__all__ = ["Found", "Globs", "Walk"]

_SHOWN_SKIPS = 5
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)

_Ancestors = frozenset[tuple[int, int]]
_Sub = tuple[str, str, _Ancestors]
_Item = tuple[str, str, str, Entry | None, _Sub | None]
"""``(sort key, directory, name, cached entry, subdirectory)``; a file's key is its relpath
and it has no subdirectory."""


@dataclass(frozen=True)
class Globs:
    """Compiled globs: ``paths`` match whole relpaths, ``names`` the last component."""

    paths: re.Pattern[str] | None
    names: re.Pattern[str] | None

    @classmethod
    def build(cls, globs: Sequence[str] | str | None) -> Globs | None:
        if globs is None:
            return None
        if isinstance(globs, str):
            globs = [globs]
        cleaned = [g.strip("/").removeprefix("./") for g in globs]
        return cls(
            _compile([g for g in cleaned if "/" in g]),
            _compile([g for g in cleaned if "/" not in g]),
        )

    def match(self, relpath: str) -> bool:
        if self.paths is not None and self.paths.match(relpath):
            return True
        return self.names is not None and self.names.match(relpath.rpartition("/")[2]) is not None


def _compile(globs: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None


@dataclass
class Found:
    """What a walk found, in relpath order.

    ``entries[i]`` is the cached entry of ``relpaths[i]`` when its size, mtime_ns and
    inode still match, else None and ``misses`` holds ``(i, directory, name)`` to read.
    ``kept`` maps each directory whose cache row must change to its still-valid entries;
    ``seen`` is every directory walked.
    """

    relpaths: list[str] = field(default_factory=list)
    entries: list[Entry | None] = field(default_factory=list)
    misses: list[tuple[int, str, str]] = field(default_factory=list)
    kept: dict[str, DirEntries] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)


class Walk:
    """The regular files below one directory, checked against cached rows."""

    def __init__(
        self,
        root: str,
        *,
        include: Globs | None,
        exclude: Globs | None,
        rows: dict[str, bytes],
        checker: StatChecker | None = None,
        log: logging.Logger,
    ) -> None:
        self.root = root
        self.checker = checker
        self._checked: dict[str, tuple[str, bytes]] = {}
        self.include = include
        self.exclude = exclude
        self.rows = rows
        self.log = log
        self.skipped: list[str] = []
        self.found = Found()

    @property
    def filtered(self) -> bool:
        """True when globs may have left files of a directory out."""
        return self.include is not None or self.exclude is not None

    def run(self) -> Found:
        """Walk the whole tree (once)."""
        try:
            self._walk()
        except BaseException:
            if self.checker is not None:
                self.checker.close()  # a DataError or Ctrl-C: no worker left behind
            raise
        if self.checker is not None:
            self._apply(self.checker.finish())
        return self.found

    def _walk(self) -> None:
        st = os.stat(self.root)
        stack: list[Iterator[_Item]] = [
            iter(self._items(self.root, "", frozenset({(st.st_dev, st.st_ino)})))
        ]
        found = self.found
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
            elif item[4] is not None:
                stack.append(iter(self._items(*item[4])))
            else:
                if item[3] is None:
                    found.misses.append((len(found.relpaths), item[1], item[2]))
                found.relpaths.append(item[0])
                found.entries.append(item[3])

    def _apply(self, changes: dict[str, list[str]]) -> None:
        """Turn the files the stat checker found changed into misses."""
        found = self.found
        relpaths = found.relpaths
        for directory, names in changes.items():
            prefix, raw = self._checked[directory]
            changed = set(names)
            for name in names:
                i = bisect.bisect_left(relpaths, prefix + name)
                if i < len(relpaths) and relpaths[i] == prefix + name:
                    found.entries[i] = None
                    found.misses.append((i, directory, name))
            valid = found.kept.get(directory)
            if valid is None:
                row = decode_row(raw) or {}
                valid = {n: e for n, e in row.items() if _listed(relpaths, prefix + n)}
            found.kept[directory] = {n: e for n, e in valid.items() if n not in changed}

    def _items(self, directory: str, prefix: str, ancestors: _Ancestors) -> list[_Item]:
        """The subdirectories of ``directory`` and its files around them, sorted as their
        relpaths sort; a directory without subdirectories adds its files at once."""
        fd = self._open(directory, prefix)
        if fd is None:
            return []
        try:
            files, subs = self._classify(fd, directory, prefix, ancestors)
        finally:
            os.close(fd)
        files.sort()
        if not subs:
            self._add(directory, files)
            return []
        items: list[_Item] = [(r, directory, n, e, None) for r, n, e in files]
        items += [(key, directory, "", None, sub) for key, sub in subs]
        items.sort()
        return items

    def _add(self, directory: str, files: list[tuple[str, str, Entry | None]]) -> None:
        """Append the sorted files of one directory to what was found."""
        found = self.found
        base = len(found.relpaths)
        found.relpaths += [f[0] for f in files]
        found.entries += [f[2] for f in files]
        if None in found.entries[base:]:
            found.misses += [(base + k, directory, f[1]) for k, f in enumerate(files) if not f[2]]

    def _open(self, directory: str, prefix: str) -> int | None:
        try:
            return os.open(directory, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            self.skip(prefix.rstrip("/"), "vanished")
        except OSError as e:
            msg = f"cannot read data directory {directory}: {e.strerror or e}"
            raise DataError(msg) from None
        return None

    def _classify(
        self, fd: int, directory: str, prefix: str, ancestors: _Ancestors
    ) -> tuple[list[tuple[str, str, Entry | None]], list[tuple[str, _Sub]]]:
        """One pass over the entries of an open directory, comparing files with the cache:
        ``(relpath, name, cached entry or None)`` of each file, and the subdirectories."""
        raw = self.rows.pop(directory, None)
        cached = (decode_row(raw) or {}) if raw is not None else {}
        self.found.seen.add(directory)
        files: list[tuple[str, str, Entry | None]] = []
        subs: list[tuple[str, _Sub]] = []
        keep: Callable[[str], bool] | None = self._keeps if self.filtered else None
        misses = 0
        deferred: list[str] | None = [] if self.checker is not None and cached else None
        for entry in self._scan(fd, directory):
            name = entry.name
            relpath = prefix + name
            try:
                if entry.is_file():
                    if keep is not None and not keep(relpath):
                        continue
                    known = cached.get(name)
                    if known is not None and deferred is not None:
                        deferred.append(name)  # the checker says later if it changed
                        files.append((relpath, name, known))
                        continue
                    if known is not None:
                        st = entry.stat()
                        if (
                            st.st_ino == known[2]
                            and st.st_mtime_ns == known[1]
                            and st.st_size == known[0]
                        ):
                            files.append((relpath, name, known))
                            continue
                    misses += 1
                    files.append((relpath, name, None))
                elif entry.is_dir():
                    sub = self._subdir(entry, directory, relpath, ancestors)
                    if sub is not None:
                        subs.append((relpath + "/", sub))
                else:
                    reason = "broken symlink" if entry.is_symlink() else "not a regular file"
                    self.skip(relpath, reason)
            except FileNotFoundError:
                self.skip(relpath, "vanished")
        if misses or len(files) != len(cached):
            self.found.kept[directory] = {name: e for _, name, e in files if e is not None}
        if deferred and self.checker is not None and raw is not None:
            self.checker.check(directory, deferred, raw)
            self._checked[directory] = (prefix, raw)
        return files, subs

    @staticmethod
    def _scan(fd: int, directory: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(fd) as it:
                return list(it)
        except OSError as e:
            msg = f"cannot read data directory {directory}: {e.strerror or e}"
            raise DataError(msg) from None

    def _subdir(
        self, entry: os.DirEntry[str], directory: str, relpath: str, ancestors: _Ancestors
    ) -> _Sub | None:
        """A subdirectory to walk, unless excluded or a link back to an ancestor."""
        if self.exclude is not None and self.exclude.match(relpath):
            return None
        st = entry.stat()
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            self.skip(relpath, "symlink loop")
            return None
        return os.path.join(directory, entry.name), relpath + "/", ancestors | {key}

    def _keeps(self, relpath: str) -> bool:
        if self.include is not None and not self.include.match(relpath):
            return False
        return self.exclude is None or not self.exclude.match(relpath)

    def skip(self, relpath: str, reason: str) -> None:
        """Leave ``relpath`` out of the hash, for ``reason``."""
        self.skipped.append(f"{relpath} ({reason})")

    def warn_skipped(self) -> None:
        """One warning listing the first few skipped paths."""
        if self.skipped:
            shown = ", ".join(self.skipped[:_SHOWN_SKIPS])
            more = len(self.skipped) - _SHOWN_SKIPS
            tail = f" and {more} more" if more > 0 else ""
            self.log.warning("hashing %s: skipped %s%s", self.root, shown, tail)


def _listed(relpaths: list[str], relpath: str) -> bool:
    """True when the sorted ``relpaths`` hold ``relpath``."""
    i = bisect.bisect_left(relpaths, relpath)
    return i < len(relpaths) and relpaths[i] == relpath
