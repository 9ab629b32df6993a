"""Deleting runs' MLflow mirror: every MLflow run tagged ``xpkit.run_id``, with its artifacts.

An MLflow run is deleted for good, as ``mlflow gc`` would do it for that one run: its
artifacts removed through its artifact repository, the run marked deleted through the
client, then purged from a database store. Nothing else in the store is touched (``mlflow
gc`` itself would also purge every other deleted run and experiment).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._catalog._run import Run
from .._core._settings import Settings
from ..errors import StoreError
from ._mlflow import RUN_ID_TAG
from ._store import default_uri, import_mlflow, mlflow_installed, project_lock, tracking_uri

__all__ = ["delete_mirrors", "find_mirrors"]


def find_mirrors(targets: Iterable[Run], *, settings: Settings) -> list[Any]:
    """The MLflow runs (``mlflow.entities.Run``) mirroring ``targets``; [] when there is no
    store to look in (the default store never created, or mlflow not installed).

    Raises:
        StoreError: the tracking store cannot be read.
    """
    targets = list(targets)
    client = _client(settings)
    if client is None or not targets:
        return []
    mlflow = import_mlflow()
    found = []
    try:
        by_stage: dict[str, list[str]] = {}
        for run in targets:
            by_stage.setdefault(run.stage, []).append(run.id)
        for stage, ids in by_stage.items():
            found += _search(client, mlflow, stage, ids)
    except mlflow.exceptions.MlflowException as e:
        msg = f"cannot read the MLflow store {tracking_uri(settings)}: {e}"
        raise StoreError(msg) from None
    return found


def delete_mirrors(mirrors: Iterable[Any], *, settings: Settings) -> list[str]:
    """Delete these MLflow runs and their artifacts for good; their MLflow run ids.

    Raises:
        StoreError: the store refused (what was deleted before stays deleted).
    """
    mirrors = list(mirrors)
    client = _client(settings)
    if client is None or not mirrors:
        return []
    mlflow = import_mlflow()
    deleted = []
    with project_lock(settings):
        for found in mirrors:
            try:
                _delete(client, mlflow, found)
            except mlflow.exceptions.MlflowException as e:
                msg = f"cannot delete MLflow run {found.info.run_id}: {e}"
                raise StoreError(msg) from None
            deleted.append(str(found.info.run_id))
    return deleted


def _client(settings: Settings) -> Any:
    uri = tracking_uri(settings)
    if uri == default_uri(settings) and not (settings.results_path / "mlflow.db").is_file():
        return None  # never synced: asking would create the store
    if not mlflow_installed():
        return None
    return import_mlflow().MlflowClient(tracking_uri=uri)


def _search(client: Any, mlflow: Any, stage: str, ids: list[str]) -> list[Any]:
    experiment = client.get_experiment_by_name(stage)
    if experiment is None:
        return []
    view = mlflow.entities.ViewType.ALL
    found = []
    for run_id in ids:
        quoted = run_id.replace("'", "\\'")
        found += client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{RUN_ID_TAG}` = '{quoted}'",
            run_view_type=view,
            max_results=100,
        )
    return found


def _delete(client: Any, mlflow: Any, found: Any) -> None:
    """Artifacts, then the run itself, then its rows (a database store)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    uri = found.info.artifact_uri
    if uri:
        with contextlib.suppress(FileNotFoundError, mlflow.exceptions.MlflowException):
            get_artifact_repository(uri).delete_artifacts()  # type: ignore[no-untyped-call]  # mlflow is untyped here
        _remove_empty_run_folder(uri, found.info.run_id)
    if found.info.lifecycle_stage != "deleted":
        client.delete_run(found.info.run_id)
    store = client._tracking_client.store
    # what `mlflow gc` calls: the only way to purge one run's rows without the others
    if hasattr(store, "_hard_delete_run"):
        store._hard_delete_run(found.info.run_id)


def _remove_empty_run_folder(uri: str, run_id: str) -> None:
    """A local artifact store keeps ``<run id>/artifacts``: drop the run's emptied folders."""
    if not uri.startswith("file://"):
        return
    from urllib.parse import unquote, urlparse

    artifacts = Path(unquote(urlparse(uri).path))
    folders = [artifacts, artifacts.parent] if artifacts.parent.name == run_id else [artifacts]
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty, or already gone
            os.rmdir(folder)
