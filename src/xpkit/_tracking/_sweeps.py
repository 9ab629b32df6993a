"""Sweeps in MLflow's shape: one parent run per sweep, each point a child run of it.

A sweep's points are full runs, each synced on its own (often by different processes). The
first point synced makes the parent run (tag ``xpkit.sweep.parent = <sweep id>``, found by
that tag ever after, so there is one parent however often and from wherever points are
synced); each point gets ``mlflow.parentRunId``, so the UI nests the points under it and its
chart views compare them. The parent's status, end time and note (its points, linked) are
worked out from its children after a point's sync, or once per parent at the end of a batch.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ._note import NOTE_TAG, PointRow, sweep_note
from ._shape import SweepRef
from ._ui import run_route

__all__ = ["PARENT_TAG", "SweepParents", "child_tags"]

PARENT_TAG = "xpkit.sweep.parent"
PARENT_ID_TAG = "mlflow.parentRunId"
ID_TAG = "xpkit.sweep.id"
POINT_TAG = "xpkit.sweep.point"
VALUES_TAG = "xpkit.sweep.values"
_TERMINAL = ("FAILED", "KILLED")  # in this order: a failed point makes a failed sweep


def child_tags(sweep: SweepRef, parent_id: str) -> dict[str, str]:
    """Tags of a sweep point's run: its parent, sweep id, ``k/n`` and values (JSON)."""
    return {
        PARENT_ID_TAG: parent_id,
        ID_TAG: sweep.id,
        POINT_TAG: f"{sweep.point + 1}/{sweep.total}",
        VALUES_TAG: json.dumps(dict(sweep.values), default=str, sort_keys=True)[:8000],
    }


@dataclass(frozen=True)
class _Refresh:
    experiment_id: str
    parent_id: str
    sweep: SweepRef
    stage: str
    where: str


class SweepParents:
    """The sweep parent runs of one tracking store (found once, cached, kept current).

    Args:
        client: the ``MlflowClient`` of the store.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._ids: dict[str, str] = {}  # sweep id -> parent MLflow run id
        self._running: set[str] = set()  # parents a prefetch saw running: to be looked at
        self._pending: dict[str, _Refresh] | None = None  # inside batch(): refreshes to do

    def remember(self, found: Any) -> None:
        """Note a parent run met while reading an experiment's runs (a prefetch)."""
        sweep_id = found.data.tags.get(PARENT_TAG)
        if sweep_id:
            self._ids.setdefault(sweep_id, found.info.run_id)
            if found.info.status == "RUNNING":
                self._running.add(found.info.run_id)

    def unfinished(self, parent_id: str) -> bool:
        """Whether a prefetch saw the parent still running (its points may be all in now)."""
        return parent_id in self._running

    def parent_id(
        self,
        experiment_id: str,
        sweep: SweepRef,
        *,
        tags: Mapping[str, str],
        start_ms: int | None,
    ) -> str:
        """The MLflow run id of the sweep's parent, made now if there is none.

        Called under the project's sync lock: the search and the creation are one step for
        every process syncing points of the sweep. A prefetch that saw no parent proves
        nothing (another process may have made it since), so the store is always asked.

        Args:
            experiment_id: the stage's experiment.
            sweep: the sweep.
            tags: tags of a new parent besides its sweep id (stage, project, source).
            start_ms: start time of a new parent (that of the point being synced).
        """
        known = self._ids.get(sweep.id)
        if known is not None:
            return known
        found = self._search(experiment_id, sweep.id)
        if found is None:
            run = self.client.create_run(
                experiment_id,
                start_time=start_ms,
                tags={**tags, PARENT_TAG: sweep.id},
                run_name=f"sweep-{sweep.id}",
            )
            found = run.info.run_id
        self._ids[sweep.id] = found
        return found

    def _search(self, experiment_id: str, sweep_id: str) -> str | None:
        # sweep_id is checked by is_run_id (no quote can end the string early)
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{sweep_id}'", max_results=1
        )
        return str(runs[0].info.run_id) if runs else None

    @contextlib.contextmanager
    def batch(self, guard: Callable[[], AbstractContextManager[Any]]) -> Iterator[None]:
        """Refresh each parent touched inside the block once, at its end, inside ``guard()``."""
        if self._pending is not None:  # nested: the outer batch refreshes
            yield
            return
        self._pending = {}
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            if pending:
                with guard():
                    for job in pending.values():
                        self._refresh(job)

    def touch(
        self, experiment_id: str, parent_id: str, sweep: SweepRef, *, stage: str, where: str
    ) -> None:
        """A point of the sweep was synced: refresh its parent (now, or at the batch's end)."""
        job = _Refresh(experiment_id, parent_id, sweep, stage, where)
        self._running.discard(parent_id)
        if self._pending is None:
            self._refresh(job)
        else:
            self._pending[parent_id] = job

    def _refresh(self, job: _Refresh) -> None:
        """Make the parent's status, end time and note those of its children."""
        parent = self.client.get_run(job.parent_id)
        children = self._children(job.experiment_id, job.parent_id)
        rows = [_row(c, job.experiment_id) for c in children]
        note = sweep_note(job.stage, job.sweep, [r for r in rows if r is not None], job.where)
        if parent.data.tags.get(NOTE_TAG) != note:
            self.client.set_tag(job.parent_id, NOTE_TAG, note)
        status, end = _aggregate(children, job.sweep.total)
        info = parent.info
        if status == "RUNNING":
            if info.status != "RUNNING":
                self.client.update_run(job.parent_id, status="RUNNING")
        elif info.status != status or info.end_time != end:
            self.client.set_terminated(job.parent_id, status=status, end_time=end)

    def _children(self, experiment_id: str, parent_id: str) -> list[Any]:
        out: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{PARENT_ID_TAG}` = '{parent_id}'",
                max_results=1000,
                page_token=token,
            )
            out += list(page)
            token = page.token
            if not token:
                return out


def _row(child: Any, experiment_id: str) -> PointRow | None:
    """A child run as a line of its parent's note (None: not a point xpkit tagged)."""
    tags = child.data.tags
    k, _, _ = str(tags.get(POINT_TAG, "")).partition("/")
    if not k.isdigit():
        return None
    try:
        values = json.loads(tags.get(VALUES_TAG) or "{}")
    except ValueError:
        values = {}
    return PointRow(
        point=int(k) - 1,
        values=values if isinstance(values, dict) else {},
        status=str(child.info.status),
        route=run_route(experiment_id, child.info.run_id),
    )


def _aggregate(children: list[Any], total: int) -> tuple[str, int | None]:
    """A sweep's status from its points': running until all are in and ended."""
    statuses = {c.info.status for c in children}
    if len(children) < total or statuses - {"FINISHED", *_TERMINAL}:
        return "RUNNING", None
    end = max((c.info.end_time or 0 for c in children), default=0) or None
    for status in _TERMINAL:
        if status in statuses:
            return status, end
    return "FINISHED", end
