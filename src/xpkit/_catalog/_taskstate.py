"""Reading a mapped run's task bookkeeping: its task list and its done records.

What ``xp ls``, ``xp show`` and ``xp tasks`` need to agree on a map's progress, in the
layer that reads run directories; the writing side is ``_parallel/_tasks.py``. Files under
``<run>/tasks/`` (names from :class:`~xpkit._core._paths.RunPaths`): ``todo.jsonl`` holds
``{"i": index, "task": value}`` per line; ``done/<worker>.jsonl`` holds ``{"i", "status":
"ok"|"failed", "duration_s", "time", "error"?}`` records appended by one process each.

A task counts as done when any record says ``ok``; as failed when it has failed records
and no ``ok``. A torn last line (a writer killed mid-write) is skipped.
"""

from __future__ import annotations

import json
import math
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core._paths import RunPaths
from ..errors import TaskError

__all__ = ["DoneScanner", "TaskState", "TodoList", "read_todo", "scan_done", "summary"]


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
