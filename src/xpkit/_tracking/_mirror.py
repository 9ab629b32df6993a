"""What a sync adds to a run's params, tags and metrics: the run in MLflow's own shape.

The :class:`~xpkit._tracking._mlflow.Syncer` owns one :class:`Mirror` per tracking store:

- per experiment, once: the kind tag (``_ui.py``); after each run, the ``xpkit`` view gets
  the columns the run asks for (only columns never proposed before: one tag read and write
  when something is new, nothing otherwise);
- per run: the source file (``_shape.py``; a stage's source is remembered, for runs whose
  own entry tells nothing), the sweep point's parent and child tags (``_sweeps.py``), the
  note with its links (``_note.py``), and each hashed input as a dataset input, sent only
  when the run does not list that name and digest already.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .._catalog._run import Run
from ._note import NOTE_TAG, run_note
from ._shape import (
    DATASET_SOURCE_TYPE,
    UpstreamRef,
    datasets_of,
    is_project_file,
    source_of,
    sweep_of,
    upstream_of,
)
from ._sweeps import PARENT_ID_TAG, SweepParents, child_tags
from ._ui import KIND_TAG, kind_to_set, merged_view, run_route, view_columns

__all__ = ["SOURCE_TAG", "Locate", "Mirror"]

SOURCE_TAG = "mlflow.source.name"
_PARENT_TAGS = ("xpkit.stage", "xpkit.project", "mlflow.source.type", SOURCE_TAG)

# an upstream run's (experiment id, MLflow run id), or None when it is not in the store
Locate = Callable[[UpstreamRef, Path, bool], tuple[str, str] | None]


class Mirror:
    """MLflow's own shape of the runs synced into one store.

    Args:
        client: the store's ``MlflowClient``.
        locate: ``(upstream, project root, live) -> (experiment id, run id) | None``.
        key: a config key or metric name as MLflow stores it.
    """

    def __init__(self, client: Any, *, locate: Locate, key: Callable[[str], str]) -> None:
        self.client = client
        self.locate = locate
        self.key = key
        self.sweeps = SweepParents(client)
        self._sources: dict[str, str] = {}  # stage -> the source of one of its runs
        self._experiment_tags: dict[str, dict[str, str]] = {}

    # experiments ------------------------------------------------------------------------

    def experiment(self, experiment_id: str) -> None:
        """Tag an experiment met for the first time with its kind."""
        if experiment_id in self._experiment_tags:
            return
        tags = dict(self.client.get_experiment(experiment_id).tags)
        kind = kind_to_set(tags)
        if kind is not None:
            self.client.set_experiment_tag(experiment_id, KIND_TAG, kind)
            tags[KIND_TAG] = kind
        self._experiment_tags[experiment_id] = tags

    def update_view(self, experiment_id: str, wanted: list[str]) -> None:
        """Add to the experiment's ``xpkit`` view the ``wanted`` columns never proposed."""
        if not merged_view(self._experiment_tags.get(experiment_id, {}), wanted, now_ms=0):
            return  # nothing new: no call to the store
        tags = dict(self.client.get_experiment(experiment_id).tags)  # another process's news
        for key, value in merged_view(tags, wanted).items():
            self.client.set_experiment_tag(experiment_id, key, value)
            tags[key] = value
        self._experiment_tags[experiment_id] = tags

    def remember(self, found: Any) -> None:
        """Learn from a run read in a prefetch: a sweep parent, a stage's source."""
        self.sweeps.remember(found)
        tags = found.data.tags
        stage, source = tags.get("xpkit.stage"), tags.get(SOURCE_TAG)
        if stage and is_project_file(source):
            self._sources.setdefault(stage, source)

    # one run ------------------------------------------------------------------------------

    def tags(
        self,
        run: Run,
        experiment_id: str,
        base: Mapping[str, str],
        *,
        live: bool,
    ) -> dict[str, str]:
        """The run's source, sweep and note tags (``base``: its other tags)."""
        lock = run.lock
        tags: dict[str, str] = {}
        source = source_of(lock, root=run.root, fallback=self._sources.get(lock.stage))
        if source is not None:
            self._sources.setdefault(lock.stage, source)
            tags[SOURCE_TAG] = source
        sweep = sweep_of(lock)
        sweep_route = None
        if sweep is not None:
            parent = self.sweeps.parent_id(
                experiment_id,
                sweep,
                tags={k: v for k, v in {**base, **tags}.items() if k in _PARENT_TAGS},
                start_ms=_start_ms(lock.started),
            )
            tags.update(child_tags(sweep, parent))
            sweep_route = run_route(experiment_id, parent)
        routes = {}
        for ref in upstream_of(lock):
            where = self.locate(ref, run.root, live)
            if where is not None:
                routes[ref.id] = run_route(*where)
        tags[NOTE_TAG] = run_note(lock, upstream_routes=routes, sweep_route=sweep_route)
        return tags

    def stale_tags(self, tags: Mapping[str, str], old: Mapping[str, str]) -> list[str]:
        """Tags to delete: a source an older xpkit set that names no project file."""
        source = old.get(SOURCE_TAG)
        if SOURCE_TAG in tags or source is None or is_project_file(source):
            return []
        return [SOURCE_TAG]

    def log_datasets(self, run_id: str, found: Any, run: Run) -> int:
        """Log the run's hashed inputs it does not list yet; return how many were sent."""
        refs = datasets_of(run.lock)
        if not refs:
            return 0
        inputs = getattr(getattr(found, "inputs", None), "dataset_inputs", None) or []
        have = {(i.dataset.name, i.dataset.digest) for i in inputs}
        new = [r for r in refs if r.key not in have]
        if new:
            from mlflow.entities import Dataset, DatasetInput

            self.client.log_inputs(
                run_id,
                datasets=[
                    DatasetInput(
                        Dataset(
                            name=r.name,
                            digest=r.digest,
                            source_type=DATASET_SOURCE_TYPE,
                            source=r.source,
                            profile=r.profile,
                        ),
                        tags=[],
                    )
                    for r in new
                ],
            )
        return len(new)

    def after(
        self,
        run: Run,
        experiment_id: str,
        tags: Mapping[str, str],
        *,
        metric_keys: Iterable[str],
        live: bool,
        parent_stale: bool,
    ) -> None:
        """Once the run is synced: its columns into the view, its sweep's parent refreshed.

        ``parent_stale``: the run was made, re-parented or changed status, so its sweep's
        parent (status, end, note) is worked out again, as is a parent a prefetch saw still
        running (a sync that died before refreshing it); a live sync leaves that to the end.
        """
        lock = run.lock
        self.update_view(experiment_id, view_columns(lock, key=self.key, metric_keys=metric_keys))
        sweep, parent = sweep_of(lock), tags.get(PARENT_ID_TAG)
        stale = parent_stale or bool(parent and self.sweeps.unfinished(parent))
        if sweep is not None and parent and stale and not live:
            self.sweeps.touch(
                experiment_id, parent, sweep, stage=lock.stage, where=posixpath.dirname(lock.dir)
            )


def _start_ms(iso: str) -> int | None:
    import datetime as dt

    try:
        return int(dt.datetime.fromisoformat(iso).timestamp() * 1000) if iso else None
    except ValueError:
        return None
