"""The MLflow UI as a researcher opens it: addresses, the experiment kind, the ``xpkit`` view.

- Experiments are tagged ``mlflow.experimentKind = custom_model_development`` (MLflow 3's
  mark of a model-development experiment). MLflow 3.17's UI also keeps a "GenAI / Model
  training" switch, per browser, that decides what an experiment opens on (GenAI: the traces
  overview); the addresses below carry ``workflowType=machine_learning`` so that they open on
  the runs table whatever the switch says.
- Each experiment gets a saved view named ``xpkit`` (experiment tag
  ``mlflow.sharedViewState.xpkit``, the UI's own "Views" format) whose columns are the
  source, the dataset, the config keys runs changed from the stage's defaults (or swept) and
  the metrics. xpkit only ever adds the columns it has not proposed before (experiment tag
  ``xpkit.view.columns``), so a column the user removed from the view stays removed.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .._core._flat import flatten
from .._core._lock import RunLock
from ._shape import datasets_of, sweep_of, upstream_of

__all__ = [
    "KIND",
    "KIND_TAG",
    "VIEW_KEY",
    "VIEW_TAG",
    "experiments_route",
    "kind_to_set",
    "merged_view",
    "run_route",
    "runs_route",
    "view_columns",
]

KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
VIEW_KEY = "xpkit"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
PROPOSED_TAG = "xpkit.view.columns"
WORKFLOW = "workflowType=machine_learning"
VIEW_PARAMS_MAX = 12  # config columns a view gets from xpkit, at most
VIEW_METRICS_MAX = 12
SOURCE_COLUMN = "attributes.`Source`"
DATASET_COLUMN = "attributes.`Dataset`"


# --- addresses (routes of the UI's hash router) -------------------------------------------


def experiments_route() -> str:
    """The experiment list."""
    return f"#/experiments?{WORKFLOW}"


def runs_route(experiment_id: str, *, view: bool = False) -> str:
    """The runs table of an experiment (``view``: with the ``xpkit`` view's columns)."""
    query = WORKFLOW + (f"&viewStateShareKey={VIEW_KEY}" if view else "")
    return f"#/experiments/{_quote(experiment_id)}/runs?{query}"


def run_route(experiment_id: str, run_id: str) -> str:
    """One run's page."""
    return f"#/experiments/{_quote(experiment_id)}/runs/{_quote(run_id)}?{WORKFLOW}"


def _quote(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


# --- the experiment's kind ------------------------------------------------------------------


def kind_to_set(tags: Mapping[str, str]) -> str | None:
    """The kind to tag an experiment with, or None to leave it.

    A kind chosen by a user stays; none, or one MLflow's UI only inferred, is replaced.
    """
    kind = tags.get(KIND_TAG)
    if kind == KIND:
        return None
    if not kind or kind.endswith("_inferred") or kind == "no_inferred_type":
        return KIND
    return None


# --- the xpkit view ---------------------------------------------------------------------------


def view_columns(
    lock: RunLock, *, key: Callable[[str], str], metric_keys: Iterable[str] = ()
) -> list[str]:
    """The columns a run asks of its experiment's view.

    Args:
        lock: the run's run.lock.
        key: a config key or metric name as MLflow stores it (sanitized).
        metric_keys: MLflow metric keys of the run, besides those of ``lock.metrics``.
    """
    columns = [SOURCE_COLUMN]
    if datasets_of(lock):
        columns.append(DATASET_COLUMN)
    upstream = {ref.key for ref in upstream_of(lock)}
    changed = [key(k) for k in _changed_keys(lock) if k not in upstream]
    columns += [f"params.`{p}`" for p in changed[:VIEW_PARAMS_MAX]]
    metrics = dict.fromkeys([*(key(str(m)) for m in lock.metrics or {}), *metric_keys])
    columns += [f"metrics.`{m}`" for m in list(metrics)[:VIEW_METRICS_MAX]]
    return list(dict.fromkeys(columns))


def _changed_keys(lock: RunLock) -> list[str]:
    """Config keys the run changed from the stage's defaults, and the keys it swept."""
    keys = []
    defaults = lock.extra.get("defaults")
    if isinstance(defaults, Mapping):
        keys += [str(k) for k in defaults]
    sweep = sweep_of(lock)
    if sweep is not None:
        keys += list(flatten(dict(sweep.values)))
    config = flatten(dict(lock.config))
    return [k for k in dict.fromkeys(keys) if k in config]


def merged_view(
    tags: Mapping[str, str], wanted: Sequence[str], *, now_ms: int | None = None
) -> dict[str, str]:
    """Experiment tags that add the ``wanted`` columns xpkit never proposed to the view.

    Empty when nothing is new, or when the view was saved by the UI in a form this version
    cannot read (it is then left as the user made it).
    """
    # a view deleted in the UI is made again whole
    proposed = _json_list(tags.get(PROPOSED_TAG)) if tags.get(VIEW_TAG) else []
    new = [c for c in wanted if c not in proposed]
    if not new:
        return {}
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    envelope = _envelope(tags.get(VIEW_TAG))
    if envelope is None:
        return {}
    state = envelope["state"]
    selected = state.get("selectedColumns")
    selected = [c for c in selected if isinstance(c, str)] if isinstance(selected, list) else []
    state["selectedColumns"] = selected + [c for c in new if c not in selected]
    envelope = {
        "name": envelope.get("name") or VIEW_KEY,
        "createdAt": envelope.get("createdAt") or now_ms,
        "updatedAt": now_ms,
        "state": json.dumps(state),
    }
    return {VIEW_TAG: json.dumps(envelope), PROPOSED_TAG: json.dumps(proposed + new)}


def _envelope(text: str | None) -> dict[str, Any] | None:
    """The saved view ``{name, createdAt, updatedAt, state}`` with ``state`` parsed."""
    if not text:
        return {"name": VIEW_KEY, "state": {}}
    try:
        envelope = json.loads(text)
        state = json.loads(envelope["state"])
    except (ValueError, KeyError, TypeError):
        return None  # compressed or foreign: not ours to rewrite
    if not isinstance(envelope, dict) or not isinstance(state, dict):
        return None
    return {**envelope, "state": state}


def _json_list(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
