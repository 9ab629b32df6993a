"""``Run``: a run directory and what its run.lock says."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core._env import hostname, pid_alive
from .._core._lock import RunLock, load_lock
from .._core._paths import LATEST, RunPaths, is_write_temp
from ..errors import TaskError

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["Run", "process_alive"]


class Run:
    """A run directory: its run.lock, config, metrics, data and upstream runs.

    After an in-process run, ``locals`` holds the stage function's local variables (at its
    return or failure), ``result`` its return value and ``error`` its exception.

    Example:
        >>> run = xp.Run("results/prepare/latest")  # doctest: +SKIP
        >>> run.status, run.config.param, run.metrics["rows"]  # doctest: +SKIP
        >>> run.upstream["prepared"].data["raw"]  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], *, _head: RunLock | None = None) -> None:
        self.dir = _run_dir(path)
        self.paths = RunPaths(self.dir)
        self.locals: dict[str, Any] | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self._lock: RunLock | None = None
        self._head = _head

    @property
    def lock(self) -> RunLock:
        """The run.lock record (read once; see :meth:`reload`).

        Raises:
            LockError: run.lock is missing or invalid.
        """
        if self._lock is None:
            self._lock = load_lock(self.paths.lock)
        return self._lock

    @property
    def _brief(self) -> RunLock:
        """The full lock when read, else its listing sections (no env, upstream, error)."""
        if self._lock is not None:
            return self._lock
        if self._head is None:
            from ._head import read_head  # listing code: not needed to make a run

            self._head = read_head(self.paths.lock)
        return self._head

    def reload(self) -> Run:
        """Forget the cached run.lock so that the next access reads it again."""
        self._lock = None
        self._head = None
        return self

    @property
    def id(self) -> str:
        """The unique run id."""
        return self._brief.id

    @property
    def stage(self) -> str:
        """The stage name."""
        return self._brief.stage

    @property
    def status(self) -> str:
        """``running``, ``completed``, ``failed`` or ``interrupted``.

        A run.lock still saying ``running`` whose process is gone (same host, pid not alive)
        is reported ``interrupted``.
        """
        lock = self._brief
        if lock.status == "running" and not _detached(lock) and process_alive(lock) is False:
            return "interrupted"
        return lock.status

    def task_counts(self) -> dict[str, int] | None:
        """``{total, done, failed}`` of a mapped run (None for a run that is no map).

        While the map runs (or after it died), counted from its done records: run.lock's
        counts are those of its last write, which workers leave to the run's end.
        """
        tasks = self._brief.tasks
        if not isinstance(tasks, Mapping) or "total" not in tasks:
            return None
        recorded = {k: int(tasks.get(k) or 0) for k in ("total", "done", "failed")}
        if self._brief.status != "running":
            return recorded
        from ._taskstate import scan_done

        try:
            return scan_done(self.paths, recorded["total"]).counts()
        except TaskError:
            return recorded

    @property
    def started(self) -> dt.datetime | None:
        """When the run started (timezone-aware), or None when not recorded."""
        return _datetime(self._brief.started)

    @property
    def ended(self) -> dt.datetime | None:
        """When the run ended, or None while running."""
        return _datetime(self._brief.ended)

    @property
    def duration_s(self) -> float | None:
        """Seconds the run took; for a running run, the seconds since it started."""
        lock = self._brief
        if lock.duration_s is not None:
            return float(lock.duration_s)
        started = self.started
        if lock.status == "running" and started is not None and self.status == "running":
            return round((dt.datetime.now(started.tzinfo) - started).total_seconds(), 3)
        return None

    @property
    def commit(self) -> str | None:
        """The commit of the run's code snapshot (``src.commit``), or None."""
        src = self._brief.src
        commit = src.get("commit") if isinstance(src, Mapping) else None
        return commit if isinstance(commit, str) and commit else None

    @property
    def config(self) -> DictConfig:
        """The resolved config, as an OmegaConf ``DictConfig``."""
        from omegaconf import OmegaConf

        return OmegaConf.create(dict(self._brief.config))

    @property
    def metrics(self) -> dict[str, Any]:
        """The last value of each metric."""
        return dict(self._brief.metrics or {})

    @property
    def root(self) -> Path:
        """The project root that the paths recorded in run.lock are relative to.

        Found from the run's own location (its directory ends with the recorded ``dir``),
        so that it holds from any working directory; else the current project's root.
        """
        recorded = Path(self._brief.dir)
        parts = recorded.parts
        if not recorded.is_absolute() and parts and self.dir.parts[-len(parts) :] == parts:
            return Path(*self.dir.parts[: -len(parts)])
        from .._core._settings import load_settings

        return load_settings().root

    @property
    def data(self) -> dict[str, Path]:
        """The tracked data: name (config key, or path) -> absolute path."""
        data = self._brief.data or {}
        root = self.root
        out: dict[str, Path] = {}
        for name, entry in data.items():
            path = entry.get("path", name) if isinstance(entry, Mapping) else name
            out[str(name)] = root / str(path)
        return out

    @property
    def upstream(self) -> dict[str, Run]:
        """The upstream runs this run consumed: config key (or path) -> ``Run``."""
        root = self.root
        out: dict[str, Run] = {}
        for key, recorded in (self.lock.upstream or {}).items():
            where = recorded.get("dir") if isinstance(recorded, Mapping) else None
            if isinstance(where, str) and where:
                out[str(key)] = Run(root / where)
        return out

    def files(self) -> list[Path]:
        """Every file below the run directory, sorted.

        Left out: xpkit's private ``.xpkit/``, and the temporary files of atomic writes a
        killed writer left (:func:`~xpkit._core._paths.is_write_temp`): never results.
        """
        found: list[Path] = []
        for parent, dirs, names in os.walk(self.dir):
            dirs[:] = sorted(d for d in dirs if d != self.paths.xpkit_dir.name)
            found += [Path(parent, n) for n in names if not is_write_temp(n)]
        return sorted(found)

    def metric_history(self) -> Iterator[Mapping[str, Any]]:
        """Every record of metrics.jsonl: ``{"time", "step", "metrics"}``.

        Lines that are not such a record are skipped: one torn by a crash mid-write, bytes
        that are not UTF-8, a record whose ``metrics`` is not a mapping.
        """
        import json

        try:
            f = self.paths.metrics.open("rb")
        except (FileNotFoundError, NotADirectoryError):
            return
        with f:
            for line in f:
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):  # torn, not UTF-8, nested too deep
                    continue
                if isinstance(record, dict) and isinstance(record.get("metrics"), dict):
                    yield record

    def __repr__(self) -> str:
        try:
            where = str(self.dir)
            return f"Run({self.stage!r}, id={self.id!r}, status={self.status!r}, dir={where!r})"
        except Exception:
            return f"Run(dir={str(self.dir)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.dir == self.dir

    def __hash__(self) -> int:
        return hash(self.dir)


def _run_dir(path: str | os.PathLike[str]) -> Path:
    """The absolute run directory; a ``latest`` link is followed one step, lexically."""
    p = Path(os.path.abspath(path))
    if p.name == LATEST and p.is_symlink():
        p = Path(os.path.abspath(p.parent / os.readlink(p)))
    return p


def _datetime(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _detached(lock: RunLock) -> bool:
    """A map handed to Slurm: its submitting process exits at once, its jobs run it (and
    the last of them, or ``xp tasks --wait``, ends it)."""
    tasks = lock.tasks
    return isinstance(tasks, Mapping) and bool(tasks.get("jobs"))


def process_alive(lock: RunLock) -> bool | None:
    """Whether the process that wrote ``lock`` is alive; None when this host cannot tell.

    None for a process of another host, a lock without pid, or Windows (where
    ``os.kill(pid, 0)`` would end the process).
    """
    if lock.pid is None or lock.host != hostname():
        return None
    return pid_alive(lock.pid)
