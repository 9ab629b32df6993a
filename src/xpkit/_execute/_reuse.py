"""Reuse: a call whose run would be the same as a completed one returns that run instead.

Asked for with ``@xp.stage(reuse=True)``, ``main(..., reuse=True)`` or ``--reuse``. After
the plan (config resolved, inputs checked) and before any directory exists, a completed
run of the stage is looked for, newest first, that has

* the same resolved config, ``save_dir`` aside (a value below the run directory counts as
  the same path below the new one),
* the same code: the blobs of the files in its ``src.files`` match the working tree's
  (``git hash-object`` on those files, one process for all candidates),
* the same inputs: each recorded ``data`` path hashes the same now (through the hash cache:
  unchanged files are not read),
* the same upstream runs: each upstream config key names the run it consumed; runs it
  made by calling stages in its body must be valid themselves (recursively),
* a return value that can be given back (see :mod:`._returned`).

The candidates come from the run index (:class:`~xpkit._catalog._runindex.RunIndex`): heads
of unchanged run.lock files are cached, so the check reads no YAML for most past runs.
A reused run is announced ("reused run <id> (nothing changed)"), becomes the stage's
``latest``, is recorded as an upstream of the running stage that called it, and gets a
line in its ``.xpkit/reuses.jsonl`` (``xp show`` counts them).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._catalog._run import Run
from .._catalog._runindex import RunIndex
from .._core import _config
from .._core._lock import RunLock, load_lock
from .._core._paths import LOCK, RunPaths, display_path, point_latest
from .._record._git import run_git
from .._record._hashing import cache_path_of, hash_one, jobs_of
from ..errors import GitError, LockError, NotInRunError, XpkitError
from ._context import active_run, drop_logger, make_logger
from ._returned import NOT_KEPT, load_result, record_reuse

if TYPE_CHECKING:
    from .._core._settings import Settings
    from .._record._plan import RunPlan

__all__ = ["Now", "comparable", "find_reusable", "reuse_run"]

_MAX_DEPTH = 20


def reuse_run(plan: RunPlan) -> Run | None:
    """The completed run to give back instead of running ``plan`` (announced, recorded), or
    None: run it."""
    if not (plan.src and plan.stage.src and plan.settings.src):
        _say(plan, "no run reused: reuse compares the code snapshot, and this run takes none")
        return None
    found = find_reusable(plan)
    if found is None:
        return None
    _announce(plan, found)
    return found


def find_reusable(plan: RunPlan) -> Run | None:
    """The newest completed run ``plan`` would repeat, its return value in ``run.result``."""
    settings = plan.settings
    want = comparable(_config.to_plain(plan.config))
    now = Now(settings)
    for where, head in _candidates(plan):
        if comparable(dict(head.config)) != want:
            continue
        run_dir = Path(where)
        if not _same_inputs(plan, head, now, run_dir):
            continue
        value = load_result(run_dir, settings)
        if value is NOT_KEPT:
            continue
        run = Run(run_dir)
        run.result = value
        return run
    return None


def _candidates(plan: RunPlan) -> list[tuple[str, RunLock]]:
    """Completed single runs of the stage beside where this one would go, newest first."""
    settings = plan.settings
    places = {
        str(settings.resolve(str(plan.config.save_dir)).parent),
        str(settings.results_path / plan.stage.name),
    }
    index = RunIndex(settings.results_path / ".xpkit" / "runs.json")  # as ``xp ls`` keeps it
    heads = []
    for lock_path in (lock for place in sorted(places) for lock in _locks_in(place)):
        try:
            head = index.head(lock_path)
        except LockError:
            continue
        if head.tasks is None and head.status == "completed" and head.stage == plan.stage.name:
            heads.append((os.path.dirname(lock_path), head))
    with contextlib.suppress(OSError):
        index.save()
    return sorted(heads, key=lambda pair: pair[1].started, reverse=True)


def _locks_in(place: str) -> list[str]:
    """The run.lock paths of the run directories right below ``place`` (one listing: a
    directory without run.lock is skipped by the index's stat)."""
    try:
        entries = list(os.scandir(place))
    except OSError:
        return []
    return [
        os.path.join(e.path, LOCK)
        for e in entries
        if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
    ]


def comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without ``save_dir``; values below it written relative to it."""
    save_dir = str(config.get("save_dir") or "")
    return {k: _rebased(v, save_dir) for k, v in config.items() if k != "save_dir"}


def _rebased(value: Any, save_dir: str) -> Any:
    if isinstance(value, Mapping):
        return {k: _rebased(v, save_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebased(v, save_dir) for v in value]
    if isinstance(value, str) and save_dir and (value + "/").startswith(save_dir + "/"):
        return "${save_dir}" + value[len(save_dir) :]
    return value


def _same_inputs(plan: RunPlan, head: RunLock, now: Now, run_dir: Path) -> bool:
    """Same code and data (from the head), then same upstream runs (from the full lock)."""
    if _changed(head.to_dict(), now, depth=0, upstream=False):
        return False
    try:
        lock = load_lock(RunPaths(run_dir).lock)
    except LockError:
        return False
    upstream = (lock.upstream or {}).items()
    return all(_same_upstream(plan, lock, str(key), entry, now) for key, entry in upstream)


def _same_upstream(plan: RunPlan, lock: RunLock, key: str, entry: Any, now: Now) -> bool:
    """Whether a recorded upstream run is still the one this call would consume."""
    if not isinstance(entry, Mapping):
        return False
    if key in plan.stage.upstream:  # named by the config: the same run as now
        return _current_id(plan, key) == entry.get("id")
    if now.run_id(entry.get("dir")) != entry.get("id"):
        return False
    # a stage the body called: it would run again, so its own inputs must be unchanged
    return not (_made_by(lock, entry) and _changed(entry, now, depth=1, upstream=True))


def _made_by(lock: RunLock, entry: Mapping[str, Any]) -> bool:
    """Whether the upstream run was made by the body of ``lock``'s run (a stage it called),
    rather than found (``xp.use_run``): it started after the run did."""
    return str(entry.get("started") or "") >= lock.started


def _current_id(plan: RunPlan, key: str) -> str | None:
    """The id of the run the config key ``key`` names now (resolved by the plan)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(plan.config, key, default=None)
    return plan_id(plan.settings, value)


def plan_id(settings: Settings, value: Any) -> str | None:
    """The id of the run in the directory ``value`` (relative to the project root), or None."""
    if not isinstance(value, (str, os.PathLike)):
        return None
    with contextlib.suppress(XpkitError, OSError):
        return load_lock(RunPaths(settings.resolve(value)).lock).id
    return None


def _changed(lock: Mapping[str, Any], now: Now, *, depth: int, upstream: bool) -> bool:
    """Whether the code or data recorded in ``lock`` differ from today's (and, with
    ``upstream``, those of the runs it recorded, recursively)."""
    if depth > _MAX_DEPTH:
        return True
    src = lock.get("src")
    if not isinstance(src, Mapping):
        return True
    files = src.get("files")
    if not isinstance(files, Mapping) or not files or not src.get("commit"):
        return True  # no code record: nothing says the code is the same
    if now.blobs(files) != dict(files):
        return True
    for entry in (lock.get("data") or {}).values():
        if not isinstance(entry, Mapping) or not entry.get("hash"):
            return True
        if now.hash(str(entry.get("path"))) != entry["hash"]:
            return True
    if not upstream:
        return False
    for entry in (lock.get("upstream") or {}).values():
        if not isinstance(entry, Mapping) or now.run_id(entry.get("dir")) != entry.get("id"):
            return True
        if _changed(entry, now, depth=depth + 1, upstream=True):
            return True
    return False


class Now:
    """Today's blobs, data hashes and run ids, each computed once per reuse check."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._blobs: dict[str, str | None] = {}
        self._hashes: dict[str, str | None] = {}

    def blobs(self, files: Iterable[str]) -> dict[str, str | None]:
        """The blob sha each file (relative to the project root) would have if committed."""
        wanted = [str(f) for f in files]
        missing = [f for f in wanted if f not in self._blobs]
        if missing:
            self._blobs.update(self._hash_objects(missing))
        return {f: self._blobs[f] for f in wanted}

    def _hash_objects(self, rels: list[str]) -> dict[str, str | None]:
        root = self.settings.root
        present = [r for r in rels if (root / r).is_file()]
        out: dict[str, str | None] = dict.fromkeys(rels)
        if not present:
            return out
        stdin = "".join(f"{r}\n" for r in present).encode()
        try:
            shas = run_git(root, ["hash-object", "--stdin-paths"], stdin).decode().split()
        except GitError:
            return out
        out.update(zip(present, shas, strict=False))
        return out

    def hash(self, path: str) -> str | None:
        """The xxh3-128 hash of a data path (relative to the project root) today."""
        if path not in self._hashes:
            self._hashes[path] = self._hash(self.settings.resolve(path))
        return self._hashes[path]

    def _hash(self, path: Path) -> str | None:
        if not path.exists():
            return None
        try:
            record = hash_one(
                str(path),
                include=None,
                exclude=None,
                cache_path=cache_path_of(self.settings),
                jobs=jobs_of(self.settings),
                progress=None,
                log=logging.getLogger("xpkit.hashing"),
            )
        except (OSError, ValueError, XpkitError):
            return None
        return record.hash

    def run_id(self, where: Any) -> str | None:
        """The id of the run in the directory ``where`` (relative to the project root)."""
        return plan_id(self.settings, where)


def _say(plan: RunPlan, message: str, run_id: str = "-") -> None:
    """One line on the run's logger (stdout, and the calling run's run.log)."""
    logger = make_logger(plan.stage.name, run_id)
    try:
        logger.info(message)
    finally:
        drop_logger(logger)


def _announce(plan: RunPlan, run: Run) -> None:
    """Say so, point ``latest`` at it, and record the reuse (here and in a calling run)."""
    lock = run.lock
    _say(plan, f"reused run {lock.id} (nothing changed): {display_path(run.dir)}", lock.id)
    if plan.settings.results_path.resolve() in run.dir.resolve().parents:
        point_latest(run.dir)
    parent = active_run()
    record_reuse(run.dir, by=parent.id if parent is not None else None)
    if parent is not None:
        with contextlib.suppress(NotInRunError):  # a map's task context records no upstream
            recorder: Any = parent.recorder("upstream")
            recorder.add(lock.dir, lock.to_dict())
