"""The run.lock record: one frozen dataclass, YAML only at the edge, written atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import LockError
from ._paths import atomic_write_text
from ._schema import SCHEMA_VERSION, STATUSES, check_lock

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "RunLock",
    "decode_lock",
    "dump_yaml",
    "load_lock",
    "load_yaml",
    "new_run_id",
    "now",
    "write_lock",
]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # base chosen at runtime
    """Safe dumper writing multi-line strings (tracebacks) as literal blocks, no aliases.

    A value met twice is written twice: a lock reads (and greps) the same by hand, and
    :func:`load_yaml` has no aliases to expand.
    """

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


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


def dump_yaml(data: Any) -> str:
    """Dump ``data`` as block-style YAML keeping key order."""
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def load_yaml(text: str | bytes) -> Any:
    """Parse YAML text safely (the C loader when PyYAML has it).

    Aliases are expanded by reference: a node may appear many times in the tree, or inside
    itself. Every reader walks the tree, so an alias that makes it recursive, or makes it
    expand to more than :data:`_MAX_VALUES` values ("billion laughs"), is refused here.

    Raises:
        yaml.YAMLError: the text is not valid YAML, holds a value Python refuses (an
            integer of more than 4300 digits), or aliases as above.
    """
    try:
        data = yaml.load(text, Loader=_Loader)
    except (ValueError, RecursionError) as e:  # raised by the constructors, not YAML errors
        raise yaml.YAMLError(str(e).splitlines()[0]) from None
    anchored = b"&" in text if isinstance(text, bytes) else "&" in text
    if anchored:  # aliases are possible
        try:
            _count_values(data, {}, set())
        except RecursionError:
            msg = "nested too deep"
            raise yaml.YAMLError(msg) from None
    return data


# a real document holds a few thousand values (a run.lock's env.packages and upstream locks);
# aliases expanding beyond this are an attack that would hang every reader walking the tree
_MAX_VALUES = 1_000_000


def _count_values(node: Any, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values ``node`` holds once aliases are expanded; each node walked once.

    Raises:
        yaml.YAMLError: a node contains itself, or the expansion is beyond any real document.
    """
    if not isinstance(node, (dict, list)):
        return 1
    known = sizes.get(id(node))
    if known is not None:
        return known
    if id(node) in open_nodes:
        msg = "an alias makes a node contain itself"
        raise yaml.YAMLError(msg)
    open_nodes.add(id(node))
    children = node.values() if isinstance(node, dict) else node
    total = 1 + sum(_count_values(child, sizes, open_nodes) for child in children)
    open_nodes.discard(id(node))
    if total > _MAX_VALUES:
        msg = f"aliases expand it to more than {_MAX_VALUES:,} values"
        raise yaml.YAMLError(msg)
    sizes[id(node)] = total
    return total


def write_lock(path: Path, lock: RunLock) -> None:
    """Write ``lock`` to ``path`` atomically (temporary file + ``os.replace``)."""
    atomic_write_text(path, dump_yaml(lock.to_dict()))


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
        p = p / "run.lock"
    try:
        text = decode_lock(p.read_bytes(), p)
    except OSError as e:
        msg = f"{p}: cannot read run.lock ({e.strerror or e})"
        raise LockError(msg) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        from ._config import yaml_error_where

        msg = f"{p}: invalid YAML{yaml_error_where(e)}"
        raise LockError(msg) from None
    if not isinstance(data, dict):
        msg = f"{p}: not a run.lock (not a YAML mapping)"
        raise LockError(msg)
    return RunLock.from_dict(data, source=str(p))
