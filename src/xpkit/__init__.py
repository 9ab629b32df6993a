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

import sys
from typing import TYPE_CHECKING, Any

from .errors import XpkitError

if TYPE_CHECKING:
    from ._api._rerun import rerun
    from ._api._rm import rm
    from ._api._script import run
    from ._api._stage import Stage, stage
    from ._catalog._run import Run
    from ._catalog._runs import Runs, runs
    from ._execute._context import current, get_logger, log_metrics, track_data, use_run
    from ._record._data import diff_manifests, load_manifest
    from ._record._hashing import HashRecord, hash_path
    from ._share._pull import pull
    from ._share._store import push
    from ._tracking._batch import sync_runs
    from ._tracking._mlflow import sync_run

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
    "rerun",
    "rm",
    "run",
    "runs",
    "stage",
    "sync_run",
    "sync_runs",
    "track_data",
    "use_run",
]


# imported on first use (PEP 562): the ``xp`` command does not pay for OmegaConf and the run
# machinery (``stage``), a library call of a stage does not pay for the command line
# (``run``), a script that only runs a stage does not pay for the others
_LAZY = {
    "Stage": "_api._stage",
    "stage": "_api._stage",
    "Run": "_catalog._run",
    "current": "_execute._context",
    "get_logger": "_execute._context",
    "log_metrics": "_execute._context",
    "track_data": "_execute._context",
    "use_run": "_execute._context",
    "run": "_api._script",
    "rerun": "_api._rerun",
    "rm": "_api._rm",
    "HashRecord": "_record._hashing",
    "hash_path": "_record._hashing",
    "diff_manifests": "_record._data",
    "load_manifest": "_record._data",
    "sync_run": "_tracking._mlflow",
    "sync_runs": "_tracking._batch",
    "Runs": "_catalog._runs",
    "runs": "_catalog._runs",
    "pull": "_share._pull",
    "push": "_share._store",
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


def _body_cells_in_console() -> None:
    """In IPython (Jupyter, VSCode), a cell of a stage's body runs as sent from the moment
    xpkit is imported, not only once ``xp.run`` has run (:mod:`._api._cells`)."""
    if "IPython" not in sys.modules:
        return  # a script or a worker: not even _cells is imported
    from ._api._cells import console_shell

    shell = console_shell()
    if shell is not None and hasattr(shell, "input_transformers_cleanup"):
        from ._api._console import enable_body_cells

        enable_body_cells(shell)


_body_cells_in_console()
