"""``RunPaths`` names every file inside a run directory; no other code joins those names."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PACKAGE_DIR",
    "RunPaths",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "display_path",
    "point_latest",
]


# xpkit's own directory: frames and modules below it are xpkit's, not the user's
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    def result_json(self) -> Path:
        """``.xpkit/result.json``: the stage's return value, when it is plain data."""
        return self.xpkit_dir / "result.json"

    @property
    def result_pickle(self) -> Path:
        """``.xpkit/result.pickle``: the stage's return value otherwise, signed by the project."""
        return self.xpkit_dir / "result.pickle"

    @property
    def reuses(self) -> Path:
        """``.xpkit/reuses.jsonl``: one line per call that reused this run instead of running."""
        return self.xpkit_dir / "reuses.jsonl"

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

    @property
    def claims(self) -> Path:
        """``tasks/claims/``: one ``<index>.<generation>`` file per task a pool worker took."""
        return self.tasks / "claims"

    def claim_file(self, index: int, generation: int) -> Path:
        """The claim of task ``index``; a stale claim is taken over by the next generation."""
        return self.claims / f"{index}.{generation}"

    @property
    def submitted(self) -> Path:
        """``tasks/submitted``: the submitter wrote its last run.lock; workers may end the run."""
        return self.tasks / "submitted"

    @property
    def finalized(self) -> Path:
        """``tasks/finalized``: created exclusively by the one process that ends the run."""
        return self.tasks / "finalized"

    @property
    def slurm(self) -> Path:
        """``tasks/slurm/``: submitit's job folder (pickles, ``%j`` logs)."""
        return self.tasks / "slurm"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write next to ``path``, moved onto it when the block succeeds.

    Readers see the old content or the new one, never a torn file. No fsync: it costs
    1-15 ms per file (three per run) and only matters on power loss, where ext4 and xfs
    already flush a file replaced by rename.
    """
    # unique per process and thread: concurrent writers never share a temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident():x}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def display_path(path: Path) -> str:
    """``path`` as the user's code sees it: relative to the working directory when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def point_latest(run_dir: Path) -> None:
    """Point ``<stage dir>/latest`` at ``run_dir`` (a relative symlink, replaced atomically)."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}.{threading.get_ident():x}.{run_dir.name}"
    with contextlib.suppress(OSError):
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
    with contextlib.suppress(OSError):
        tmp.unlink()
