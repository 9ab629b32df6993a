"""xpkit: one function as a script, a console cell and a library, with every run tracked.

Example:
    >>> import xpkit as xp  # doctest: +SKIP
    >>> @xp.stage(data=["raw"])  # doctest: +SKIP
    ... def main(cfg: Config):
    ...     xp.log_metrics({"rows": 3})
    >>> if __name__ == "__main__":  # doctest: +SKIP
    ...     xp.run(main)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._context import current, get_logger, log_metrics, track_data, use_run
from ._data import diff_manifests, load_manifest
from ._hashing import HashRecord, hash_path
from ._mlflow import sync_run, sync_runs
from ._run import Run
from ._runs import Runs, runs
from ._script import run
from ._stage import Stage, stage
from .errors import XpkitError

if TYPE_CHECKING:
    from ._store import pull, push

__version__ = "0.1.0"

__all__ = [
    "HashRecord",
    "Run",
    "Runs",
    "Stage",
    "XpkitError",
    "__version__",
    "current",
    "diff_manifests",
    "get_logger",
    "hash_path",
    "load_manifest",
    "log_metrics",
    "pull",
    "push",
    "run",
    "runs",
    "stage",
    "sync_run",
    "sync_runs",
    "track_data",
    "use_run",
]


def __getattr__(name: str) -> Any:
    """``xp.push`` and ``xp.pull``, imported on first use: the store modules cost ~30 ms."""
    if name in ("pull", "push"):
        from . import _store

        return getattr(_store, name)
    msg = f"module 'xpkit' has no attribute {name!r}"
    raise AttributeError(msg)
