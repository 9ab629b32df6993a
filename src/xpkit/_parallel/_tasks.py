"""Task bookkeeping of a mapped run: the task list, per-worker records, and reading them back.

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
import math
import os
import pickle
import time
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from .._catalog._run import Run
from .._core import _config
from .._core._env import hostname
from .._core._lock import load_lock, now, write_lock
from .._core._paths import RunPaths, atomic_write_text
from .._execute._ending import end_lock
from ..errors import ConfigError, LockError, TaskError

__all__ = [
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


class TodoList(Sequence[Any]):
    """The task list of a mapped run: each line checked when read, parsed when first used.

    Raises:
        TaskError: (when built, or when a task is first used) a line is not UTF-8, not a
            ``{"i": index, "task": value}`` record, or holds another index than its place.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            where = raw.count(b"\n", 0, e.start) + 1
            msg = f"{path} line {where}: not UTF-8 text (byte 0x{raw[e.start]:02x})"
            raise TaskError(msg) from None
        self._lines = [line for line in raw.splitlines() if line.strip()]
        self._parsed: dict[int, Any] = {}
        for i, line in enumerate(self._lines):  # ~0.2 us a line; json.loads would take ~2.5
            if not (line.startswith(b'{"i": %d, "task": ' % i) and line.endswith(b"}")):
                self._parse(i)  # not as write_todo wrote it: check it now

    def __len__(self) -> int:
        return len(self._lines)

    @typing.overload
    def __getitem__(self, index: int) -> Any: ...

    @typing.overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if index not in self._parsed:
            self._parse(index)
        return self._parsed[index]

    def _parse(self, index: int) -> None:
        where = f"{self._path} line {index + 1}"
        try:
            record = json.loads(self._lines[index])
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict) or "task" not in record:
            msg = f'{where}: not a task record {{"i": {index}, "task": ...}}'
            raise TaskError(msg)
        if record.get("i") != index or isinstance(record.get("i"), bool):
            msg = f"{where}: expected task {index}, got {record.get('i')!r}"
            raise TaskError(msg)
        self._parsed[index] = record["task"]


def read_todo(paths: RunPaths) -> TodoList:
    """The task list of a mapped run, in index order (parsed lazily).

    Raises:
        TaskError: the run has no readable ``tasks/todo.jsonl``, or a line of it is invalid.
    """
    try:
        return TodoList(paths.todo)
    except OSError as e:
        msg = f"{paths.dir} is not a mapped run: cannot read {paths.todo.name} ({e.strerror})"
        raise TaskError(msg) from None


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


@dataclass
class TaskState:
    """What the records say: which tasks are done, which failed, when records were written."""

    total: int
    ok: set[int] = field(default_factory=set)
    failed: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    ok_records: int = 0
    first_time: float | None = None
    last_time: float | None = None

    @property
    def done(self) -> int:
        """Tasks with an ``ok`` record."""
        return len(self.ok)

    @property
    def left(self) -> int:
        """Tasks with no record at all."""
        return self.total - len(self.ok) - len(self.failed)

    def pending(self) -> list[int]:
        """Indices still to run on a resume: failed and missing ones."""
        return [i for i in range(self.total) if i not in self.ok]

    def missing(self) -> list[int]:
        """Indices with no record."""
        return [i for i in range(self.total) if i not in self.ok and i not in self.failed]

    def counts(self) -> dict[str, int]:
        """The ``tasks`` counts of run.lock."""
        return {"total": self.total, "done": self.done, "failed": len(self.failed)}

    def add(self, record: Mapping[str, Any]) -> None:
        """Take one record into account."""
        i = record.get("i")
        if not isinstance(i, int) or not 0 <= i < self.total:
            return
        if record.get("status") == "ok":
            self.ok_records += 1
            self.ok.add(i)
            self.failed.pop(i, None)
        elif i not in self.ok:
            self.failed[i] = record
        when = record.get("time")
        if isinstance(when, (int, float)):
            self.first_time = when if self.first_time is None else min(self.first_time, when)
            self.last_time = when if self.last_time is None else max(self.last_time, when)


class DoneScanner:
    """Reads the done records incrementally: each refresh reads only bytes added since."""

    def __init__(self, paths: RunPaths, total: int) -> None:
        self._paths = paths
        self._offsets: dict[str, int] = {}
        self.state = TaskState(total)

    def refresh(self) -> TaskState:
        """Read new complete lines of every worker's file; return the updated state."""
        try:
            names = sorted(os.listdir(self._paths.done))
        except FileNotFoundError:
            return self.state
        for name in names:
            if name.endswith(".jsonl"):
                self._read(name)
        return self.state

    def _read(self, name: str) -> None:
        offset = self._offsets.get(name, 0)
        path = self._paths.done / name
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError as e:
            msg = f"cannot read the task records {path} ({e.strerror or e})"
            raise TaskError(msg) from None
        end = data.rfind(b"\n") + 1  # a torn last line stays unread
        lines = [line for line in data[:end].splitlines() if line.strip()]
        try:  # one parse for the whole file: 3x faster than one per line
            records = json.loads(b"[" + b",".join(lines) + b"]")
        except (ValueError, RecursionError):
            records = [_parse(line) for line in lines]
        for record in records:
            if _is_record(record):
                self.state.add(record)
        self._offsets[name] = offset + end


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None  # the torn line of a killed writer (completed by a newline later), or garbage


def _is_record(record: Any) -> bool:
    """A done record as :class:`DoneLog` writes it; anything else (a hand edit) is skipped."""
    if not isinstance(record, dict):
        return False
    i, error, when = record.get("i"), record.get("error"), record.get("time")
    return (
        isinstance(i, int)
        and not isinstance(i, bool)
        and isinstance(record.get("status"), str)
        and (error is None or isinstance(error, dict))
        and (when is None or (type(when) in (int, float) and math.isfinite(when)))
    )


def scan_done(paths: RunPaths, total: int) -> TaskState:
    """The state of every task of a mapped run, from its done records."""
    return DoneScanner(paths, total).refresh()


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


def summary(state: TaskState) -> str:
    """``"3 of 1000 tasks failed (first: task 17: ValueError: bad)"`` and the like."""
    parts = []
    if state.failed:
        first = min(state.failed)
        err = state.failed[first].get("error") or {}
        parts.append(
            f"{len(state.failed)} of {state.total} tasks failed "
            f"(first: task {first}: {err.get('type', '?')}: {err.get('message', '')})"
        )
    if state.left:
        parts.append(f"{state.left} of {state.total} tasks never ran")
    return "; ".join(parts)


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
