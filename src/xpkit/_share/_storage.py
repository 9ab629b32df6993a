"""Where ``xp push`` puts things, and the rules that keep pulled paths inside the project.

A store is a local directory, or any fsspec URL (``s3://``, ``gs://``, ``sftp://``...).

Both backends offer the same few operations on POSIX keys relative to the store root. Every
write is atomic at the key: a reader (or the next push after a crash) sees a whole object or
none. A local directory gets a temporary name and ``os.replace``; object stores (S3, GCS,
Azure, memory) publish a PUT atomically; other fsspec filesystems (sftp, ...) get a temporary
key and a rename.

A local directory needs nothing but the standard library; fsspec is imported only for URLs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from .._core._paths import atomic_path
from .._core._settings import Settings
from .._core._threads import leave_signals_to_main
from ..errors import StoreError, UnsafePathError, missing_extra

__all__ = [
    "LocalStore",
    "Store",
    "link_target",
    "open_store",
    "parallel",
    "project_dir",
    "safe_relpath",
]

_JOBS = 8  # concurrent transfers: object stores are latency-bound

# protocols whose single-object PUT is atomic: no temporary key needed
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


def link_target(rel: str, target: str, *, what: str, top: Path | None = None) -> str:
    """A symlink's target, made relative, if it stays inside its run directory.

    The target may climb (``..``) only at its start, and no higher than the run directory;
    then it only descends. Lexical ``a/../b`` is refused: ``a`` may itself be a link.
    An absolute target inside ``top`` (the run directory, when pushing) is made relative.
    """
    if os.path.isabs(target) and top is not None:
        inside = Path(target).resolve()
        if inside == top or top in inside.parents:
            target = os.path.relpath(inside, (top / rel).parent)
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = len(parts) - len(list(itertools.dropwhile(lambda p: p == "..", parts)))
    bad = (
        target.startswith(("/", "~"))
        or "\0" in target
        or ".." in parts[ups:]
        or ups > rel.count("/")
    )
    if bad:
        msg = (
            f"unsafe symlink {rel} -> {target} in {what}: only links to a path inside the "
            "run directory are allowed"
        )
        raise UnsafePathError(msg)
    return "/".join(parts) or "."


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

    def read_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when it does not exist."""

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write an object atomically."""

    def put_file(self, local: Path, key: str) -> None:
        """Upload a local file atomically."""

    def get_file(self, key: str, local: Path) -> None:
        """Download an object to a local file."""

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every object below ``prefix`` (recursively): key relative to it → size."""

    def children(self, prefix: str) -> list[str]:
        """Names of the immediate sub-directories of ``prefix``."""

    def remove(self, keys: list[str]) -> None:
        """Delete objects (missing ones are ignored)."""

    def local_path(self, key: str) -> Path | None:
        """The object's path on a local filesystem, or None for a remote store."""


@dataclass(frozen=True)
class LocalStore:
    """A store in a local or mounted directory."""

    root: Path

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / safe_relpath(key, what="a store key")

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._writing(key) as tmp:
            tmp.write_bytes(data)

    def put_file(self, local: Path, key: str) -> None:
        with self._writing(key) as tmp:
            shutil.copyfile(local, tmp)

    def _writing(self, key: str) -> contextlib.AbstractContextManager[Path]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_path(path)

    def get_file(self, key: str, local: Path) -> None:
        shutil.copyfile(self._path(key), local)

    def sizes(self, prefix: str) -> dict[str, int]:
        top = self._path(prefix)
        out: dict[str, int] = {}
        for dirpath, _, filenames in os.walk(top):
            base = Path(dirpath)
            for name in filenames:
                path = base / name
                with contextlib.suppress(FileNotFoundError):
                    out[path.relative_to(top).as_posix()] = path.lstat().st_size
        return out

    def children(self, prefix: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self._path(prefix)) if e.is_dir())
        except FileNotFoundError:
            return []

    def remove(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self._path(key).unlink()

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


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
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        self._atomic_put = bool(_ATOMIC_PUT.intersection(protocols))
        fs.invalidate_cache()

    def _path(self, key: str) -> str:
        return f"{self.base}/{safe_relpath(key, what='a store key')}"

    def read_bytes(self, key: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None
        return data

    def write_bytes(self, key: str, data: bytes) -> None:
        self._publish(key, lambda path: self.fs.pipe_file(path, data))

    def put_file(self, local: Path, key: str) -> None:
        self._publish(key, lambda path: self.fs.put_file(str(local), path))

    def _publish(self, key: str, write: Any) -> None:
        path = self._path(key)
        if self._atomic_put:
            write(path)
            return
        tmp = f"{path}.{secrets.token_hex(4)}.xpkit-tmp"
        write(tmp)
        self.fs.mv(tmp, path)

    def get_file(self, key: str, local: Path) -> None:
        self.fs.get_file(self._path(key), str(local))

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

    def local_path(self, key: str) -> Path | None:
        return None


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
