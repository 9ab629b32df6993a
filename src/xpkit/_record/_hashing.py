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
import functools
import logging
import os
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
from ._hashwalk import Found, Globs, Walk
from ._hashworker import Entry, StatChecker

__all__ = ["HashRecord", "Progress", "hash_path"]

PREFIX = "xxh3_128:"

Progress = Callable[[int, int], None]
"""``progress(done_files, total_files)``, called from a background thread now and then."""

_log = logging.getLogger("xpkit.hashing")
# A file modified this recently may change again within the same mtime tick (the "racily
# clean" problem of git): its digest is used but not cached.
_RACY_NS = 2_000_000_000
_VANISHED = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)
# Cached rows of ~40,000 files (~50 bytes each): below that, a stat checker process
# (~25 ms to start) costs more than it saves.
_CHECK_MIN_ROW_BYTES = 2_000_000


_Listing = tuple[list[str], list[bytes]]
"""A tree's file relpaths and their digests, in order (``bytes`` is a field name below)."""


@dataclass(frozen=True)
class HashRecord:
    """The hash of one file or directory tree.

    ``manifest`` maps each file's POSIX relpath to its ``"xxh3_128:<hex>"`` for a
    directory (None for a file), built on first use from ``listing`` (the relpaths and
    digests, in order); ``cached_files`` counts files whose digest came from the cache
    without reading them; ``skipped`` lists ``"relpath (reason)"`` of what was left out.
    """

    path: str
    hash: str
    files: int
    bytes: int
    listing: _Listing | None = field(default=None, repr=False, compare=False)
    cached_files: int = field(default=0, compare=False)
    skipped: tuple[str, ...] = field(default=(), compare=False)

    @functools.cached_property
    def manifest(self) -> dict[str, str] | None:
        """Each file's relpath -> ``"xxh3_128:<hex>"``, for a directory; None for a file."""
        if self.listing is None:
            return None
        relpaths, digests = self.listing
        return {r: PREFIX + d.hex() for r, d in zip(relpaths, digests, strict=True)}

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
            rows = cache.load_rows(full)
            walk = Walk(
                full,
                include=Globs.build(include),
                exclude=Globs.build(exclude),
                rows=rows,
                checker=_checker(rows, jobs),
                log=log,
            )
            return _hash_tree(shown, walk, cache, jobs=jobs, progress=progress)
    msg = f"data path is not a regular file or directory: {shown}"
    raise DataError(msg)


def _checker(rows: dict[str, bytes], jobs: int) -> StatChecker | None:
    """A second process to stat the files the cache knows, when there are many."""
    if jobs < 2 or sum(map(len, rows.values())) < _CHECK_MIN_ROW_BYTES:
        return None
    return StatChecker()


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

    def load_rows(self, path: str, *, subtree: bool = True) -> dict[str, bytes]:
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


# --- hashing a tree ------------------------------------------------------------------

# Lines of the directory hash are built and hashed this many files at a time, so that the
# text of a million relpaths is never held whole.
_LINES_PER_UPDATE = 1 << 16


def _hash_tree(
    shown: str, walk: Walk, cache: HashCache, *, jobs: int, progress: Progress | None
) -> HashRecord:
    """Hash every file found by ``walk``, reading only those the cache cannot vouch for."""
    now_ns = time.time_ns()
    rows_below = list(walk.rows)  # the walk consumes the rows it visits
    found = walk.run()
    total = len(found.relpaths)
    hits = total - len(found.misses)
    if progress is not None:
        progress(hits, total)
    fresh = _hashworker.read_many(
        [os.path.join(d, n) for _, d, n in found.misses],
        jobs=jobs,
        progress=_offset(progress, hits, total),
    )
    for (i, _, _), result in zip(found.misses, fresh, strict=True):
        if isinstance(result, OSError):
            if result.errno not in _VANISHED:
                raise _unreadable(found.relpaths[i], result)
            walk.skip(found.relpaths[i], "vanished")
        else:
            found.entries[i] = result
    walk.warn_skipped()
    if found.kept or found.misses or any(d not in found.seen for d in rows_below):
        _update_cache(cache, found, rows_below, now_ns=now_ns, replace=not walk.filtered)
    return _record(shown, found, cached=hits, skipped=walk.skipped)


def _offset(progress: Progress | None, start: int, total: int) -> Callable[[int], None] | None:
    """A ``tick(done)`` reporting ``start + done`` of ``total`` to ``progress``."""
    if progress is None:
        return None
    return lambda done: progress(start + done, total)


def _record(shown: str, found: Found, *, cached: int, skipped: list[str]) -> HashRecord:
    """Assemble the directory hash from the per-file entries, a slice at a time."""
    relpaths, entries = found.relpaths, found.entries
    if any(e is None for e in entries):  # vanished files
        pairs = [(r, e) for r, e in zip(relpaths, entries, strict=True) if e is not None]
        relpaths, entries = [r for r, _ in pairs], [e for _, e in pairs]
    known: list[Entry] = entries  # type: ignore[assignment]  # no None left
    h = xxhash.xxh3_128()
    for start in range(0, len(known), _LINES_PER_UPDATE):
        end = start + _LINES_PER_UPDATE
        text = "".join(
            [
                f"{r}\t{e[3].hex()}\n"
                for r, e in zip(relpaths[start:end], known[start:end], strict=True)
            ]
        )
        h.update(text.encode("utf-8", "surrogateescape"))
    return HashRecord(
        shown,
        PREFIX + h.hexdigest(),
        len(known),
        sum(e[0] for e in known),
        (relpaths, [e[3] for e in known]),
        cached_files=cached,
        skipped=tuple(skipped),
    )


def _update_cache(
    cache: HashCache, found: Found, rows_below: list[str], *, now_ns: int, replace: bool
) -> None:
    """Store the directories whose entries changed; forget those that are gone.

    A filtered walk saw only some files of a directory: it adds what it read and removes
    nothing (``merge``).
    """
    dirs: dict[str, DirEntries] = {} if not replace else dict(found.kept)
    for i, directory, name in found.misses:
        entry = found.entries[i]
        if entry is not None and now_ns - entry[1] >= _RACY_NS:
            if directory not in dirs:
                dirs[directory] = dict(found.kept.get(directory, {})) if replace else {}
            dirs[directory][name] = entry
    gone = [d for d in rows_below if d not in found.seen] if replace else []
    empty = [d for d, e in dirs.items() if not e]
    cache.store({d: e for d, e in dirs.items() if e}, deletes=gone + empty, merge=not replace)
