"""``xp hash PATH...``: print the xxh3-128 hashes of files and directories."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .._core._progress import ProgressBar
from .._record._hashing import HashRecord, Progress, hash_path
from ..errors import DataError

__all__ = ["hash_command"]

# A progress bar is worth drawing from this many files to read on.
_BAR_MIN_FILES = 5000


def hash_command(args: list[str]) -> int:
    """Run ``xp hash`` with ``args`` (without the program name); return the exit status.

    Example:
        >>> hash_command(["data/raw", "--json"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(
        prog="xp hash",
        description="Print the xxh3-128 hash, file count and size of files and directories.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a file or a directory")
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    parser.add_argument("--no-cache", action="store_true", help="read every file again")
    parser.add_argument("--jobs", type=int, default=None, metavar="N", help="worker processes")
    parser.add_argument("--exclude", action="append", metavar="GLOB", help="leave matches out")
    parser.add_argument("--include", action="append", metavar="GLOB", help="hash only matches")
    opts = parser.parse_intermixed_args(args)
    if opts.jobs is not None and opts.jobs < 1:
        parser.error("--jobs must be at least 1")
    missing = [p for p in opts.paths if not os.path.exists(p)]
    if missing:
        print(f"xp hash: error: no such file or directory: {missing[0]}", file=sys.stderr)
        return 2
    records: list[HashRecord] = []
    for path in opts.paths:
        try:
            with _progress_bar(path) as progress:
                record = hash_path(
                    path,
                    include=opts.include,
                    exclude=opts.exclude,
                    cache=not opts.no_cache,
                    jobs=opts.jobs,
                    progress=progress,
                )
        except DataError as e:
            print(f"xp hash: error: {e}", file=sys.stderr)
            return 2
        records.append(record)
        if not opts.json:
            print(f"{record.hash}  {record.files:>9}  {record.bytes:>14}  {record.path}")
    if opts.json:
        print(json.dumps([r.to_lock() for r in records], indent=2))
    return 0


@contextmanager
def _progress_bar(path: str) -> Iterator[Progress | None]:
    """A rich progress bar on a terminal, drawn once many files are to be read."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = _LazyBar(path)
    try:
        yield bar.update
    finally:
        bar.close()


class _LazyBar:
    """Draws the bar from the first update that shows a large tree."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._bar: ProgressBar | None = None

    def update(self, done: int, total: int) -> None:
        if self._bar is None and total - done >= _BAR_MIN_FILES:
            self._bar = ProgressBar(f"hashing {self._path}", enabled=True)
            self._bar.start()
        if self._bar is not None:
            self._bar.update(completed=done, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
