"""``RunPaths`` names every file inside a run directory; no other code joins those names."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._env import hostname, pid_alive

__all__ = [
    "CONFIG",
    "LATEST",
    "LOCK",
    "LOG",
    "METRICS",
    "PACKAGE_DIR",
    "RunPaths",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "display_path",
    "is_write_temp",
    "latest_link",
    "point_latest",
    "sweep_temps",
]


# xpkit's own directory: frames and modules below it are xpkit's, not the user's
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


LOCK = "run.lock"
CONFIG = "config.yaml"
LOG = "run.log"
METRICS = "metrics.jsonl"
LATEST = "latest"
"""The names of a run directory's files, and of its stage's link to the newest run."""


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory."""

    dir: Path

    @property
    def lock(self) -> Path:
        """``run.lock``: everything that made the run."""
        return self.dir / LOCK

    @property
    def config(self) -> Path:
        """``config.yaml``: the resolved config."""
        return self.dir / CONFIG

    @property
    def log(self) -> Path:
        """``run.log``: the logger's records and the captured stdout/stderr."""
        return self.dir / LOG

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: one JSON object per ``log_metrics`` call."""
        return self.dir / METRICS

    @property
    def latest(self) -> Path:
        """``<stage dir>/latest``: the link to the stage's newest run, beside this one."""
        return latest_link(self.dir.parent)

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


# ``.<name>~<host>~<pid>~<thread>.tmp``: who writes it, so that a leftover can be judged
_TEMP = re.compile(r"\.(?P<name>.+)~(?P<host>[^~/]*)~(?P<pid>[0-9]+)~[0-9a-f]+\.tmp")
# the names of xpkit before the host was added: ``.<name>.<pid>.<thread>.tmp``
_OLD_TEMP = re.compile(r"\..+\.[0-9]+\.[0-9a-f]+\.tmp")
# a temp file untouched this long has no live writer, whoever made it (another host)
_STALE_TEMP_S = 3600.0
_swept: set[str] = set()  # directories whose leftovers this process removed already
_swept_mutex = threading.Lock()


def is_write_temp(name: str) -> bool:
    """Whether a file name is the temporary file of an atomic write (:func:`atomic_path`).

    Such a file is never a result: one left by a killed writer is neither listed
    (``Run.files``) nor pushed; the next atomic write into its directory removes it.
    """
    return name.endswith(".tmp") and bool(_TEMP.fullmatch(name) or _OLD_TEMP.fullmatch(name))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write next to ``path``, moved onto it when the block succeeds.

    Readers see the old content or the new one, never a torn file. No fsync: it costs
    1-15 ms per file (three per run) and only matters on power loss, where ext4 and xfs
    already flush a file replaced by rename. The first write of a process into a directory
    removes the temporary files killed writers left there (see :func:`sweep_temps`).
    """
    _sweep_once(path.parent)
    # unique per host, process and thread: concurrent writers never share a temporary file
    tmp = path.with_name(f".{path.name}~{_host()}~{os.getpid()}~{threading.get_ident():x}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sweep_temps(directory: Path) -> list[Path]:
    """Remove the temporary files of atomic writes whose writer is dead; return them.

    A writer is dead when its file names this host and a pid that is not alive, or when the
    file was not modified for an hour (a writer on another host, or an older name).
    """
    try:
        entries = [e for e in os.scandir(directory) if is_write_temp(e.name)]
    except OSError:
        return []
    removed = []
    for entry in entries:
        if _stale(entry):
            with contextlib.suppress(OSError):  # gone already, or not ours to remove
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _stale(entry: os.DirEntry[str]) -> bool:
    m = _TEMP.fullmatch(entry.name)
    if m is not None and m["host"] == _host() and pid_alive(int(m["pid"])) is False:
        return True
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > _STALE_TEMP_S
    except OSError:
        return False


def _sweep_once(directory: Path) -> None:
    key = os.path.abspath(directory)
    with _swept_mutex:
        if key in _swept:
            return
        _swept.add(key)
    sweep_temps(directory)


def _host() -> str:
    return hostname().replace("~", "-").replace("/", "-")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def latest_link(stage_dir: Path) -> Path:
    """The ``latest`` link of a stage's directory of runs."""
    return stage_dir / LATEST


def point_latest(run_dir: Path) -> None:
    """Point ``<run_dir.parent>/latest`` at ``run_dir.name``, atomically (a relative link).

    Raises:
        OSError: the link cannot be made (``latest`` is a directory, a read-only place...).
    """
    tmp = run_dir.parent / f".latest.{os.getpid()}.{threading.get_ident():x}.{run_dir.name}"
    try:
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, latest_link(run_dir.parent))
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def display_path(path: Path) -> str:
    """``path`` as the user's code sees it: relative to the working directory when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
