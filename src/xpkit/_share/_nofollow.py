"""Paths below a trusted directory, opened component by component, never through a symlink.

A store is untrusted, and so is whatever a pull is told to write: a symlink planted in the
project (``results/prepare -> /elsewhere``) or in a directory store (``files/x -> /etc``)
must never redirect a read or a write. Each function here starts from a directory the user
named (the project's results directory, the project root, a store's root), which may itself
be a link, and walks down with ``O_NOFOLLOW`` file descriptors: a symlink below it is an
:class:`~xpkit.errors.UnsafePathError` naming it, never a path taken. Files are created with
``O_EXCL``, so an existing name (a link planted between a check and a write) is never
written through either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from ..errors import StoreError, UnsafePathError

__all__ = [
    "Walked",
    "create_file",
    "make_dirs",
    "open_dir",
    "open_file",
    "remove_created",
    "walk",
]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

Walked = tuple[str, str, int]
"""``(relpath, kind, size)`` of one entry; kind is ``file``, ``dir``, ``link`` or ``other``."""


def _parts(rel: str | Sequence[str]) -> list[str]:
    return [p for p in rel.split("/") if p] if isinstance(rel, str) else list(rel)


def _refuse(top: Path, parts: Sequence[str], fd: int, name: str) -> None:
    """Say why ``name`` (in the directory ``fd``) cannot be gone through."""
    shown = top.joinpath(*parts, name)
    try:
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        msg = f"{shown} is a symlink: refusing to go through it"
        raise UnsafePathError(msg)
    if not stat.S_ISDIR(mode):
        msg = f"{shown} is not a directory"
        raise StoreError(msg)


def _step(top: Path, done: Sequence[str], fd: int, name: str, created: list[Path] | None) -> int:
    """The directory ``name`` below ``fd``, made when ``created`` is a list (and noted there)."""
    try:
        return os.open(name, _DIR, dir_fd=fd)
    except FileNotFoundError:
        if created is None:
            raise
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        _refuse(top, done, fd, name)
        raise
    try:
        os.mkdir(name, 0o777, dir_fd=fd)
        created.append(top.joinpath(*done, name))
    except FileExistsError:
        _refuse(top, done, fd, name)  # a peer made it meanwhile: fine unless it is a link
    return os.open(name, _DIR, dir_fd=fd)


@contextlib.contextmanager
def open_dir(
    top: Path, rel: str | Sequence[str], *, created: list[Path] | None = None
) -> Iterator[int]:
    """A descriptor of the directory ``top/rel``, no component below ``top`` a symlink.

    Args:
        top: the trusted directory to start from (followed if it is a link).
        rel: POSIX components below it.
        created: when a list, missing directories are made and appended to it.

    Raises:
        UnsafePathError: a component is a symlink.
        StoreError: a component is not a directory.
        FileNotFoundError: a component is missing and ``created`` is None.
    """
    parts = _parts(rel)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(parts):
            nxt = _step(top, parts[:i], fd, name, created)
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def make_dirs(top: Path, rel: str | Sequence[str], created: list[Path]) -> None:
    """Make the directories ``top/rel`` without going through a symlink (see open_dir)."""
    with open_dir(top, rel, created=created):
        pass


@contextlib.contextmanager
def create_file(
    top: Path, rel: str, *, created: list[Path] | None = None, mode: int = 0o666
) -> Iterator[BinaryIO]:
    """A new file ``top/rel`` open for writing; its parents are made as in :func:`open_dir`.

    Raises:
        FileExistsError: something (a file, a link) already has that name.
    """
    *parent, name = _parts(rel)
    with open_dir(top, parent, created=created if created is not None else []) as dfd:
        fd = os.open(name, _NEW, mode, dir_fd=dfd)
    with os.fdopen(fd, "wb") as f:
        yield f


@contextlib.contextmanager
def open_file(top: Path, rel: str) -> Iterator[BinaryIO]:
    """The regular file ``top/rel`` open for reading, no component below ``top`` a symlink.

    Raises:
        FileNotFoundError: it does not exist.
        UnsafePathError: it or a directory above it (below ``top``) is a symlink.
    """
    *parent, name = _parts(rel)
    with open_dir(top, parent) as dfd:
        try:
            fd = os.open(name, _READ, dir_fd=dfd)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            _refuse(top, parent, dfd, name)
            raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            msg = f"{top.joinpath(*parent, name)} is not a regular file"
            raise StoreError(msg)
        yield f


def walk(top: Path, rel: str | Sequence[str] = ()) -> Iterator[Walked]:
    """Every entry below ``top/rel`` (relpaths from there), links reported, never followed.

    Nothing is yielded when ``top/rel`` is missing.
    """
    with contextlib.ExitStack() as stack:
        try:
            fd = stack.enter_context(open_dir(top, rel))
        except FileNotFoundError:
            return
        for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=fd):
            prefix = "" if dirpath == "." else f"{dirpath[2:]}/"
            # fwalk lists a link to a directory among dirnames (and does not enter it)
            for name in [*dirnames, *filenames]:
                yield (f"{prefix}{name}", *_kind(dfd, name))


def _kind(dfd: int, name: str) -> tuple[str, int]:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return "other", 0
    if stat.S_ISLNK(st.st_mode):
        return "link", 0
    if stat.S_ISDIR(st.st_mode):
        return "dir", 0
    return ("file", st.st_size) if stat.S_ISREG(st.st_mode) else ("other", 0)


def remove_created(created: Sequence[Path]) -> None:
    """Remove the directories a failed operation made, deepest first, if they are empty.

    Deepest, not newest: threads making nested directories may note them in any order.
    """
    for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
