"""``RunPaths`` names every file inside a run directory; no other code joins those names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunPaths", "atomic_write_bytes", "atomic_write_text"]


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory."""

    dir: Path

    @property
    def lock(self) -> Path:
        """``run.lock``: everything that made the run."""
        return self.dir / "run.lock"

    @property
    def config(self) -> Path:
        """``config.yaml``: the resolved config."""
        return self.dir / "config.yaml"

    @property
    def log(self) -> Path:
        """``run.log``: the logger's records and the captured stdout/stderr."""
        return self.dir / "run.log"

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: one JSON object per ``log_metrics`` call."""
        return self.dir / "metrics.jsonl"

    @property
    def xpkit_dir(self) -> Path:
        """``.xpkit/``: private bookkeeping (data manifests, sync state)."""
        return self.dir / ".xpkit"

    @property
    def manifests(self) -> Path:
        """``.xpkit/manifests/``: per-file hash manifests of tracked data directories."""
        return self.xpkit_dir / "manifests"

    @property
    def mlflow_state(self) -> Path:
        """``.xpkit/mlflow.json``: per tracking store, the MLflow run id and the sync cursor."""
        return self.xpkit_dir / "mlflow.json"

    @property
    def mlflow_log(self) -> Path:
        """``.xpkit/mlflow.log``: output of the detached process syncing the run at its end."""
        return self.xpkit_dir / "mlflow.log"

    @property
    def tasks(self) -> Path:
        """``tasks/``: task bookkeeping of a mapped run."""
        return self.dir / "tasks"

    @property
    def todo(self) -> Path:
        """``tasks/todo.jsonl``: the task list, written once."""
        return self.tasks / "todo.jsonl"

    @property
    def done(self) -> Path:
        """``tasks/done/``: one append-only ``<worker>.jsonl`` of records per worker."""
        return self.tasks / "done"

    def done_file(self, worker: str) -> Path:
        """The done/failed records of one worker."""
        return self.done / f"{worker}.jsonl"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a unique temporary file and ``os.replace``.

    Readers see the old content or the new one, never a torn file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data):x}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
