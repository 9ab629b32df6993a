"""The run.lock record: one frozen dataclass, YAML only at the edge, written atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LockError
from . import _yaml
from ._paths import LOCK, atomic_write_text
from ._schema import SCHEMA_VERSION, STATUSES, check_lock
from ._yaml import dump_yaml, load_yaml, yaml_error_where

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "RunLock",
    "decode_lock",
    "load_lock",
    "new_run_id",
    "now",
    "write_lock",
]


@dataclass(frozen=True)
class RunLock:
    """Everything that made a run, as stored in its run.lock.

    Sections filled by recorders (``src``, ``data``, ``upstream``, ``env``, ``tasks``) are
    plain mappings; keys this version does not know are kept in ``extra`` and written back.
    """

    id: str
    stage: str
    dir: str
    status: str = "running"
    started: str = ""
    ended: str | None = None
    duration_s: float | None = None
    pid: int | None = None
    host: str | None = None
    argv: tuple[str, ...] = ()
    error: Mapping[str, Any] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    src: Mapping[str, Any] | None = None
    data: Mapping[str, Any] | None = None
    upstream: Mapping[str, Any] | None = None
    env: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] | None = None
    tasks: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    xpkit: int = SCHEMA_VERSION

    def replace(self, **changes: Any) -> RunLock:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The run.lock mapping, in schema order; empty sections are left out."""
        out: dict[str, Any] = {"xpkit": self.xpkit}
        for f in dataclasses.fields(self):
            if f.name in ("xpkit", "extra"):
                continue
            value = getattr(self, f.name)
            if value is None and f.name in _OPTIONAL:
                continue
            out[f.name] = list(value) if f.name == "argv" else value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "run.lock") -> RunLock:
        """Build a lock from a parsed mapping, validating the schema.

        Raises:
            LockVersionError: the lock comes from a newer schema.
            LockError: a required key is missing, or a key (at any depth, upstream locks
                included) has the wrong type; see :mod:`xpkit._core._schema`.
        """
        check_lock(data, source)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        known["argv"] = tuple(known.get("argv") or ())
        known["config"] = known.get("config") or {}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)


_OPTIONAL = frozenset({"error", "src", "data", "upstream", "env", "metrics", "tasks"})


def new_run_id() -> str:
    """A fresh run id: 12 random hex digits, so that a short prefix is unique."""
    return os.urandom(6).hex()


def now() -> dt.datetime:
    """The current local time, timezone-aware."""
    return dt.datetime.now().astimezone()


def write_lock(path: Path, lock: RunLock) -> None:
    """Write ``lock`` to ``path`` atomically (temporary file + ``os.replace``).

    When the disk is full, the lock is rewritten in place in the space its file already
    holds (its environment's package list dropped if that is what it takes), so that a run
    can still say how it ended.

    Raises:
        OSError: it cannot be written at all.
    """
    text = dump_yaml(lock.to_dict())
    try:
        atomic_write_text(path, text)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if not _overwrite_in_place(path, text.encode("utf-8")):
            slim = lock.replace(env={**(lock.env or {}), "packages": "(dropped: disk full)"})
            if not _overwrite_in_place(path, dump_yaml(slim.to_dict()).encode("utf-8")):
                raise


def _overwrite_in_place(path: Path, data: bytes) -> bool:
    """Rewrite ``path`` within the blocks it holds; False when ``data`` does not fit."""
    try:
        with open(path, "r+b") as f:
            held = os.fstat(f.fileno()).st_blocks * 512
            if len(data) > held:
                return False
            f.write(data)
            f.truncate()
    except OSError:
        return False
    return True


def decode_lock(raw: bytes, path: Path) -> str:
    """The text of a run.lock file read as ``raw`` bytes.

    Raises:
        LockError: the bytes are not UTF-8 (binary garbage, another encoding).
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"byte 0x{raw[e.start]:02x} at offset {e.start}"
        msg = f"{path}: not a run.lock (not UTF-8 text: {where})"
        raise LockError(msg) from None


def load_lock(path: str | os.PathLike[str]) -> RunLock:
    """Read and validate a run.lock file (or the run.lock inside a run directory).

    Raises:
        LockError: the file is missing, is not valid YAML (file and line named) or does not
            follow the schema.
    """
    p = Path(path)
    if p.is_dir():
        p = p / LOCK
    try:
        text = decode_lock(p.read_bytes(), p)
    except OSError as e:
        msg = f"{p}: cannot read run.lock ({e.strerror or e})"
        raise LockError(msg) from None
    try:
        data = load_yaml(text)
    except _yaml.YAMLError as e:
        msg = f"{p}: invalid YAML{yaml_error_where(e)}"
        raise LockError(msg) from None
    if not isinstance(data, dict):
        msg = f"{p}: not a run.lock (not a YAML mapping)"
        raise LockError(msg)
    return RunLock.from_dict(data, source=str(p))
