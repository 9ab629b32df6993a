"""Where ``xp push`` puts things, and the rules that keep pulled paths inside the project.

A store is a local directory, or any fsspec URL (``s3://``, ``gs://``, ``sftp://``...).

Both backends offer the same few operations on POSIX keys relative to the store root. Every
write is atomic at the key: a reader (or the next push after a crash) sees a whole object or
none. A local directory writes a file in ``tmp/`` and renames it into place; object stores
(S3, GCS, Azure, memory) publish a PUT atomically; other fsspec filesystems (sftp, ...) write
a key in ``tmp/`` and move it. So concurrent writers never see each other's temporary files,
and one killed mid-write leaves only a ``tmp/`` entry, swept a day later. An upload is hashed
as it is sent and published only when it is the version expected.

A local directory is read and written through ``_nofollow``: a symlink planted below its
root is refused, never followed. It needs nothing but the standard library; fsspec is
imported only for URLs.

The path rules say which paths a store may name: a run directory is
``<results>/<stage>/<run name>`` (:func:`run_dir`), a key or entry a plain relative path
(:func:`safe_relpath`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

import xxhash

from .._core._paths import LATEST
from .._core._settings import Settings
from .._core._threads import leave_signals_to_main
from ..errors import StoreError, UnsafePathError, missing_extra
from ._nofollow import Walked, create_file, open_dir, open_file, walk

__all__ = [
    "LocalStore",
    "Store",
    "open_store",
    "parallel",
    "project_dir",
    "results_rel",
    "run_dir",
    "safe_relpath",
]

_JOBS = 8  # concurrent transfers: object stores are latency-bound
_CHUNK_BYTES = 1 << 20
_TMP = "tmp"  # where writes to a filesystem store start, renamed into place when whole

# protocols whose single-object PUT is atomic: no temporary key needed
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,=+@-]*")  # a stage or run name xp could make
_ATOMIC_PUT = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})


def safe_relpath(path: str, *, what: str) -> str:
    """Return ``path`` if it is a plain relative POSIX path that stays where it is put.

    Raises:
        UnsafePathError: ``path`` is empty, absolute, starts with ``~``, or has an empty,
            ``.`` or ``..`` component (or a NUL byte).
    """
    parts = path.split("/")
    bad = (
        not path
        or path.startswith(("/", "~"))
        or "\0" in path
        or "\\" in path
        or any(p in ("", ".", "..") for p in parts)
        or PurePosixPath(path).is_absolute()
    )
    if bad:
        msg = (
            f"unsafe path {path!r} in {what}: only relative paths without '..', '.' or "
            "empty components are allowed"
        )
        raise UnsafePathError(msg)
    return path


def project_dir(rel: Any, *, what: str) -> str:
    """A run's recorded ``dir``: relative, inside the project, not in ``.git``."""
    if not isinstance(rel, str):
        msg = f"{what}: run directory {rel!r} is not a path"
        raise UnsafePathError(msg)
    safe_relpath(rel, what=what)
    if rel.split("/", 1)[0] == ".git":
        msg = f"unsafe path {rel!r} in {what}: a run directory cannot be inside .git"
        raise UnsafePathError(msg)
    return rel


def results_rel(settings: Settings) -> str:
    """The results directory relative to the project root.

    Raises:
        StoreError: it lies outside the project (run.lock paths could not name it).
    """
    rel = settings.relative(settings.results_path)
    if os.path.isabs(rel) or rel == "." or rel.split("/", 1)[0] in ("..", ".git"):
        msg = f"the results directory {rel} is not inside the project {settings.root}"
        raise StoreError(msg)
    return rel


def run_dir(rel: Any, *, stage: Any, results: str, what: str) -> tuple[str, str]:
    """``(stage, run name)`` of a run's recorded ``dir``, if ``xp`` could have made it.

    A shared run directory is ``<results>/<stage>/<run name>``: its stage the run's own,
    both names plain (letters, digits, ``_.,=+@-``, not hidden, not ``latest``).

    Raises:
        UnsafePathError: ``rel`` is any other path.
    """
    project_dir(rel, what=what)
    head, _, tail = rel.rpartition("/")
    parent, _, stage_dir = head.rpartition("/")
    ok = (
        parent == results
        and stage_dir == stage
        and all(_NAME.fullmatch(n) and len(n) <= 255 for n in (stage_dir, tail))
        and tail != LATEST
    )
    if not ok:
        msg = (
            f"unsafe run directory {rel!r} in {what}: a shared run lies at "
            f"{results}/<stage>/<run name> (stage {stage!r})"
        )
        raise UnsafePathError(msg)
    return stage_dir, tail


def parallel(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(
        max_workers=_JOBS, thread_name_prefix="xpkit-store", initializer=leave_signals_to_main
    ) as pool:
        return list(pool.map(fn, items))


class Store(Protocol):
    """The operations push and pull need; keys are relative POSIX paths."""

    @property
    def url(self) -> str:
        """Where the store is, as the user named it."""

    @property
    def local(self) -> bool:
        """Whether the store is a directory of this machine (it can be linked to)."""

    def read_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when it does not exist."""

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write an object atomically."""

    def put_file(self, local: Path, key: str, *, expect: str | None = None) -> str:
        """Upload a local file atomically, hashing what is sent; return its ``xxh3_128:`` hash.

        When ``expect`` is given and the bytes read differ from it (the file changed), the
        object is not left in the store.
        """

    def open_read(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """The object open for reading; FileNotFoundError when it does not exist."""

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every object below ``prefix`` (recursively): key relative to it → size."""

    def strays(self, prefix: str) -> list[str]:
        """Keys below ``prefix`` that are neither files nor directories (symlinks...)."""

    def entries(self, prefix: str) -> list[Walked]:
        """Every entry below ``prefix``: ``(relpath, kind, size)``, links reported as links."""

    def children(self, prefix: str) -> list[str]:
        """Names of the immediate sub-directories of ``prefix``."""

    def remove(self, keys: list[str]) -> None:
        """Delete objects (missing ones are ignored)."""

    def local_dir(self, key: str) -> Path | None:
        """The real path of a directory of a filesystem store, or None for a remote store."""

    def sweep_tmp(self, *, older_than_s: float) -> None:
        """Remove temporary objects that killed writers left (and only those that old)."""


def copy_hashing(src: BinaryIO, dst: BinaryIO) -> str:
    """Copy ``src`` to ``dst`` in chunks; the ``xxh3_128:<hex>`` of what was copied."""
    h = xxhash.xxh3_128()
    while chunk := src.read(_CHUNK_BYTES):
        h.update(chunk)
        dst.write(chunk)
    return f"xxh3_128:{h.hexdigest()}"


def _tmp_name() -> str:
    return f"{secrets.token_hex(8)}.{os.getpid()}"


@dataclass(frozen=True)
class LocalStore:
    """A store in a local or mounted directory.

    The root may be a link (a mount point, a shared drive); nothing below it is ever read,
    written or listed through a symlink (see ``_nofollow``). A write goes to ``tmp/`` first,
    then is renamed into place: concurrent writers never see each other's temporary files.
    """

    root: Path

    @property
    def url(self) -> str:
        return str(self.root)

    @property
    def local(self) -> bool:
        return True

    def _split(self, key: str) -> tuple[list[str], str]:
        *parent, name = safe_relpath(key, what="a store key").split("/")
        return parent, name

    def read_bytes(self, key: str) -> bytes | None:
        try:
            with self.open_read(key) as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def open_read(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        return open_file(self.root, safe_relpath(key, what="a store key"))

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._writing(key) as f:
            f.write(data)

    def put_file(self, local: Path, key: str, *, expect: str | None = None) -> str:
        digest = ""
        with (
            self._writing(key, keep=lambda: expect in (None, digest)) as dst,
            local.open("rb") as src,
        ):
            digest = copy_hashing(src, dst)
        return digest

    @contextlib.contextmanager
    def _writing(self, key: str, *, keep: Callable[[], bool] | None = None) -> Iterator[BinaryIO]:
        """A new temporary file in ``tmp/``, renamed onto ``key`` when the block succeeds."""
        parent, name = self._split(key)
        tmp = _tmp_name()
        published = False
        self.root.mkdir(parents=True, exist_ok=True)  # the root the user named: links followed
        with open_dir(self.root, _TMP, created=[]) as tmp_fd:
            try:
                # read-only: a --link into the store must not let an edit change stored bytes
                with create_file(self.root, f"{_TMP}/{tmp}", mode=0o444) as f:
                    yield f
                if keep is None or keep():
                    with open_dir(self.root, parent, created=[]) as dst_fd:
                        os.replace(tmp, name, src_dir_fd=tmp_fd, dst_dir_fd=dst_fd)
                    published = True
            finally:
                if not published:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=tmp_fd)

    def sizes(self, prefix: str) -> dict[str, int]:
        return {rel: size for rel, kind, size in walk(self.root, prefix) if kind == "file"}

    def strays(self, prefix: str) -> list[str]:
        return [rel for rel, kind, _ in walk(self.root, prefix) if kind in ("link", "other")]

    def entries(self, prefix: str) -> list[Walked]:
        return list(walk(self.root, prefix))

    def children(self, prefix: str) -> list[str]:
        try:
            with open_dir(self.root, prefix) as fd:
                return sorted(e.name for e in os.scandir(fd) if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, keys: list[str]) -> None:
        for key in keys:
            parent, name = self._split(key)
            with contextlib.suppress(FileNotFoundError), open_dir(self.root, parent) as fd:
                os.unlink(name, dir_fd=fd)

    def local_dir(self, key: str) -> Path | None:
        with open_dir(self.root, safe_relpath(key, what="a store key")):
            pass  # every component a real directory: the path below resolves inside
        return self.root.resolve().joinpath(*key.split("/"))

    def sweep_tmp(self, *, older_than_s: float) -> None:
        limit = time.time() - older_than_s
        with contextlib.suppress(FileNotFoundError), open_dir(self.root, _TMP) as fd:
            for entry in os.scandir(fd):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < limit:
                        os.unlink(entry.name, dir_fd=fd)


class FsspecStore:
    """A store behind an fsspec URL; the filesystem's own config and credentials apply."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec
        except ImportError:
            raise missing_extra("fsspec", "store") from None
        try:
            fs, base = fsspec.url_to_fs(url)
        except (ImportError, ValueError) as e:
            msg = f"cannot open store {url!r}: {e}"
            raise StoreError(msg) from None
        self.url = url
        self.fs = fs
        self.base = base.rstrip("/")
        # a string, or a tuple (a list in old s3fs releases)
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        self._atomic_put = bool(_ATOMIC_PUT.intersection(protocols))
        self.local = False
        fs.invalidate_cache()

    def _path(self, key: str) -> str:
        return f"{self.base}/{safe_relpath(key, what='a store key')}"

    def read_bytes(self, key: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None
        return data

    def open_read(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        f: BinaryIO = self.fs.open(self._path(key), "rb")  # a file is its own context manager
        return f

    def write_bytes(self, key: str, data: bytes) -> None:
        self._publish(key, lambda path: self.fs.pipe_file(path, data))

    def put_file(self, local: Path, key: str, *, expect: str | None = None) -> str:
        digest = ""

        def send(path: str) -> None:
            nonlocal digest
            with local.open("rb") as src, self.fs.open(path, "wb") as dst:
                digest = copy_hashing(src, dst)

        self._publish(key, send, keep=lambda: expect in (None, digest))
        return digest

    def _publish(
        self, key: str, write: Callable[[str], None], *, keep: Callable[[], bool] | None = None
    ) -> None:
        """Write through ``write``; keep the object only when ``keep()`` says so."""
        path = self._path(key)
        target = path if self._atomic_put else f"{self.base}/{_TMP}/{_tmp_name()}"
        kept = False
        if target != path:  # a filesystem: directories are real
            self.fs.makedirs(f"{self.base}/{_TMP}", exist_ok=True)
        try:
            write(target)
            kept = keep is None or keep()
        finally:
            if not kept:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(target)
        if kept and target != path:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.mv(target, path)

    def sizes(self, prefix: str) -> dict[str, int]:
        top = self._path(prefix)
        try:
            found = self.fs.find(top, detail=True)
        except FileNotFoundError:
            return {}
        strip = len(top) + 1
        out: dict[str, int] = {}
        for name, info in found.items():
            name = name.rstrip("/")
            if info.get("type") != "directory" and name.startswith(top + "/"):
                out[name[strip:]] = int(info.get("size") or 0)
        return out

    def children(self, prefix: str) -> list[str]:
        try:
            entries = self.fs.ls(self._path(prefix), detail=True)
        except FileNotFoundError:
            return []
        names = (
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
        )
        return sorted(names)

    def remove(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._path(key))

    def strays(self, prefix: str) -> list[str]:
        return []  # object stores have no links

    def entries(self, prefix: str) -> list[Walked]:
        return [(rel, "file", size) for rel, size in self.sizes(prefix).items()]

    def local_dir(self, key: str) -> Path | None:
        return None

    def sweep_tmp(self, *, older_than_s: float) -> None:
        if self._atomic_put:
            return
        limit = time.time() - older_than_s
        try:
            found = self.fs.find(f"{self.base}/{_TMP}", detail=True)
        except FileNotFoundError:
            return
        for name, info in found.items():
            mtime = info.get("mtime") or info.get("created")
            if isinstance(mtime, (int, float)) and mtime < limit:
                with contextlib.suppress(OSError):
                    self.fs.rm_file(name)


def open_store(url: str | os.PathLike[str] | None, settings: Settings) -> Store:
    """The store at ``url`` (default: ``[tool.xpkit] store``); a relative path is from the root.

    Raises:
        StoreError: no store was given nor configured.
    """
    if url is None:
        url = settings.store
    if url is None or not str(url):
        msg = (
            "no store given: pass --store URL (a directory or fsspec URL) or set [tool.xpkit] store"
        )
        raise StoreError(msg)
    text = os.fspath(url)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        return FsspecStore(text)
    return LocalStore(Path(os.path.abspath(settings.resolve(text))))
