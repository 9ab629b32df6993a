"""What a map or sweep sends to its workers: the stage and its configs, run from the snapshot.

The workers of a map or sweep on joblib or Slurm run the code of the snapshot taken when it
was submitted, not the live working tree: a module edited while the jobs wait in the queue
(or between two requeues of a pool worker) changes nothing. The submitting process checks
the snapshot commit out as a code tree (:mod:`~xpkit._record._codetree`); a
:class:`Shipment` carries the stage and its configs pickled, and a worker unpickles them
only after it switched its imports to that tree (:func:`~xpkit._execute._snapcode.use_tree`):

* a stage defined in an importable module is imported again from the tree (run.lock
  ``entry``), so the task runs the snapshot's function;
* a stage defined in a script (``__main__``) travels by value, as it was when the run
  started (when the snapshot was taken); the project modules it uses, and the classes of
  the configs, are imported from the tree.

Without a snapshot (``--no-src``, ``src=False``, a project outside git) the workers import
the live tree, and run.lock ``tasks.code`` says so.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._record._git import Snapshot, snapshot
from .._record._plan import StageInfo
from .._record._source import section_snapshot
from ..errors import GitError, StageImportError, missing_extra

if TYPE_CHECKING:
    import logging

    from omegaconf import DictConfig

    from .._core._settings import Settings
    from .._record._codetree import CodeTree

__all__ = ["LIVE", "Shipment", "snapshot_tree", "tree_of_section"]

LIVE = "working tree"
"""run.lock ``tasks.code`` of workers that import the live working tree (no snapshot)."""


class Shipment:
    """A stage and its configs, pickled once for every worker and loaded there from ``code``."""

    def __init__(
        self, stage: StageInfo, configs: Sequence[DictConfig], code: CodeTree | None
    ) -> None:
        self.code = code
        self.entry = dict(stage.entry())  # found here: a worker cannot tell
        self._loaded: tuple[StageInfo, tuple[DictConfig, ...]] | None = (stage, tuple(configs))
        self._payload: bytes | None = None

    def __getstate__(self) -> dict[str, Any]:
        if self._payload is None:
            self._payload = _dumps(self._loaded)
        return {"code": self.code, "entry": self.entry, "payload": self._payload}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.code, self.entry, self._payload = state["code"], state["entry"], state["payload"]
        self._loaded = None

    @property
    def stage(self) -> StageInfo:
        """The stage (in a worker: from the code tree)."""
        return self._load()[0]

    @property
    def configs(self) -> tuple[DictConfig, ...]:
        """The configs (of the map's run, or of each sweep point)."""
        return self._load()[1]

    @property
    def commit(self) -> str:
        """What run.lock ``tasks.code`` records: the commit workers run, or :data:`LIVE`."""
        return self.code.commit if self.code is not None else LIVE

    def _load(self) -> tuple[StageInfo, tuple[DictConfig, ...]]:
        if self._loaded is None:
            assert self._payload is not None
            if self.code is not None:
                from .._execute._snapcode import use_tree
                from .._record._codetree import keep_tree

                self.code = keep_tree(self.code)  # checked out again if it was removed
                use_tree(self.code)  # before unpickling: by-reference names come from the tree
            stage, configs = pickle.loads(self._payload)  # made by the submitting process
            self._loaded = (self._from_tree(stage), configs)
        return self._loaded

    def _from_tree(self, stage: StageInfo) -> StageInfo:
        """The stage imported from the code tree, unless defined in a script (by value)."""
        module = str(self.entry.get("module") or "")
        if self.code is None or module in ("", "__main__"):
            return stage
        from .._execute._snapcode import stage_in_tree

        try:
            return stage_in_tree(self.entry, self.code)
        except StageImportError as e:
            print(f"[xpkit] running the stage as submitted: {e}", file=sys.stderr)
            return stage


def _dumps(value: Any) -> bytes:
    """Pickle by value what lives in ``__main__`` (a script's stage), the rest by name."""
    try:
        import cloudpickle  # type: ignore[import-untyped]  # untyped; joblib and submitit need it
    except ImportError:
        raise missing_extra("cloudpickle", "parallel") from None
    data: bytes = cloudpickle.dumps(value)
    return data


def tree_of_section(
    src: Mapping[str, Any] | None, settings: Settings, log: logging.Logger
) -> CodeTree | None:
    """The code tree of a run's ``src`` section, or None (no snapshot, or no tree: a
    warning) so that workers import the live tree."""
    snap = section_snapshot(src)
    return None if snap is None else _tree(settings, snap, log)


def snapshot_tree(
    stage: StageInfo, settings: Settings, *, src: bool, log: logging.Logger
) -> CodeTree | None:
    """A snapshot of the working tree taken now, checked out for workers (a sweep's), or
    None when the stage takes no snapshot or it failed."""
    if not (src and stage.src and settings.src):
        return None
    snap = snapshot(
        settings.root,
        message=f"xpkit: {stage.name} sweep",
        branch=settings.branch,
        include=settings.include,
        exclude=settings.exclude,
        max_file_mb=settings.max_file_mb,
        results_dir=settings.results_dir,
        logger=log,
    )
    return _tree(settings, snap, log) if snap.commit else None


def _tree(settings: Settings, snap: Snapshot, log: logging.Logger) -> CodeTree | None:
    from .._record._codetree import code_tree

    try:
        return code_tree(settings.root, snap)
    except (GitError, OSError) as e:
        log.warning("workers run the working tree, not the snapshot: %s", e)
        return None
