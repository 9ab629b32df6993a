"""Task bookkeeping of a mapped run: the task list, per-worker records, ending the run.

Reading them back (``TodoList``, ``DoneScanner``, ``scan_done``) is ``_catalog/_taskstate.py``,
re-exported here.

Files under ``<run>/tasks/`` (names from :class:`~xpkit._paths.RunPaths`)::

    todo.jsonl            {"i": index, "task": value} per line; written once, atomically
    done/<worker>.jsonl   {"i", "status": "ok"|"failed", "duration_s", "time", "error"?}
                          appended by ONE process only, flushed after every task
    claims/<i>.<gen>      pool mode only: who took task i (see ``_slurm.py``)
    submitted, finalized  markers: the submitter is done writing; one process ended the run

Durability: a record is flushed to the OS after each task, so killing any process (even
with SIGKILL) loses at most the task it was running, which a resume simply runs again.
Records are not fsynced per task (1.7 ms each, measured: 10x a trivial task); a worker
fsyncs its file after each batch, which only matters if the machine itself goes down.

A task counts as done when any record says ``ok``; as failed when it has failed records
and no ``ok``. A torn last line (a writer killed mid-write) is skipped, and a writer
re-opening a file that does not end with a newline starts a fresh line first.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from .._catalog._run import Run
from .._catalog._taskstate import DoneScanner, TaskState, TodoList, read_todo, scan_done, summary
from .._core import _config
from .._core._env import hostname
from .._core._lock import load_lock, now, write_lock
from .._core._paths import RunPaths, atomic_write_text
from .._execute._ending import end_lock
from ..errors import ConfigError, LockError, TaskError

__all__ = [  # the reading side lives in _catalog/_taskstate.py, re-exported here
    "DoneLog",
    "DoneScanner",
    "TaskConfigs",
    "TaskState",
    "TodoList",
    "finalize",
    "job_name",
    "last_metrics",
    "local_worker_id",
    "read_todo",
    "scan_done",
    "summary",
    "task_config",
    "try_finalize",
    "worker_id",
    "write_todo",
]


def write_todo(paths: RunPaths, tasks: Sequence[Any]) -> None:
    """Write the task list once, atomically (``tasks/todo.jsonl``).

    Raises:
        TaskError: a task is not a JSON value (mapping, list, string, number, bool, None).
    """
    paths.done.mkdir(parents=True, exist_ok=True)
    encode = json.JSONEncoder(default=_json_default).encode
    lines = []
    for i, task in enumerate(tasks):
        try:
            lines.append(f'{{"i": {i}, "task": {encode(task)}}}\n')
        except (TypeError, ValueError) as e:
            msg = f"task {i} cannot be stored as JSON ({e}); tasks must be JSON-like values"
            raise TaskError(msg) from None
    atomic_write_text(paths.todo, "".join(lines))


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    msg = f"{type(value).__name__} is not JSON serializable"
    raise TypeError(msg)


def local_worker_id() -> str:
    """``<host>-<pid>``: unique among the processes of one machine."""
    return f"{hostname().split('.')[0]}-{os.getpid()}"


def job_name() -> str:
    """``<jobid>_<arrayindex>`` (``.r<n>`` after the n-th requeue) or ``<jobid>`` inside a
    Slurm job; this process's ``<host>-<pid>`` elsewhere."""
    env = os.environ
    array = env.get("SLURM_ARRAY_JOB_ID")
    name = f"{array}_{env.get('SLURM_ARRAY_TASK_ID')}" if array else env.get("SLURM_JOB_ID")
    if not name:
        return local_worker_id()
    restarts = env.get("SLURM_RESTART_COUNT", "0")
    return f"{name}.r{restarts}" if restarts not in ("", "0") else name


def worker_id() -> str:
    """The name of this process's record file: ``<host>-<pid>``, after the Slurm job's name
    (``<job>-<host>-<pid>``) inside a job, where several processes share a job."""
    local = local_worker_id()
    job = job_name()
    return local if job == local else f"{job}-{local}"


class DoneLog:
    """The append-only record file of one worker (one process)."""

    def __init__(self, paths: RunPaths, worker: str) -> None:
        paths.done.mkdir(parents=True, exist_ok=True)
        self.path = paths.done_file(worker)
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        if self._file.tell() and not _ends_with_newline(self.path):
            self._file.write(b"\n")  # a previous writer was killed mid-line

    def record(
        self,
        index: int,
        status: str,
        duration_s: float,
        *,
        error: Mapping[str, str] | None = None,
    ) -> None:
        """Append one record and flush it to the OS."""
        entry: dict[str, Any] = {
            "i": index,
            "status": status,
            "duration_s": round(duration_s, 6),
            "time": round(time.time(), 3),
        }
        if error is not None:
            entry["error"] = dict(error)
        self._file.write(json.dumps(entry).encode() + b"\n")
        self._file.flush()

    def sync(self) -> None:
        """fsync the file (at the end of a batch, not per task)."""
        with contextlib.suppress(OSError, ValueError):
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Sync and close."""
        if not self._file.closed:
            self.sync()
            self._file.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class TaskConfigs:
    """Makes the config of each task from the map's resolved config, cheaply.

    Copying the base through pickle costs ~60 us (``deepcopy`` ~190 us, ``OmegaConf.merge``
    ~350 us, measured); top-level values are then set one by one, type-checked by OmegaConf.
    """

    def __init__(self, base: DictConfig, key: str | None) -> None:
        self._base = base
        self._classes: list[type] = []
        buffer = io.BytesIO()
        _ClassRefPickler(buffer, self._classes).dump(base)
        self._blob = buffer.getvalue()
        self._key = key

    def __call__(self, task: Any, index: int) -> DictConfig:
        """The config of task ``index``: ``task`` merged into the base, or set at ``key``.

        Raises:
            ConfigError: the task names an unknown key or has the wrong type.
        """
        if self._key is None and not isinstance(task, Mapping):
            msg = (
                f"task {index} is a {type(task).__name__}, not a mapping of config keys; "
                "give key=... (--task-key KEY) to set each task at one config key"
            )
            raise ConfigError(msg)
        cfg: DictConfig = _ClassRefUnpickler(io.BytesIO(self._blob), self._classes).load()
        try:
            if self._key is not None:
                OmegaConf.update(cfg, self._key, task, merge=True)
                return cfg
            for name, value in task.items():
                OmegaConf.update(cfg, str(name), value, merge=True)
        except oc_errors.OmegaConfBaseException:
            self._raise_config_error(task, index)
        return cfg

    def _raise_config_error(self, task: Any, index: int) -> None:
        layer = task if self._key is None else _nested(self._key, task)
        _config.merge_layer(self._base, layer, source=f"task {index}")
        msg = f"task {index} does not fit the config: {task!r}"
        raise ConfigError(msg)


class _ClassRefPickler(pickle.Pickler):
    """Keeps classes out of the pickle: a worker's config class may live in a ``__main__``
    it cannot import (joblib and submitit ship it by value)."""

    def __init__(self, file: io.BytesIO, classes: list[type]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._classes = classes

    def persistent_id(self, obj: Any) -> int | None:
        if isinstance(obj, type):
            self._classes.append(obj)
            return len(self._classes) - 1
        return None


class _ClassRefUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, classes: list[type]) -> None:
        super().__init__(file)
        self._classes = classes

    def persistent_load(self, pid: Any) -> Any:
        return self._classes[pid]


def _nested(key: str, value: Any) -> dict[str, Any]:
    *parents, leaf = key.split(".")
    layer: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        layer = {part: layer}
    return layer


def task_config(base: DictConfig, task: Any, key: str | None, index: int) -> DictConfig:
    """The config of one task (see :class:`TaskConfigs`)."""
    return TaskConfigs(base, key)(task, index)


def last_metrics(paths: RunPaths) -> dict[str, Any]:
    """The last value of each metric in metrics.jsonl (every worker appends to it); torn,
    undecodable or ill-shaped lines are skipped."""
    values: dict[str, Any] = {}
    for record in Run(paths.dir).metric_history():
        values.update(record["metrics"])
    return values


def try_finalize(paths: RunPaths, *, wait_submitted_s: float = 300.0) -> bool:
    """End the run if every task has a record and no one else did; True when this call did.

    The submitter creates ``tasks/submitted`` after its last run.lock write; ending the run
    before that would be overwritten, so this waits for it (up to ``wait_submitted_s``).
    """
    total = len(read_todo(paths))
    state = scan_done(paths, total)
    if state.left:
        return False
    deadline = time.monotonic() + wait_submitted_s
    while not paths.submitted.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not _claim_marker(paths.finalized):
        return False
    finalize(paths, scan_done(paths, total))
    return True


def _claim_marker(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{local_worker_id()} {now().isoformat()}\n")
    return True


def finalize(paths: RunPaths, state: TaskState, *, force: bool = False) -> None:
    """End a mapped run from its records, on behalf of its owner: status, tasks, metrics.

    With ``force`` (the jobs are gone) the run ends even when tasks never ran: ``interrupted``.
    """
    if force and not _claim_marker(paths.finalized):
        return
    lock = load_lock(paths.lock)
    status, error = "completed", None
    if state.failed or state.left:
        status = "failed" if state.failed else "interrupted"
        error = {"type": "xpkit.errors.TasksFailed", "message": summary(state), "traceback": ""}
    ended = end_lock(
        lock,
        status=status,
        error=error,
        metrics={**(lock.metrics or {}), **last_metrics(paths)},
        tasks={**(lock.tasks or {}), **state.counts()},
    )
    write_lock(paths.lock, ended)
    line = f"run {lock.id} {status}: {state.done} of {state.total} tasks done"
    with contextlib.suppress(OSError), open(paths.log, "ab") as f:
        f.write(f"{now():%H:%M:%S} INFO [{lock.stage}] {line}\n".encode())


def load_map_lock(paths: RunPaths) -> Any:
    """The run.lock of a mapped run.

    Raises:
        TaskError: the run.lock is unreadable or the run is not a mapped run.
    """
    try:
        lock = load_lock(paths.lock)
    except LockError as e:
        raise TaskError(str(e)) from None
    if not lock.tasks or not paths.todo.exists():
        msg = f"{paths.dir} is not a mapped run (no tasks in its run.lock)"
        raise TaskError(msg)
    return lock
