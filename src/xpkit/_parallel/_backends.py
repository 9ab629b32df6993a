"""Backends: how the items of a map (tasks) or of a sweep (points) are run.

A map and a sweep each describe their items as a :class:`Work`: a picklable object whose
``run(indices)`` runs some items in the current process and says what each came to, as a
:class:`Done`. A :class:`Backend` decides where ``run`` is called: here, one item at a time
(``serial``), in local processes (``joblib``), or in Slurm jobs (``slurm``, detached: the
jobs go on after the submitting process returns, and the work ends itself). A new backend is
one module with one class, named in ``_registry.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._record._codetree import CodeTree

__all__ = [
    "Backend",
    "Done",
    "OnDone",
    "Submitted",
    "Work",
    "available_cpus",
    "batches",
    "chunks",
    "nothing",
]

_BATCHES_PER_PROCESS = 8


@dataclass(frozen=True)
class Done:
    """What one item (a map's task, a sweep's point) came to: one shape for every backend.

    ``value`` is the task's return value, or the run directory of a sweep point (also when
    it failed). ``exception`` and ``locals`` are only kept for items run in this process.
    """

    index: int
    ok: bool
    value: Any = None
    error: Mapping[str, str] | None = None
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    locals: dict[str, Any] | None = field(default=None, compare=False, repr=False)


OnDone = Callable[[Done], bool]
"""Told of each item as it ends; returns True to stop (serial backend only)."""


@dataclass(frozen=True)
class Submitted:
    """Work handed over to a cluster: it goes on without this process."""

    jobs: tuple[str, ...]
    details: Mapping[str, Any]  # how it was split (recorded in run.lock ``tasks``)


class Work(Protocol):
    """The items of a map or a sweep; picklable, so that any process can run some."""

    @property
    def label(self) -> str:
        """A short name for jobs (the stage name)."""

    @property
    def folder(self) -> Path:
        """Where a cluster backend keeps its job files."""

    @property
    def root(self) -> Path:
        """The project root (jobs start there)."""

    @property
    def code(self) -> CodeTree | None:
        """The code tree the items import the project's code from (None: the live tree)."""

    def run(self, indices: Sequence[int], *, in_process: bool = False) -> list[Done]:
        """Run these items here; ``in_process``: in the submitting process itself."""

    def left(self, indices: Sequence[int]) -> list[int]:
        """The items among ``indices`` not done yet (a requeued job skips the others)."""

    def in_job(self) -> contextlib.AbstractContextManager[None]:
        """The context of a cluster job running items (e.g. its output teed to run.log)."""

    def after_job(self) -> None:
        """Called by a cluster job once its items are run (e.g. the last one ends a map)."""


class Backend(Protocol):
    """Where the items of a :class:`Work` run."""

    name: str
    in_process: bool  # items run in the calling process (locals and exceptions kept)
    detached: bool  # items run elsewhere and ``run`` returns before they end

    def run(self, work: Work, indices: Sequence[int], on_done: OnDone) -> Submitted | None:
        """Run ``indices`` of ``work``; None once all ended, or what was submitted."""


def batches(indices: Sequence[int], processes: int) -> list[list[int]]:
    """Split ``indices`` in contiguous batches, a few per process (low overhead, balanced)."""
    if not indices:
        return []
    count = min(len(indices), processes * _BATCHES_PER_PROCESS)
    size = math.ceil(len(indices) / count)
    return [list(indices[k : k + size]) for k in range(0, len(indices), size)]


def chunks(indices: Sequence[int], count: int) -> list[list[int]]:
    """Split ``indices`` in at most ``count`` contiguous slices of equal size (the last less)."""
    if not indices:
        return []
    size = -(-len(indices) // max(1, min(count, len(indices))))
    return [list(indices[k : k + size]) for k in range(0, len(indices), size)]


def available_cpus() -> int:
    """The CPUs this process may use (its affinity, e.g. a Slurm allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    """A job context that does nothing."""
    yield
