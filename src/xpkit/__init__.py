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

from ._context import current, get_logger, log_metrics, track_data, use_run
from ._data import diff_manifests, load_manifest
from ._hashing import HashRecord, hash_path
from ._mlflow import sync_run, sync_runs
from ._run import Run
from ._runs import Runs, runs
from ._script import run
from ._stage import Stage, stage
from .errors import XpkitError

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
    "run",
    "runs",
    "stage",
    "sync_run",
    "sync_runs",
    "track_data",
    "use_run",
]
