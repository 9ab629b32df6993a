"""A run.lock in MLflow's own terms: its source file, dataset inputs, sweep and upstream runs.

Pure functions of run.lock, no MLflow call. run.lock is read as untrusted input (it may be
hand-edited, pulled from a store or written by an older xpkit): a value of the wrong type or
shape is left out, never an exception.

- Source: the user's script or module relative to the project, from run.lock ``entry.file``.
  An entry that names no project file (a joblib sweep point once recorded loky's
  ``popen_loky_posix.py``; a notebook cell's temporary file) is not believed: the stage's own
  file among ``src.files`` named by ``argv[0]`` or ``entry.module`` is taken instead, else
  the source of another run of the stage.
- Datasets: each ``data`` entry with a recorded xxh3-128 hash: name = its config key (or
  path), digest = the 32 hex digits of the hash, source = its project-relative path.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from .._core._lock import RunLock

__all__ = [
    "DatasetRef",
    "SweepRef",
    "UpstreamRef",
    "datasets_of",
    "is_project_file",
    "source_of",
    "sweep_of",
    "upstream_of",
]

SOURCE_SUFFIXES = (".py", ".ipynb")
DATASET_NAME_MAX = 500  # MLflow's limit
DATASET_SOURCE_TYPE = "local"  # as mlflow.data's LocalArtifactDatasetSource: {"uri": path}
_LIBRARY_DIRS = frozenset({"site-packages", "dist-packages"})
_HASH = re.compile(r"xxh3_128:([0-9a-f]{32})")
_RUN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def is_run_id(value: object) -> bool:
    """Whether ``value`` can be an xpkit run or sweep id (safe inside an MLflow filter)."""
    return isinstance(value, str) and _RUN_ID.fullmatch(value) is not None


# --- source ------------------------------------------------------------------------------


def is_project_file(path: object) -> bool:
    """Whether ``path`` is a project-relative POSIX path of a Python file, not a library's."""
    if not isinstance(path, str) or not path or len(path) > 1000:
        return False
    if "\\" in path or any(ord(c) < 32 for c in path):
        return False
    parts = PurePosixPath(path).parts
    if path.startswith("/") or posixpath.normpath(path) != path or ".." in parts:
        return False
    return not _LIBRARY_DIRS & set(parts) and path.endswith(SOURCE_SUFFIXES)


def source_of(
    lock: RunLock, *, root: Path | None = None, fallback: str | None = None
) -> str | None:
    """The run's script or module, relative to the project; None when nothing tells.

    Args:
        lock: the run's run.lock.
        root: the project root, to accept an ``argv[0]`` that exists there when run.lock
            lists no source files.
        fallback: the source of another run of the same stage.
    """
    entry = lock.extra.get("entry")
    entry = entry if isinstance(entry, Mapping) else {}
    if is_project_file(entry.get("file")):
        return str(entry["file"])
    files = _src_files(lock)
    for wanted in _named_files(lock.argv, entry.get("module")):
        found = [f for f in files if f == wanted or f.endswith("/" + wanted)]
        if len(found) == 1:
            return found[0]
    script = lock.argv[0] if lock.argv else ""
    if not files and root is not None and is_project_file(script) and (root / script).is_file():
        return script
    return fallback if is_project_file(fallback) else None


def _src_files(lock: RunLock) -> list[str]:
    files = (lock.src or {}).get("files")
    return [f for f in files if is_project_file(f)] if isinstance(files, Mapping) else []


def _named_files(argv: Sequence[str], module: object) -> Iterator[str]:
    """Files a run's command line or module names: ``train.py``, ``pkg/train.py``."""
    script = argv[0] if argv else ""
    if script.endswith(SOURCE_SUFFIXES):
        normal = posixpath.normpath(script.replace("\\", "/"))
        if is_project_file(normal):
            yield normal
        yield posixpath.basename(normal)
    if isinstance(module, str) and module and module != "__main__":
        yield module.replace(".", "/") + ".py"
        yield module.replace(".", "/") + "/__init__.py"


# --- datasets ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetRef:
    """One ``data`` entry of run.lock as an MLflow dataset input."""

    name: str
    digest: str
    source: str
    profile: str

    @property
    def key(self) -> tuple[str, str]:
        """What MLflow tells datasets apart by: ``(name, digest)``."""
        return (self.name, self.digest)


def datasets_of(lock: RunLock) -> list[DatasetRef]:
    """The run's hashed inputs (entries without a valid xxh3-128 hash are left out)."""
    refs: dict[tuple[str, str], DatasetRef] = {}
    for name, info in (lock.data or {}).items():
        if not isinstance(info, Mapping):
            continue
        found = _HASH.fullmatch(str(info.get("hash") or ""))
        if found is None:
            continue
        path = info.get("path")
        path = path if isinstance(path, str) and path else str(name)
        profile = {"hash": found.group(0), "files": info.get("files"), "bytes": info.get("bytes")}
        ref = DatasetRef(
            name=_clip(str(name), DATASET_NAME_MAX),
            digest=found.group(1),
            source=json.dumps({"uri": path}),
            profile=json.dumps({k: v for k, v in profile.items() if isinstance(v, (int, str))}),
        )
        refs.setdefault(ref.key, ref)
    return list(refs.values())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- sweeps and upstream runs ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepRef:
    """run.lock ``sweep``: this run is point ``point`` (0-based) of ``total`` of sweep ``id``."""

    id: str
    point: int
    total: int
    values: Mapping[str, Any]


def sweep_of(lock: RunLock) -> SweepRef | None:
    """The sweep the run is a point of, or None (also for a malformed ``sweep`` entry)."""
    sweep = lock.extra.get("sweep")
    if not isinstance(sweep, Mapping) or not is_run_id(sweep.get("id")):
        return None
    point, total = _int(sweep.get("point")), _int(sweep.get("total"))
    if point is None or total is None or not 0 <= point < total:
        return None
    values = sweep.get("values")
    return SweepRef(
        id=str(sweep["id"]),
        point=point,
        total=total,
        values=dict(values) if isinstance(values, Mapping) else {},
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclasses.dataclass(frozen=True)
class UpstreamRef:
    """An upstream run recorded in run.lock: the config key (or path) that named it."""

    key: str
    id: str
    stage: str
    dir: str


def upstream_of(lock: RunLock) -> list[UpstreamRef]:
    """The run's upstream runs (entries without a valid id or stage are left out)."""
    refs = []
    for key, info in (lock.upstream or {}).items():
        if not isinstance(info, Mapping) or not is_run_id(info.get("id")):
            continue
        stage, where = info.get("stage"), info.get("dir")
        if isinstance(stage, str) and stage:
            refs.append(UpstreamRef(str(key), str(info["id"]), stage, str(where or "")))
    return refs
