"""MLflow sync: every run directory mirrored into exactly one MLflow run.

Syncing is idempotent and incremental. A run directory maps to the MLflow run tagged
``xpkit.run_id = <run.lock id>`` (MLflow run ids cannot be chosen), found again by that tag
however often the directory is synced. Each sync sends only what is new:

- experiment: one per stage, named after the stage. The default store lives inside the
  project, so names never collide; on a shared server, the ``xpkit.project`` tag (the
  project directory's name) tells projects apart.
- run name: the run directory's name; start/end time and status from run.lock
  (running→RUNNING, completed→FINISHED, failed→FAILED, interrupted→KILLED).
- params: the config flattened with dots. Values over 6000 characters are cut with a
  ``...[truncated, N chars]`` marker; keys are made valid (characters outside
  ``[\\w-. :/]`` become ``_``, keys over 250 characters end in ``-<hash>``). Params
  already in MLflow are never sent again (they are immutable there); a value that differs
  (config is immutable too, so this means an edited run.lock) goes to the tag
  ``xpkit.param_conflict.<key>`` instead of failing the sync.
- tags: ``xpkit.*`` from run.lock: run id, stage, dir, status, project, argv, error, src
  (commit, head, branch, dirty; the commit also as ``mlflow.source.git.commit``), data
  hashes, env (python, platform, host, cpus, gpu, slurm job, package count and versions of
  well-known ML packages), upstream run ids, task counts. Only changed tags are re-sent.
- metrics: every point of metrics.jsonl with its step and timestamp; a point logged without
  a step gets the number of earlier points of that metric. A cursor in the run's private
  ``.xpkit/mlflow.json`` (byte offset, per tracking store) makes re-syncs send only new
  points; without a cursor (or after a sync died mid-way) the points already in MLflow are
  read back (``get_metric_history``) and skipped, so a point is never stored twice.
- artifacts: ``config.yaml``, ``run.lock`` and ``run.log``, uploaded again when changed.
- MLflow's own shape (``_shape.py``, ``_note.py``, ``_sweeps.py``, ``_ui.py``): the source
  file, each hashed ``data`` entry as a dataset input (sent once per name and digest), a
  sweep point as a child of its sweep's parent run, a map's task metrics at their task's
  index, the note (``mlflow.note.content``), and per experiment the kind tag and the
  ``xpkit`` view. Runs synced by an older xpkit get all of these on their next sync.

Writes are batched (``log_batch``: 100 params, 100 tags, 1000 entities per call). Every
sync of a project's runs holds the lock file ``<results>/.mlflow.lock``, so concurrent
syncers never race on a fresh SQLite store's schema migration nor on one run's cursor.

Tracking store and the project lock: see ``_store.py``.

Automatic sync while and after a stage runs: see ``_mlflow_live.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import posixpath
import re
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._catalog._run import Run
from .._core._flat import flatten
from .._core._lock import RunLock
from .._core._paths import RunPaths, atomic_write_text
from .._core._settings import Settings, load_settings
from ..errors import LockError
from ._mirror import Mirror
from ._shape import UpstreamRef, is_run_id
from ._store import (
    artifacts_root,
    default_uri,
    import_mlflow,
    prepare_store,
    project_lock,
    tracking_enabled,
    tracking_uri,
)

__all__ = [
    "STATUS",
    "SyncReport",
    "Syncer",
    "artifacts_root",
    "default_uri",
    "import_mlflow",
    "mlflow_key",
    "params_of",
    "project_lock",
    "sync_run",
    "tags_of",
    "tracking_enabled",
    "tracking_uri",
]

STATUS = {
    "running": "RUNNING",
    "completed": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}
RUN_ID_TAG = "xpkit.run_id"
PARAM_VALUE_MAX = 6000
TAG_VALUE_MAX = 8000
KEY_MAX = 250
BATCH_PARAMS = 100
BATCH_TAGS = 100
BATCH_ENTITIES = 1000
LIVE_CHUNK_BYTES = 128 * 1024  # of metrics.jsonl per live cycle: bounds the thread's CPU share
ARTIFACTS = ("config", "lock", "log")  # RunPaths attributes uploaded as artifacts
TAGGED_PACKAGES = (
    "xpkit",
    "numpy",
    "pandas",
    "scikit-learn",
    "torch",
    "lightning",
    "jax",
    "tensorflow",
    "transformers",
)

_log = logging.getLogger("xpkit.mlflow")
_BAD_KEY_CHARS = re.compile(r"[^\w\-. :/]")


# --- run.lock → MLflow params and tags -----------------------------------------------


def mlflow_key(key: str) -> str:
    """A valid MLflow key for ``key``: bad characters become ``_``, long keys get a hash."""
    out = _BAD_KEY_CHARS.sub("_", key) or "_"
    norm = posixpath.normpath(out)
    if norm != out or norm == "." or norm.startswith(("..", "/")):
        out = "_" + out.replace("/", "_")
    if len(out) > KEY_MAX:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
        out = f"{out[: KEY_MAX - 9]}-{digest}"
    return out


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"...[truncated, {len(text)} chars]"
    return text[: limit - len(marker)] + marker


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def params_of(lock: RunLock) -> dict[str, str]:
    """MLflow params of a run: its config flattened with dots, keys and values made valid."""
    params: dict[str, str] = {}
    for key, value in flatten(lock.config).items():
        name = mlflow_key(key)
        if name in params:  # two config keys made the same by sanitizing
            name = mlflow_key(f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}")
        params[name] = _truncate(_text(value), PARAM_VALUE_MAX)
    return params


def tags_of(lock: RunLock, *, project: str = "") -> dict[str, str]:
    """MLflow tags of a run: ``xpkit.*`` from every section of run.lock."""
    tags: dict[str, Any] = {
        RUN_ID_TAG: lock.id,
        "xpkit.stage": lock.stage,
        "xpkit.dir": lock.dir,
        "xpkit.status": lock.status,
        "xpkit.project": project,
        "xpkit.argv": shlex.join(lock.argv),
        "xpkit.host": lock.host,
        "mlflow.source.type": "LOCAL",
    }
    if lock.error:
        tags["xpkit.error"] = f"{lock.error.get('type')}: {lock.error.get('message')}"
    tags.update(_src_tags(lock.src or {}))
    tags.update(_env_tags(lock.env or {}))
    for name, info in (lock.data or {}).items():
        if isinstance(info, Mapping):
            tags[f"xpkit.data.{name}"] = info.get("hash") or info.get("error")
    for name, upstream in (lock.upstream or {}).items():
        if isinstance(upstream, Mapping):
            tags[f"xpkit.upstream.{name}"] = upstream.get("id")
    if lock.tasks:
        for key in ("total", "done", "failed"):
            tags[f"xpkit.tasks.{key}"] = lock.tasks.get(key)
    return {
        mlflow_key(k): _truncate(_text(v), TAG_VALUE_MAX)
        for k, v in tags.items()
        if v is not None and v != ""
    }


def _src_tags(src: Mapping[str, Any]) -> dict[str, Any]:
    tags = {f"xpkit.src.{k}": src.get(k) for k in ("commit", "head", "branch", "dirty", "error")}
    if src.get("commit"):
        tags["mlflow.source.git.commit"] = src["commit"]
    if src.get("branch"):
        tags["mlflow.source.git.branch"] = src["branch"]
    return tags


def _env_tags(env: Mapping[str, Any]) -> dict[str, Any]:
    tags = {f"xpkit.env.{k}": env.get(k) for k in ("python", "platform", "host", "cpus")}
    gpus = env.get("gpu") or []
    if gpus:
        tags["xpkit.env.gpu"] = ", ".join(str(g.get("name", g)) for g in gpus)
    slurm = env.get("slurm") or {}
    tags["xpkit.env.slurm_job"] = slurm.get("SLURM_ARRAY_JOB_ID") or slurm.get("SLURM_JOB_ID")
    packages = env.get("packages") or {}
    if packages:
        tags["xpkit.env.packages"] = len(packages)
    for name in TAGGED_PACKAGES:
        if name in packages:
            tags[f"xpkit.env.pkg.{name}"] = packages[name]
    return tags


def _ms(iso: str | None) -> int | None:
    """An ISO timestamp of run.lock as MLflow milliseconds."""
    if not iso:
        return None
    import datetime as dt

    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


# --- metrics.jsonl → points ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Point:
    key: str
    value: float
    timestamp: int
    step: int

    def ident(self) -> tuple[str, int, int, str]:
        return _ident(self.key, self.timestamp, self.step, self.value)


def _ident(key: str, timestamp: int, step: int, value: float) -> tuple[str, int, int, str]:
    """A metric point as MLflow stores it (infinities are clipped to the largest float)."""
    if math.isinf(value):
        value = math.copysign(sys.float_info.max, value)
    return (key, timestamp, step, repr(value))


def _read_points(
    path: Path, offset: int, counts: dict[str, int], *, max_bytes: int | None = None
) -> tuple[list[_Point], int, dict[str, int]]:
    """Points of metrics.jsonl after ``offset``, up to its last complete line."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(-1 if max_bytes is None else max_bytes)
    except FileNotFoundError:
        return [], offset, counts
    end = data.rfind(b"\n") + 1
    counts = dict(counts)
    points: list[_Point] = []
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
            stamp = round(float(record["time"]) * 1000)
            metrics = record["metrics"]
            step = record.get("step")
            if step is None:  # a map's task logged it: shown at the task's index
                step = record.get("task")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue  # a line torn by a crash mid-write, or not a record at all
        if not isinstance(metrics, dict):
            continue
        for name, value in metrics.items():
            key = mlflow_key(str(name))
            n = counts.get(key, 0)
            counts[key] = n + 1
            with contextlib.suppress(TypeError, ValueError):
                points.append(_Point(key, float(value), stamp, n if step is None else int(step)))
    return points, offset + end, counts


# --- the sync cursor -------------------------------------------------------------------


def _load_states(paths: RunPaths) -> dict[str, Any]:
    try:
        data = json.loads(paths.mlflow_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_state(paths: RunPaths, uri: str, state: Mapping[str, Any]) -> None:
    states = _load_states(paths)
    states[uri] = dict(state)
    paths.xpkit_dir.mkdir(exist_ok=True)
    atomic_write_text(paths.mlflow_state, json.dumps(states, sort_keys=True))


# --- syncing -------------------------------------------------------------------------


@dataclasses.dataclass
class SyncReport:
    """What one sync of a run sent to MLflow."""

    mlflow_id: str
    created: bool = False
    params: int = 0
    tags: int = 0
    metrics: int = 0
    artifacts: int = 0
    datasets: int = 0


class Syncer:
    """Syncs run directories into one tracking store (one client, experiments cached).

    Args:
        client: an ``mlflow.MlflowClient`` (default: one on :func:`tracking_uri`).
        settings: the project's settings (default: found from the working directory).
    """

    def __init__(self, *, client: Any = None, settings: Settings | None = None) -> None:
        self.mlflow = import_mlflow()
        self.settings = settings or load_settings()
        if client is None:
            uri = tracking_uri(self.settings)
            prepare_store(uri)
            with project_lock(self.settings):  # a fresh store migrates its schema here
                client = self.mlflow.MlflowClient(tracking_uri=uri)
        self.client = client
        self.uri: str = (
            getattr(client, "tracking_uri", None) or client._tracking_client.tracking_uri
        )
        self._experiments: dict[str, str] = {}
        self._known: dict[str, Any] = {}  # xpkit run id -> MLflow run, from prefetch
        self._prefetched: set[str] = set()  # experiment ids whose runs are all known
        self._synced: dict[str, str] = {}  # xpkit run id -> MLflow run id, synced here
        self._syncing: set[str] = set()  # xpkit run ids being synced (upstream runs first)
        self._absent: set[str] = set()  # upstream run ids a live sync did not find
        self.mirror = Mirror(self.client, locate=self._locate, key=mlflow_key)

    # public ---------------------------------------------------------------------------

    def sync(
        self,
        run: Run | str | os.PathLike[str],
        *,
        loggers: Sequence[Callable[..., Any]] = (),
        live: bool = False,
    ) -> SyncReport:
        """Sync one run directory; then call each logger ``fn(run, mlflow)`` inside its run.

        ``live``: a sync while the run runs: no artifacts, at most ``LIVE_CHUNK_BYTES`` of
        new metrics (the rest next time), so that the syncing thread stays light.

        Raises:
            LockError: the run's run.lock is missing or invalid.
            Exception: the first exception raised by a logger (after all of them ran and the
                run's status and end time were restored).
        """
        run = run if isinstance(run, Run) else Run(run)
        with project_lock(self.settings):
            report = self._sync(run.reload(), live=live)
            if loggers:
                self._apply_loggers(run, report.mlflow_id, loggers)
        return report

    def prefetch(self, stages: Iterable[str]) -> None:
        """Read every MLflow run of the stages' experiments at once (one query each)."""
        with project_lock(self.settings):
            for stage in set(stages):
                exp_id = self._experiment(stage)
                token = None
                while True:
                    page = self.client.search_runs([exp_id], max_results=5000, page_token=token)
                    for found in page:
                        run_id = found.data.tags.get(RUN_ID_TAG)
                        if run_id:
                            self._known.setdefault(run_id, found)
                        self.mirror.remember(found)
                    token = page.token
                    if not token:
                        break
                self._prefetched.add(exp_id)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Sync many runs: each sweep's parent run is brought up to date once, at the end."""
        with self.mirror.sweeps.batch(lambda: project_lock(self.settings)):
            yield

    def mlflow_id(self, run: Run) -> str | None:
        """The MLflow run id of ``run`` in this store, or None when it was never synced."""
        found = self._find(run.lock, _load_states(run.paths).get(self.uri, {}).get("run_id"))
        return None if found is None else str(found.info.run_id)

    # one run ---------------------------------------------------------------------------

    def _sync(self, run: Run, *, live: bool) -> SyncReport:
        lock = run.lock
        self._syncing.add(lock.id)
        try:
            return self._sync_one(run, live=live)
        finally:
            self._syncing.discard(lock.id)

    def _sync_one(self, run: Run, *, live: bool) -> SyncReport:
        lock = run.lock
        state = dict(_load_states(run.paths).get(self.uri) or {})
        found = self._find(lock, state.get("run_id"))
        exp_id = self._experiment(lock.stage)
        tags = tags_of(lock, project=self.settings.root.name)
        tags.update(self.mirror.tags(run, exp_id, tags, live=live))
        if found is None:
            found = self.client.create_run(
                exp_id,
                start_time=_ms(lock.started),
                tags=tags,
                run_name=run.dir.name,
            )
            state, old_params, old_tags = {"run_id": found.info.run_id}, {}, tags
            report = SyncReport(found.info.run_id, created=True, tags=len(tags))
        else:
            if state.get("run_id") != found.info.run_id or state.get("pending"):
                state = {"run_id": found.info.run_id, "verify": True}  # cursor lost: verify
            old_params, old_tags = dict(found.data.params), dict(found.data.tags)
            report = SyncReport(found.info.run_id)
        run_id = report.mlflow_id
        params, conflicts = _diff_params(params_of(lock), old_params)
        new_tags = {k: v for k, v in {**tags, **conflicts}.items() if old_tags.get(k) != v}
        points, offset, counts = _read_points(
            run.paths.metrics,
            int(state.get("offset", 0)),
            state.get("counts", {}),
            max_bytes=LIVE_CHUNK_BYTES if live else None,
        )
        if state.pop("verify", False):
            points = self._unlogged(run_id, points)
        if points and not report.created:  # a crash mid-way leaves "pending": verify next time
            _save_state(run.paths, self.uri, {**state, "pending": True})
        self._log_batch(run_id, params, new_tags, points)
        for key in self.mirror.stale_tags(tags, old_tags):
            self.client.delete_tag(run_id, key)
        report.datasets = self.mirror.log_datasets(run_id, found, run)
        state.update(offset=offset, counts=counts, pending=False)
        report.params, report.tags, report.metrics = (
            len(params),
            report.tags + len(new_tags),
            len(points),
        )
        ended = self._set_status(run_id, lock, found.info)
        if not live:
            report.artifacts = self._upload(run, found.info.artifact_uri, state)
        _save_state(run.paths, self.uri, state)
        self._known.pop(lock.id, None)  # prefetched data is stale now
        self._synced[lock.id] = run_id
        # a sweep's parent depends on its points' links and statuses: redone when they change
        moved = report.created or ended or "mlflow.parentRunId" in new_tags
        keys = sorted({p.key for p in points})
        self.mirror.after(run, exp_id, tags, metric_keys=keys, live=live, parent_stale=moved)
        return report

    def _locate(self, ref: UpstreamRef, root: Path, live: bool) -> tuple[str, str] | None:
        """An upstream run's (experiment id, MLflow run id); it is synced first if need be.

        A live sync only looks (and remembers what it did not find): the run's final sync
        syncs a missing upstream run from its directory, when the project has it.
        """
        if live and ref.id in self._absent:
            return None
        mlflow_id = self._synced.get(ref.id)
        known = self._known.get(ref.id)
        if mlflow_id is None and known is not None:
            mlflow_id = str(known.info.run_id)
        exp_id = self._experiments.get(ref.stage) or self._existing_experiment(ref.stage)
        if mlflow_id is None and exp_id is not None and exp_id not in self._prefetched:
            found = self._search(exp_id, ref.id)
            mlflow_id = None if found is None else str(found.info.run_id)
        if mlflow_id is None and not live and ref.id not in self._syncing:
            upstream = _local_run(ref, root)
            if upstream is not None:
                mlflow_id = self._sync(upstream, live=False).mlflow_id
                exp_id = self._experiment(ref.stage)
        if mlflow_id is None or exp_id is None:
            self._absent.add(ref.id)
            return None
        return exp_id, mlflow_id

    def _existing_experiment(self, stage: str) -> str | None:
        exp = self.client.get_experiment_by_name(stage)
        if exp is None or exp.lifecycle_stage != "active":
            return None
        self._experiments[stage] = str(exp.experiment_id)
        self.mirror.experiment(str(exp.experiment_id))
        return str(exp.experiment_id)

    def _search(self, exp_id: str, run_id: str) -> Any:
        """The MLflow run tagged with xpkit run id ``run_id``, or None."""
        runs = self.client.search_runs(
            [exp_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=1
        )
        return runs[0] if runs else None

    def _find(self, lock: RunLock, run_id: str | None) -> Any:
        if not is_run_id(lock.id):  # it goes into a search filter: no quote may end it
            msg = f"{lock.dir}: run.lock id {lock.id!r} is not an xpkit run id"
            raise LockError(msg)
        known = self._known.get(lock.id)
        if known is not None:
            return known
        run_id = self._synced.get(lock.id, run_id)
        if run_id:
            with contextlib.suppress(self.mlflow.exceptions.MlflowException):
                found = self.client.get_run(run_id)
                if (
                    found.info.lifecycle_stage == "active"
                    and found.data.tags.get(RUN_ID_TAG) == lock.id
                ):
                    return found
        exp_id = self._experiment(lock.stage)
        if exp_id in self._prefetched:
            return None
        return self._search(exp_id, lock.id)

    def _experiment(self, stage: str) -> str:
        exp_id = self._experiments.get(stage)
        if exp_id is None:
            exp_id = self._get_or_create_experiment(stage)
            self._experiments[stage] = exp_id
        self.mirror.experiment(exp_id)
        return exp_id

    def _get_or_create_experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            root = artifacts_root(self.uri)
            location = None if root is None else (root / name).as_uri()
            try:
                return str(self.client.create_experiment(name, artifact_location=location))
            except self.mlflow.exceptions.MlflowException:
                exp = self.client.get_experiment_by_name(name)  # created meanwhile elsewhere
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)

    def _unlogged(self, run_id: str, points: list[_Point]) -> list[_Point]:
        """The points not yet in MLflow (read back per metric key)."""
        logged: Counter[tuple[str, int, int, str]] = Counter()
        for key in {p.key for p in points}:
            for m in self.client.get_metric_history(run_id, key):
                logged[_ident(m.key, m.timestamp, m.step, float(m.value))] += 1
        fresh = []
        for point in points:
            ident = point.ident()
            if logged[ident] > 0:
                logged[ident] -= 1
            else:
                fresh.append(point)
        return fresh

    def _log_batch(
        self, run_id: str, params: Mapping[str, str], tags: Mapping[str, str], points: list[_Point]
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        p = [Param(k, v) for k, v in params.items()]
        t = [RunTag(k, v) for k, v in tags.items()]
        m = [Metric(x.key, x.value, x.timestamp, x.step) for x in points]
        while p or t or m:
            bp, p = p[:BATCH_PARAMS], p[BATCH_PARAMS:]
            bt, t = t[:BATCH_TAGS], t[BATCH_TAGS:]
            room = BATCH_ENTITIES - len(bp) - len(bt)
            bm, m = m[:room], m[room:]
            self.client.log_batch(run_id, metrics=bm, params=bp, tags=bt)

    def _set_status(self, run_id: str, lock: RunLock, info: Any = None) -> bool:
        """Make the MLflow run's status and end time those of run.lock (``info``: as now).

        Returns whether they changed.
        """
        status, end = STATUS[lock.status], _ms(lock.ended)
        if status == "RUNNING":
            if info is None or info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
                return True
        elif info is None or info.status != status or info.end_time != end:
            self.client.set_terminated(run_id, status=status, end_time=end)
            return True
        return False

    def _upload(self, run: Run, artifact_uri: str, state: dict[str, Any]) -> int:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        sent = dict(state.get("artifacts") or {})
        uploaded = 0
        repo: Any = None  # made once per run: the client would look the run up for every file
        for attr in ARTIFACTS:
            path: Path = getattr(run.paths, attr)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            signature = [st.st_size, st.st_mtime_ns]
            if sent.get(path.name) != signature:
                repo = repo or get_artifact_repository(artifact_uri)
                repo.log_artifact(str(path))
                sent[path.name] = signature
                uploaded += 1
        state["artifacts"] = sent
        return uploaded

    def _apply_loggers(self, run: Run, run_id: str, loggers: Sequence[Callable[..., Any]]) -> None:
        mlflow = self.mlflow
        errors: list[BaseException] = []
        try:
            with (
                fluent_uri(mlflow, self.uri),
                mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None),
            ):
                for fn in loggers:
                    try:
                        fn(run, mlflow)
                    except Exception as e:
                        name = getattr(fn, "__qualname__", repr(fn))
                        _log.warning(
                            "logger %s failed on %s: %s: %s", name, run.dir, type(e).__name__, e
                        )
                        with contextlib.suppress(AttributeError):  # said: not again by callers
                            setattr(e, LOGGER_FAILED, True)
                        errors.append(e)
        finally:
            self._set_status(run_id, run.lock)  # start_run/end_run changed status and end time
        if errors:
            raise errors[0]


# set on an exception a ``@main.logger`` function raised, once its warning was logged
LOGGER_FAILED = "_xpkit_logger_failed"


def reported(exc: BaseException) -> bool:
    """True when ``exc`` came from a logger whose failure was already logged."""
    return bool(getattr(exc, LOGGER_FAILED, False))


@contextlib.contextmanager
def fluent_uri(mlflow: Any, uri: str) -> Iterator[None]:
    """Point mlflow's fluent API at ``uri``, then restore it exactly as it was.

    ``mlflow.set_tracking_uri`` also sets the ``MLFLOW_TRACKING_URI`` environment variable,
    so both the module's URI and the variable are restored (or removed).
    """
    from mlflow.tracking._tracking_service import utils

    old_uri = getattr(utils, "_tracking_uri", None)
    old_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_uri)
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env


def _diff_params(
    params: Mapping[str, str], old: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Params not yet logged, and conflicting values as ``xpkit.param_conflict.*`` tags."""
    new = {k: v for k, v in params.items() if k not in old}
    conflicts = {
        mlflow_key(f"xpkit.param_conflict.{k}"): v
        for k, v in params.items()
        if k in old and old[k] != v
    }
    return new, conflicts


def _local_run(ref: UpstreamRef, root: Path) -> Run | None:
    """The upstream run's directory in this project, when it is there and is that run."""
    if not ref.dir:
        return None
    path = root / ref.dir
    try:
        path.resolve().relative_to(root.resolve())  # run.lock may name any path: stay inside
        run = Run(path)
        return run if run.lock.id == ref.id else None
    except (ValueError, OSError, LockError):
        return None


def sync_run(
    run: Run | str | os.PathLike[str],
    *,
    client: Any = None,
    loggers: Sequence[Callable[..., Any]] = (),
) -> str:
    """Sync one run directory into MLflow (idempotent); return its MLflow run id.

    Args:
        run: a ``Run`` or a run directory.
        client: an ``mlflow.MlflowClient`` (default: one on the project's tracking store).
        loggers: functions ``fn(run, mlflow)`` called inside ``mlflow.start_run(<its id>)``.

    Example:
        >>> run_id = xp.sync_run("results/train/latest")  # doctest: +SKIP
    """
    return Syncer(client=client).sync(run, loggers=loggers).mlflow_id
