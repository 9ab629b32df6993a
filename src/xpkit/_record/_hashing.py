"""Data hashing: xxh3-128 of files and directory trees, cached and parallel.

The format is fixed by the design (section 4): a file's hash is ``xxh3_128`` of its bytes;
a directory's is ``xxh3_128`` of the UTF-8 lines ``f"{relpath}\\t{file_hexdigest}\\n"``, one
per regular file below it, sorted by POSIX relpath (empty directories do not count), and
both are written ``"xxh3_128:<32 hex>"``.

How a walk goes: ``os.scandir`` lists the tree (no stat per file); a file with an entry in
the persistent cache (``_hashcache``) is stat-ed and reused when its size, mtime_ns and
inode match; every other file is read, in this process when there are few, else by
``jobs`` worker processes (``_hashworker``), because per-file Python overhead holds the GIL
and threads make many small files slower. Big files are streamed in 4 MiB reads.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from .._core._settings import Settings, load_settings
from ..errors import DataError
from . import _hashworker
from ._hashcache import DirEntries, HashCache, default_cache_path
from ._hashworker import Entry

__all__ = ["HashRecord", "Progress", "hash_path"]

PREFIX = "xxh3_128:"

Progress = Callable[[int, int], None]
"""``progress(done_files, total_files)``, called from a background thread now and then."""

_log = logging.getLogger("xpkit.hashing")
# A file modified this recently may change again within the same mtime tick (the "racily
# clean" problem of git): its digest is used but not cached.
_RACY_NS = 2_000_000_000
_VANISHED = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)
_SHOWN_SKIPS = 5

_File = tuple[str, str, str, str]
"""``(relpath, directory, name, path)`` of one regular file found by a walk."""


@dataclass(frozen=True)
class HashRecord:
    """The hash of one file or directory tree.

    ``manifest`` maps each file's POSIX relpath to its ``"xxh3_128:<hex>"`` for a
    directory (None for a file); ``cached_files`` counts files whose digest came from the
    cache without reading them; ``skipped`` lists ``"relpath (reason)"`` of what was left out.
    """

    path: str
    hash: str
    files: int
    bytes: int
    manifest: dict[str, str] | None = field(default=None, repr=False, compare=False)
    cached_files: int = field(default=0, compare=False)
    skipped: tuple[str, ...] = field(default=(), compare=False)

    def to_lock(self) -> dict[str, Any]:
        """The run.lock entry: ``path``, ``hash``, ``files``, ``bytes``."""
        return {"path": self.path, "hash": self.hash, "files": self.files, "bytes": self.bytes}


def hash_path(
    path: str | os.PathLike[str],
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    cache: bool | str | os.PathLike[str] = True,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> HashRecord:
    """Hash a file or a directory tree with xxh3-128, reading only what changed.

    Args:
        path: a file or a directory.
        include: globs; when given, only files whose relpath matches one are hashed.
        exclude: globs; files and directories whose relpath matches one are left out.
            A glob without ``/`` matches the last component at any depth (``*.tmp``,
            ``__pycache__``); one with ``/`` matches the whole relpath, with ``*``
            crossing ``/`` as in :mod:`fnmatch` (``logs/*``).
        cache: True for the cache of the settings (``[tool.xpkit] hash_cache``, by default
            ``~/.cache/xpkit/hash-cache.sqlite``), False for none, or a cache file.
        jobs: worker processes for many files (default: ``hash_jobs``, else the usable CPUs).
        progress: called with ``(done_files, total_files)`` while files are read.

    Symbolic links are followed: a link to a file counts as a regular file with the
    target's content under the link's relpath, a link to a directory is walked; a link
    back to one of its own ancestors (a loop) and a broken link are skipped with a warning.
    FIFOs, sockets and devices are skipped with a warning. A file or directory that
    vanishes during the walk is skipped with a warning (the hash describes what was there).

    Raises:
        DataError: ``path`` does not exist or is not a file or directory, or a file or
            directory below it cannot be read (the message names it).

    Example:
        >>> hash_path("data/raw").to_lock()  # doctest: +SKIP
        {'path': 'data/raw', 'hash': 'xxh3_128:9f0c...', 'files': 1204, 'bytes': 73400320}
    """
    settings = load_settings() if cache is True or jobs is None else None
    return hash_one(
        path,
        include=include,
        exclude=exclude,
        cache_path=_cache_path(cache, settings),
        jobs=_jobs(jobs, settings),
        progress=progress,
        log=_log,
    )


def hash_one(
    path: str | os.PathLike[str],
    *,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    cache_path: Path | None,
    jobs: int,
    progress: Progress | None,
    log: logging.Logger,
) -> HashRecord:
    """:func:`hash_path` with every option resolved and warnings sent to ``log``."""
    shown = os.fspath(path)
    full = os.path.abspath(shown)
    try:
        mode = os.stat(full).st_mode
    except FileNotFoundError:
        msg = f"data path does not exist: {shown}"
        raise DataError(msg) from None
    except OSError as e:
        msg = f"cannot read data path {shown}: {e.strerror}"
        raise DataError(msg) from None
    with _open_cache(cache_path, log) as cache:
        if stat.S_ISREG(mode):
            return _hash_file(shown, full, cache, log)
        if stat.S_ISDIR(mode):
            walk = _Walk(full, _Globs.build(include), _Globs.build(exclude), log)
            return _hash_tree(shown, walk, cache, jobs=jobs, progress=progress)
    msg = f"data path is not a regular file or directory: {shown}"
    raise DataError(msg)


def cache_path_of(settings: Settings) -> Path:
    """The hash cache file of a project: ``hash_cache`` from its settings, or the default."""
    return settings.resolve(settings.hash_cache) if settings.hash_cache else default_cache_path()


def jobs_of(settings: Settings | None) -> int:
    """Worker processes: ``hash_jobs`` from the settings, else the CPUs this process may use."""
    if settings is not None and settings.hash_jobs:
        return settings.hash_jobs
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))  # honours Slurm / taskset CPU masks
    return os.cpu_count() or 1


def _cache_path(cache: bool | str | os.PathLike[str], settings: Settings | None) -> Path | None:
    if cache is False:
        return None
    if cache is True:
        assert settings is not None
        return cache_path_of(settings)
    return Path(cache)


def _jobs(jobs: int | None, settings: Settings | None) -> int:
    if jobs is not None and jobs < 1:
        msg = f"jobs must be at least 1, got {jobs}"
        raise ValueError(msg)
    return jobs if jobs is not None else jobs_of(settings)


class _NoCache(HashCache):
    """A cache that knows nothing and keeps nothing."""

    def __init__(self) -> None:
        super().__init__(Path(os.devnull), log=_log)

    def load(self, path: str, *, subtree: bool = True) -> dict[str, DirEntries]:
        return {}

    def store(
        self, dirs: dict[str, DirEntries], *, deletes: Iterable[str] = (), merge: bool = False
    ) -> None:
        pass


def _open_cache(path: Path | None, log: logging.Logger) -> HashCache:
    return _NoCache() if path is None else HashCache(path, log=log)


# --- one file ------------------------------------------------------------------------


def _hash_file(shown: str, full: str, cache: HashCache, log: logging.Logger) -> HashRecord:
    """Hash a single file, through the cache."""
    directory, name = os.path.split(full)
    known = cache.load(directory, subtree=False).get(directory, {}).get(name)
    st = os.stat(full)
    if known is not None and _same(st, known):
        return HashRecord(shown, PREFIX + known[3].hex(), 1, known[0], cached_files=1)
    now_ns = time.time_ns()
    entry = _read_or_raise(full, shown)
    if now_ns - entry[1] >= _RACY_NS:
        cache.store({directory: {name: entry}}, merge=True)
    return HashRecord(shown, PREFIX + entry[3].hex(), 1, entry[0])


def _same(st: os.stat_result, entry: Entry) -> bool:
    return st.st_size == entry[0] and st.st_mtime_ns == entry[1] and st.st_ino == entry[2]


def _read_or_raise(full: str, shown: str) -> Entry:
    try:
        digest, size, mtime_ns, inode = _hashworker.digest_file(full)
    except OSError as e:
        raise _unreadable(shown, e) from None
    return size, mtime_ns, inode, digest


def _unreadable(shown: str, e: OSError) -> DataError:
    return DataError(f"cannot read data file {shown}: {e.strerror or e}")


# --- walking a tree ------------------------------------------------------------------


@dataclass(frozen=True)
class _Globs:
    """Compiled globs: ``paths`` match whole relpaths, ``names`` the last component."""

    paths: re.Pattern[str] | None
    names: re.Pattern[str] | None

    @classmethod
    def build(cls, globs: Sequence[str] | None) -> _Globs | None:
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


class _Walk:
    """The regular files below one directory, found with ``os.scandir``."""

    def __init__(
        self, root: str, include: _Globs | None, exclude: _Globs | None, log: logging.Logger
    ) -> None:
        self.root = root
        self.include = include
        self.exclude = exclude
        self.log = log
        self.skipped: list[str] = []

    @property
    def filtered(self) -> bool:
        """True when globs may have left files of a directory out."""
        return self.include is not None or self.exclude is not None

    def files(self) -> list[_File]:
        """Every regular file (or link to one), sorted by relpath."""
        found: list[_File] = []
        unfiltered = not self.filtered
        st = os.stat(self.root)
        stack = [(self.root, "", frozenset({(st.st_dev, st.st_ino)}))]
        while stack:
            directory, prefix, ancestors = stack.pop()
            for entry in self._scan(directory, prefix):
                relpath = prefix + entry.name
                try:
                    if entry.is_file():
                        if unfiltered or self._keeps(relpath):
                            found.append((relpath, directory, entry.name, entry.path))
                    elif entry.is_dir():
                        self._enter(entry, relpath, ancestors, stack)
                    else:
                        self.skip(
                            relpath,
                            "broken symlink" if entry.is_symlink() else "not a regular file",
                        )
                except FileNotFoundError:
                    self.skip(relpath, "vanished")
        found.sort()
        return found

    def _scan(self, directory: str, prefix: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as it:
                return list(it)
        except (FileNotFoundError, NotADirectoryError):
            self.skip(prefix.rstrip("/"), "vanished")
        except OSError as e:
            msg = f"cannot read data directory {directory}: {e.strerror or e}"
            raise DataError(msg) from None
        return []

    def _enter(
        self,
        entry: os.DirEntry[str],
        relpath: str,
        ancestors: frozenset[tuple[int, int]],
        stack: list[tuple[str, str, frozenset[tuple[int, int]]]],
    ) -> None:
        """Queue a subdirectory, unless excluded or a link back to an ancestor."""
        if self.exclude is not None and self.exclude.match(relpath):
            return
        st = entry.stat()
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            self.skip(relpath, "symlink loop")
        else:
            stack.append((entry.path, relpath + "/", ancestors | {key}))

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


# --- hashing a tree ------------------------------------------------------------------


def _hash_tree(
    shown: str, walk: _Walk, cache: HashCache, *, jobs: int, progress: Progress | None
) -> HashRecord:
    """Hash every file found by ``walk``, reading only those the cache cannot vouch for."""
    now_ns = time.time_ns()
    files = walk.files()
    known = cache.load(walk.root)
    entries, misses = _lookup(files, known, walk)
    if progress is not None:
        progress(len(files) - len(misses), len(files))
    fresh = _hashworker.read_many(
        [files[i][3] for i in misses],
        jobs=jobs,
        progress=_offset(progress, len(files) - len(misses), len(files)),
    )
    for i, result in zip(misses, fresh, strict=True):
        if isinstance(result, OSError):
            if result.errno not in _VANISHED:
                raise _unreadable(files[i][3], result)
            walk.skip(files[i][0], "vanished")
        else:
            entries[i] = result
    walk.warn_skipped()
    hits = len(files) - len(misses)
    if misses or walk.skipped or hits != sum(map(len, known.values())):
        _update_cache(cache, files, entries, known, now_ns=now_ns, replace=not walk.filtered)
    return _record(shown, files, entries, cached=hits, skipped=walk.skipped)


def _lookup(
    files: list[_File], known: dict[str, DirEntries], walk: _Walk
) -> tuple[list[Entry | None], list[int]]:
    """Cached entries of unchanged files, and the indices of the files to read."""
    entries: list[Entry | None] = [None] * len(files)
    misses: list[int] = []
    empty: DirEntries = {}
    for i, (relpath, directory, name, path) in enumerate(files):
        entry = known.get(directory, empty).get(name)
        if entry is None:
            misses.append(i)
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            walk.skip(relpath, "vanished")
            continue
        if _same(st, entry):
            entries[i] = entry
        else:
            misses.append(i)
    return entries, misses


def _offset(progress: Progress | None, start: int, total: int) -> Callable[[int], None] | None:
    """A ``tick(done)`` reporting ``start + done`` of ``total`` to ``progress``."""
    if progress is None:
        return None
    return lambda done: progress(start + done, total)


def _record(
    shown: str,
    files: list[_File],
    entries: list[Entry | None],
    *,
    cached: int,
    skipped: list[str],
) -> HashRecord:
    """Assemble the directory hash and its manifest from the per-file entries."""
    manifest: dict[str, str] = {}
    lines: list[str] = []
    total_bytes = 0
    for file, entry in zip(files, entries, strict=True):
        if entry is None:
            continue
        relpath = file[0]
        hexdigest = entry[3].hex()
        manifest[relpath] = PREFIX + hexdigest
        lines.append(f"{relpath}\t{hexdigest}\n")
        total_bytes += entry[0]
    data = "".join(lines).encode("utf-8", "surrogateescape")
    digest = PREFIX + xxhash.xxh3_128_hexdigest(data)
    return HashRecord(
        shown,
        digest,
        len(manifest),
        total_bytes,
        manifest,
        cached_files=cached,
        skipped=tuple(skipped),
    )


def _update_cache(
    cache: HashCache,
    files: list[_File],
    entries: list[Entry | None],
    known: dict[str, DirEntries],
    *,
    now_ns: int,
    replace: bool,
) -> None:
    """Store the directories whose entries changed; forget those that are gone."""
    dirs: dict[str, DirEntries] = {}
    for (_, directory, name, _), entry in zip(files, entries, strict=True):
        if entry is not None and now_ns - entry[1] >= _RACY_NS:
            dirs.setdefault(directory, {})[name] = entry
    if replace:
        changed = {d: e for d, e in dirs.items() if known.get(d) != e}
    else:
        changed = {d: e for d, e in dirs.items() if e.items() - known.get(d, {}).items()}
    gone = [d for d in known if d not in dirs] if replace else []
    cache.store(changed, deletes=gone, merge=not replace)
