"""``xp.rerun``: run a past run again from its code snapshot, config, upstream runs and inputs.

In this process, before anything runs::

    the run       run.lock must record a code snapshot (``src.commit``, which may have
                  arrived from a store as a git bundle) and the stage's ``entry``
    its inputs    every recorded ``data`` path hashes as recorded (through the hash cache);
                  a changed one is an InputChangedError naming it, unless allowed
    its upstream  every upstream config key still names the run (same id) it consumed; a
                  run that moved is found again by its id
    its code      the snapshot checked out as a code tree (``_record/_codetree.py``)

Then a fresh Python process, started in the project root, imports the project's code from
the tree (the tree first on ``sys.path``: modules of the same name in the live tree never
collide) and runs the stage there through the usual lifecycle, with the recorded config (its
paths below the old run directory moved below the new one) and the overrides. The new run
lands in the results like any run, ``latest`` updated, with ``rerun_of: <id>`` in run.lock
and ``src`` naming the snapshot it ran. A map is rerun as a new map over the recorded task
list (``failed=True``: over the tasks that did not succeed), on its recorded backend.

``verify=True`` then compares the output files of both runs (``_record/_verify.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._catalog._run import Run
from .._catalog._runs import resolve_run
from .._core._lock import RunLock, load_lock
from .._core._paths import PACKAGE_DIR, RunPaths, display_path
from .._core._settings import Settings, load_settings
from .._execute._reuse import Now
from .._record._codetree import CodeTree, code_tree
from .._record._git import Snapshot
from .._record._source import section_snapshot
from .._record._verify import Comparison, compare_outputs
from ..errors import (
    InputChangedError,
    NotReproducibleError,
    RerunError,
    RunNotFoundError,
    UpstreamError,
)

__all__ = ["Rerun", "rerun", "rerun_run"]


@dataclass(frozen=True)
class Rerun:
    """A rerun: the new run, and the comparison of its outputs when verified."""

    run: Run
    original: Run
    comparison: Comparison | None = None


def rerun(
    run: str | os.PathLike[str] | Run,
    *,
    verify: bool = False,
    failed: bool = False,
    allow_changed_data: bool = False,
    **overrides: Any,
) -> Run:
    """Run a past run again from its code snapshot, recorded config, upstream runs and inputs.

    The user's working tree is never touched: the stage is imported from a git worktree of
    the run's snapshot, in a fresh process. ``verify``, ``failed`` and
    ``allow_changed_data`` are options, never config keys; every other keyword overrides a
    config key (dotted names allowed: ``**{"model.lr": 0.1}``).

    Args:
        run: a run directory, ``latest`` link or run id prefix.
        verify: compare the new run's output files with the original's (xxh3).
        failed: for a map, rerun only its tasks that did not succeed.
        allow_changed_data: run even when a recorded input changed since.

    Returns:
        The new run (``rerun_of`` in its run.lock).

    Raises:
        InputChangedError: an input changed since the run (not allowed).
        NotReproducibleError: ``verify`` found differing, missing or extra files.
        RerunError: no snapshot or entry recorded, or the rerun itself failed.

    Example:
        >>> xp.rerun("3fa9c2", verify=True)  # doctest: +SKIP
    """
    done = rerun_run(
        run,
        verify=verify,
        failed=failed,
        allow_changed_data=allow_changed_data,
        values=overrides,
    )
    if done.comparison is not None and not done.comparison.ok:
        shown = ", ".join([*done.comparison.differing, *done.comparison.missing][:5])
        msg = f"rerun {done.run.id} of {done.original.id} is not identical: {shown}"
        raise NotReproducibleError(msg)
    return done.run


def rerun_run(
    run: str | os.PathLike[str] | Run,
    *,
    verify: bool = False,
    failed: bool = False,
    allow_changed_data: bool = False,
    values: Mapping[str, Any] | None = None,
    dotlist: Sequence[str] = (),
    backend: str | None = None,
    jobs: int | None = None,
    argv: Sequence[str] | None = None,
) -> Rerun:
    """:func:`rerun`, with command-line overrides (``KEY=VALUE``), a backend for a map,
    and the comparison returned rather than raised."""
    settings = load_settings()
    original = resolve_run(run, settings=settings)
    lock = _full_lock(original)
    if verify and failed:
        msg = "--verify compares a whole rerun; it does not combine with --failed"
        raise RerunError(msg)
    tree = _tree(original, lock, settings)
    _check_inputs(original, lock, settings, allow_changed=allow_changed_data)
    spec = _Spec(
        original=str(original.dir),
        id=lock.id,
        entry=dict(_entry(original, lock)),
        config=_config_for_rerun(lock, _moved_upstream(original, lock, settings)),
        values=_jsonable(dict(values or {})),
        dotlist=list(dotlist),
        argv=list(argv if argv is not None else sys.argv),
        map=_map_spec(original, lock, failed=failed, backend=backend, jobs=jobs),
    )
    new = _run_child(spec, tree, settings)
    comparison = compare_outputs(original.dir, new.dir) if verify else None
    return Rerun(run=new, original=original, comparison=comparison)


# --- checks in this process ----------------------------------------------------------------


def _full_lock(run: Run) -> RunLock:
    lock = run.lock
    if lock.status == "running" and run.status == "running":
        msg = f"run {lock.id} ({display_path(run.dir)}) is still running; rerun it once it ended"
        raise RerunError(msg)
    return lock


def _tree(run: Run, lock: RunLock, settings: Settings) -> CodeTree:
    snap = section_snapshot(lock.src)
    if snap is None:
        why = (lock.src or {}).get("error") or "it ran without one (src=False or --no-src)"
        msg = f"run {lock.id} recorded no code snapshot to rerun from: {why}"
        raise RerunError(msg)
    return code_tree(settings.root, snap)


def _entry(run: Run, lock: RunLock) -> Mapping[str, Any]:
    entry = lock.extra.get("entry")
    if not isinstance(entry, Mapping) or not entry.get("qualname"):
        msg = f"run {lock.id} ({display_path(run.dir)}) records no stage entry to import"
        raise RerunError(msg)
    return entry


def _check_inputs(run: Run, lock: RunLock, settings: Settings, *, allow_changed: bool) -> None:
    """Every recorded input hashes as recorded, or InputChangedError (unless allowed)."""
    now = Now(settings)
    for name, entry in (lock.data or {}).items():
        if not isinstance(entry, Mapping):
            continue
        path, recorded = str(entry.get("path")), entry.get("hash")
        current = now.hash(path)
        if current == recorded or allow_changed:
            continue
        what = "is missing" if current is None else "changed"
        msg = (
            f"input {name!r} ({path}) {what} since run {lock.id}"
            f" (recorded {recorded}, now {current}); rerun with --allow-changed-data"
            " (allow_changed_data=True) to use it as it is"
        )
        raise InputChangedError(msg)


def _moved_upstream(run: Run, lock: RunLock, settings: Settings) -> dict[str, str]:
    """``{config key: run directory}`` of the upstream runs consumed through a config key,
    found again by id where they moved.

    Raises:
        UpstreamError: an upstream run is gone (not in its directory, no run with its id).
    """
    from omegaconf import OmegaConf

    config = OmegaConf.create(dict(lock.config))
    moved: dict[str, str] = {}
    for key, entry in (lock.upstream or {}).items():
        value = OmegaConf.select(config, str(key), default=None)
        if not isinstance(entry, Mapping) or not isinstance(value, str):
            continue  # found by the body (xp.use_run, a stage it called): it does it again
        wanted = str(entry.get("id"))
        if _id_at(settings.resolve(value)) == wanted:
            continue
        try:
            found = resolve_run(wanted, settings=settings)
        except RunNotFoundError:
            msg = (
                f"upstream {key!r} of run {lock.id} was run {wanted} ({value}), which is not"
                f" there any more; pull it (xp pull {wanted}) or restore it"
            )
            raise UpstreamError(msg) from None
        moved[str(key)] = settings.relative(found.dir)
    return moved


def _id_at(path: Path) -> str | None:
    try:
        return load_lock(RunPaths(path).lock).id
    except Exception:
        return None


def _config_for_rerun(lock: RunLock, moved: Mapping[str, str]) -> dict[str, Any]:
    """The recorded config without ``save_dir``; paths below the old run directory made
    ``${save_dir}`` paths, so that the rerun writes into its own directory."""
    from omegaconf import OmegaConf

    from .._execute._reuse import comparable

    config = OmegaConf.create(comparable(dict(lock.config)))
    for key, where in moved.items():
        OmegaConf.update(config, key, where, force_add=True)
    plain = OmegaConf.to_container(config, resolve=False)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items()}


def _map_spec(
    run: Run, lock: RunLock, *, failed: bool, backend: str | None, jobs: int | None
) -> dict[str, Any] | None:
    """For a map: its task list (or the indices of its tasks that did not succeed), key and
    backend; None for a single run."""
    if lock.tasks is None:
        if failed:
            msg = f"run {lock.id} is not a map: --failed reruns the failed tasks of a map"
            raise RerunError(msg)
        return None
    from .._parallel import _tasks

    todo = list(_tasks.read_todo(run.paths))
    indices = list(range(len(todo)))
    if failed:
        ok = _tasks.scan_done(run.paths, len(todo)).ok
        indices = [i for i in indices if i not in ok]
        if not indices:
            msg = f"map {lock.id} has no failed or missing task to rerun"
            raise RerunError(msg)
    recorded = dict(lock.tasks)
    was = str(recorded.get("backend") or "serial")
    chosen = backend or was
    return {
        "tasks": [todo[i] for i in indices],
        "indices": indices if failed else None,
        "key": recorded.get("key"),
        "backend": chosen,
        "jobs": jobs,
        # the recorded backend's options (Slurm's) hold on that backend only
        "slurm": dict(recorded.get("slurm") or {}) if chosen == was else {},
    }


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(values)
    except (TypeError, ValueError) as e:
        msg = f"rerun overrides must be plain values (numbers, strings, lists, dicts): {e}"
        raise RerunError(msg) from None
    return values


# --- the rerun process -----------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """What the rerun process needs (sent as JSON)."""

    original: str
    id: str
    entry: dict[str, Any]
    config: dict[str, Any]
    values: dict[str, Any]
    dotlist: list[str]
    argv: list[str]
    map: dict[str, Any] | None


def _run_child(spec: _Spec, tree: CodeTree, settings: Settings) -> Run:
    """Run the spec in a fresh process importing the tree; return the new run."""
    with tempfile.TemporaryDirectory(prefix="xpkit-rerun-") as tmp:
        spec_file, result_file = Path(tmp, "spec.json"), Path(tmp, "result.json")
        payload = {
            "spec": dataclasses.asdict(spec),
            "tree": _tree_dict(tree),
            "result": str(result_file),
        }
        spec_file.write_text(json.dumps(payload), encoding="utf-8")
        code = f"from {__name__} import child_main; raise SystemExit(child_main())"
        env = {**os.environ, "XPKIT_ROOT": str(settings.root)}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.path.dirname(PACKAGE_DIR), env.get("PYTHONPATH")) if p
        )
        status = subprocess.run(
            [sys.executable, "-c", code, str(spec_file)], cwd=settings.root, env=env, check=False
        ).returncode
        try:
            result = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            msg = f"the rerun of {spec.id} ended (exit status {status}) before it made a run"
            raise RerunError(msg) from None
    if result.get("error") and not result.get("dir"):
        msg = f"cannot rerun {spec.id}: {result['error']}"
        raise RerunError(msg)
    return Run(result["dir"])


def _tree_dict(tree: CodeTree) -> dict[str, Any]:
    return {
        "snapshot": dataclasses.asdict(tree.snapshot),
        "dir": str(tree.dir),
        "root": str(tree.root),
        "worktree": str(tree.worktree),
    }


def child_main() -> int:
    """The rerun process: import the stage from the tree and run it (see :func:`_child`)."""
    payload = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    result_file = Path(payload["result"])
    try:
        run_dir, error = _child(payload)
    except Exception as e:  # bad input found in the rerun process: one line for the caller
        result_file.write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 2
    result_file.write_text(json.dumps({"dir": run_dir, "error": error}))
    return 0 if error is None else 1


def _child(payload: Mapping[str, Any]) -> tuple[str, str | None]:
    """Import the stage from the tree, build its config, run it; (run dir, error line)."""
    from .._execute._lifecycle import RunRequest, execute
    from .._execute._snapcode import stage_in_tree
    from .._tracking._hook import TRACKING
    from ._stage import Stage

    spec = _Spec(**payload["spec"])
    tree = _tree_from(payload["tree"])
    sys.argv = list(spec.argv)
    stage = stage_in_tree(spec.entry, tree)
    if not isinstance(stage, Stage):
        msg = f"{spec.entry.get('qualname')} is not an xpkit stage"
        raise RerunError(msg)
    cfg = _child_config(stage, spec)
    extra = _child_extra(spec)
    if spec.map is not None:
        return _child_map(stage, cfg, spec, tree, extra)
    request = RunRequest(
        stage=stage,
        config=cfg,
        argv=spec.argv,
        fds=True,
        extra=extra,
        hooks=(TRACKING,),
        code=tree,
    )
    result = execute(request)
    return str(result.run.dir), _error_line(result.error)


def _tree_from(t: Mapping[str, Any]) -> CodeTree:
    snap = {**t["snapshot"], "skipped": tuple(t["snapshot"]["skipped"])}
    return CodeTree(
        snapshot=Snapshot(**snap),
        dir=Path(t["dir"]),
        root=Path(t["root"]),
        worktree=Path(t["worktree"]),
    )


def _child_config(stage: Any, spec: _Spec) -> Any:
    """The stage's defaults, then the recorded config, then the overrides."""
    from .._core import _config
    from ._stage import _apply_kwargs

    cfg = _config.merge_layer(stage.config(), spec.config, source=f"the config of run {spec.id}")
    if spec.values:
        cfg = _apply_kwargs(cfg, spec.values)
    if spec.dotlist:
        cfg = _config.apply_dotlist(cfg, spec.dotlist, source="the rerun's overrides")
    return cfg


def _child_extra(spec: _Spec) -> dict[str, Any]:
    """run.lock ``rerun_of``, and ``rerun_overrides`` when there are some."""
    extra: dict[str, Any] = {"rerun_of": spec.id}
    shown = [*spec.dotlist, *(f"{k}={v!r}" for k, v in spec.values.items())]
    if shown:
        extra["rerun_overrides"] = shown
    return extra


def _child_map(
    stage: Any, cfg: Any, spec: _Spec, tree: CodeTree, extra: dict[str, Any]
) -> tuple[str, str | None]:
    from .._parallel._map import MapOptions, map_stage
    from .._parallel._registry import make_backend
    from .._tracking._hook import TRACKING

    m = spec.map
    assert m is not None
    if m["indices"] is not None:
        extra["rerun_tasks"] = m["indices"]
    backend = make_backend(m["backend"], jobs=m["jobs"], slurm=m["slurm"] or None)
    result = map_stage(
        stage,
        cfg,
        m["tasks"],
        MapOptions(key=m["key"]),
        backend,
        argv=spec.argv,
        fds=True,
        hooks=(TRACKING,),
        code=tree,
        extra=extra,
    )
    return str(result.run.dir), _error_line(result.error)


def _error_line(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    return f"{type(exc).__name__}: {exc}"
