"""The index of the map task running in this context: its metrics are stamped with it.

A map is one run: every task's ``xp.log_metrics`` goes to the same metrics.jsonl. A record
written inside a task carries ``"task": <index>``, so that a point logged without a step is
shown at its task's index (in MLflow, the step), not at the order workers happened to write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["current_task", "task_scope"]

_task: ContextVar[int | None] = ContextVar("xpkit_task", default=None)


def current_task() -> int | None:
    """The index of the map task running here, or None outside a map's task."""
    return _task.get()


@contextlib.contextmanager
def task_scope(index: int) -> Iterator[None]:
    """Mark the block as task ``index`` of a map."""
    token = _task.set(index)
    try:
        yield
    finally:
        _task.reset(token)
