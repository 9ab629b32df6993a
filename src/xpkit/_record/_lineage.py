"""Lineage: the ``upstream`` section of run.lock, its recorder, and what changed since.

A stage declares ``upstream=["prepared"]``: the config key ``prepared`` holds the run it
consumes (a run directory, a ``latest`` link, a run id prefix or a stage name). Before the
run directory exists, :class:`UpstreamRecorder` resolves it and refuses a missing run or one
that did not complete. The body sees the resolved directory in its config, and run.lock
records that run's whole run.lock (which holds its own ``upstream``: the lineage is
recursive). ``xp.use_run(path)`` does the same for runs found while the body runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._catalog._head import read_head
from .._catalog._run import Run
from .._catalog._runs import resolve_run
from .._core._paths import RunPaths, display_path
from ..errors import LockError, RunNotFoundError, UpstreamError

if TYPE_CHECKING:
    from .._core._settings import Settings
    from ._plan import RecordingRun, RunPlan

__all__ = [
    "LineageNode",
    "UpstreamChange",
    "UpstreamRecorder",
    "consume",
    "lineage",
    "upstream_changes",
]

_UNSET: Any = object()


class UpstreamRecorder:
    """``upstream``: the run.lock of every run this run consumed, keyed by config key or path.

    Consumed are: the runs named by the stage's upstream config keys, the runs given to
    ``xp.use_run``, and the runs of stages called inside this run's body.
    """

    key = "upstream"

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._run: RecordingRun | None = None
        self._consumed: dict[str, Mapping[str, Any]] = {}

    def prepare(self, plan: RunPlan) -> dict[str, str]:
        """Resolve each upstream config key; raise :class:`UpstreamError` on a bad one.

        Returns the config updates that give the body (and run.lock) the resolved run
        directory of a ``latest`` link or an id prefix.
        """
        from omegaconf import OmegaConf

        self._settings = plan.settings
        updates: dict[str, str] = {}
        for key in plan.stage.upstream:
            value = OmegaConf.select(plan.config, key, default=_UNSET)
            if value is _UNSET:
                msg = (
                    f"upstream config key {key!r} is not in the config of stage {plan.stage.name!r}"
                )
                raise UpstreamError(msg)
            run = consume(f"upstream {key}", value, settings=plan.settings)
            self._consumed[key] = run.lock.to_dict()
            if not _names_dir(value, run.dir, plan.settings):
                updates[key] = display_path(run.dir)
        return updates

    def start(self, run: RecordingRun) -> None:
        self._run = run
        if self._consumed:
            run.publish(self.key, dict(self._consumed))

    def use(self, name: str, path: str | os.PathLike[str]) -> Run:
        """Record the run at ``path`` as consumed (for ``xp.use_run``) and return it.

        Raises:
            UpstreamError: no such run, or it did not complete.
        """
        settings = self._settings
        run = consume(f"xp.use_run({name!r})", path, settings=settings)
        key = settings.relative(run.dir) if settings is not None else str(run.dir)
        self.add(key, run.lock.to_dict())
        return run

    def add(self, key: str, lock: Mapping[str, Any]) -> None:
        """Record a consumed run's lock under ``key`` (a stage called inside the body)."""
        self._consumed[key] = lock
        if self._run is not None:
            self._run.publish(self.key, dict(self._consumed))

    def finish(self, run: RecordingRun) -> Any:
        """``{key_or_path: that run's whole run.lock}``, or None when nothing was consumed."""
        return dict(self._consumed) or None


def consume(what: str, spec: Any, *, settings: Settings | None = None) -> Run:
    """The completed run named by ``spec``, with its full run.lock read.

    Raises:
        UpstreamError: ``spec`` is empty, names no run, or a run that did not complete.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        msg = f"{what} is empty: set it to a run directory, a latest link or a run id prefix"
        raise UpstreamError(msg)
    if not isinstance(spec, (str, os.PathLike)):
        msg = f"{what} must be a run directory or run id, got {type(spec).__name__}: {spec!r}"
        raise UpstreamError(msg)
    try:
        run = resolve_run(spec, settings=settings)
        lock = run.lock
    except (RunNotFoundError, LockError) as e:
        msg = f"{what} = {os.fspath(spec)!r}: {e}"
        raise UpstreamError(msg) from None
    if run.status != "completed":
        msg = (
            f"{what} = {os.fspath(spec)!r} is run {lock.id} of stage {lock.stage!r} "
            f"({lock.dir}) with status {run.status}; only a completed run can be consumed"
        )
        raise UpstreamError(msg)
    return run


def _names_dir(value: Any, run_dir: Path, settings: Settings) -> bool:
    """True when ``value`` is already a path of ``run_dir`` itself (not a link, not an id)."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        return False
    for candidate in (Path(value), settings.resolve(value)):
        if candidate.exists() and Path(os.path.abspath(candidate)) == run_dir:
            return True
    return False


@dataclass(frozen=True)
class UpstreamChange:
    """An upstream whose run.lock no longer matches what the consuming run recorded."""

    trail: tuple[str, ...]  # the keys from the run down to this upstream
    dir: str
    what: str

    def __str__(self) -> str:
        return f"upstream {' > '.join(self.trail)} ({self.dir}) changed since consumed: {self.what}"


def upstream_changes(run: Run) -> list[UpstreamChange]:
    """Every upstream (recursively) whose current run.lock differs from the recorded one.

    Compared: the run id, status and end time, and the data hashes when recorded.
    """
    root = run.root
    changes: list[UpstreamChange] = []
    seen: set[str] = set()
    for trail, recorded in _walk(run.lock.upstream or {}, ()):
        where = recorded.get("dir")
        if not isinstance(where, str) or where in seen:
            continue
        seen.add(where)
        what = _difference(recorded, root / where)
        if what:
            changes.append(UpstreamChange(trail, where, what))
    return changes


def _walk(
    upstream: Mapping[str, Any], trail: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Mapping[str, Any]]]:
    for key, recorded in upstream.items():
        if isinstance(recorded, Mapping):
            yield (*trail, str(key)), recorded
            yield from _walk(recorded.get("upstream") or {}, (*trail, str(key)))


def _difference(recorded: Mapping[str, Any], run_dir: Path) -> str:
    try:
        current = read_head(RunPaths(run_dir).lock)
    except LockError:
        return "its run.lock is missing or unreadable"
    if current.id != recorded.get("id"):
        return f"now holds another run ({recorded.get('id')} -> {current.id})"
    reasons = []
    if current.status != recorded.get("status"):
        reasons.append(f"status {recorded.get('status')} -> {current.status}")
    if current.ended != recorded.get("ended"):
        reasons.append(f"ended {recorded.get('ended')} -> {current.ended}")
    before, after = _hashes(recorded.get("data")), _hashes(current.data)
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name):
            reasons.append(f"data {name} changed")
    return "; ".join(reasons)


def _hashes(data: Any) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        return {}
    return {str(k): v.get("hash") if isinstance(v, Mapping) else v for k, v in data.items()}


@dataclass(frozen=True)
class LineageNode:
    """One run of a lineage tree, as recorded by the run that consumed it."""

    key: str | None  # the config key or path it was consumed under (None for the root)
    lock: Mapping[str, Any]
    children: list[LineageNode] = field(default_factory=list)
    change: str = ""  # how its current run.lock differs from the recorded one, if at all


def lineage(run: Run) -> LineageNode:
    """The tree of upstream runs of ``run``, from the locks it recorded (recursively)."""
    changes = {c.trail: c.what for c in upstream_changes(run)}

    def build(key: str | None, lock: Mapping[str, Any], trail: tuple[str, ...]) -> LineageNode:
        children = [
            build(str(k), v, (*trail, str(k)))
            for k, v in (lock.get("upstream") or {}).items()
            if isinstance(v, Mapping)
        ]
        return LineageNode(key, lock, children, changes.get(trail, ""))

    return build(None, run.lock.to_dict(), ())
