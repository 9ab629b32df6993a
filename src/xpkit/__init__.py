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
from ._run import Run
from ._script import run
from ._stage import Stage, stage
from .errors import XpkitError

if TYPE_CHECKING:
    from ._data import diff_manifests, load_manifest
    from ._hashing import HashRecord, hash_path
    from ._mlflow import sync_run, sync_runs
    from ._runs import Runs, runs
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


# imported on first use (PEP 562): a script that only runs a stage does not pay for them
_LAZY = {
    "HashRecord": "_hashing",
    "hash_path": "_hashing",
    "diff_manifests": "_data",
    "load_manifest": "_data",
    "sync_run": "_mlflow",
    "sync_runs": "_mlflow",
    "Runs": "_runs",
    "runs": "_runs",
    "pull": "_store",
    "push": "_store",
}


def __getattr__(name: str) -> Any:
    """The attributes of ``_LAZY``, imported on first use."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'xpkit' has no attribute {name!r}"
        raise AttributeError(msg)
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
