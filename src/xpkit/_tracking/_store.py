"""Where runs are mirrored and whether: the tracking store, its lock, mlflow itself.

Tracking store: ``MLFLOW_TRACKING_URI``, else ``[tool.xpkit] tracking_uri``, else
``sqlite:///<root>/<results_dir>/mlflow.db``. Artifacts of a SQLite store go to
``mlartifacts/`` next to its file. Automatic sync is on unless ``XPKIT_TRACKING`` or
``[tool.xpkit] tracking`` say no, and only when mlflow is installed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._core._paths import display_path
from .._core._settings import Settings, load_settings
from ..errors import WriteError, missing_extra

__all__ = [
    "artifacts_root",
    "default_uri",
    "import_mlflow",
    "mlflow_installed",
    "prepare_store",
    "project_lock",
    "tracking_enabled",
    "tracking_uri",
]

_OFF = ("0", "false", "no", "off", "")


def default_uri(settings: Settings) -> str:
    """The embedded store: ``sqlite:///<root>/<results_dir>/mlflow.db``."""
    return f"sqlite:///{settings.results_path / 'mlflow.db'}"


def tracking_uri(settings: Settings | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``[tool.xpkit] tracking_uri``, else the embedded store."""
    settings = settings or load_settings()
    return os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri or default_uri(settings)


def tracking_enabled(settings: Settings | None = None) -> bool:
    """Whether runs sync into MLflow automatically: the setting, ``XPKIT_TRACKING``, mlflow."""
    env = os.environ.get("XPKIT_TRACKING")
    if env is not None:
        on = env.strip().lower() not in _OFF
    else:
        on = (settings or load_settings()).tracking
    return on and mlflow_installed()


@functools.cache
def mlflow_installed() -> bool:
    """Whether mlflow can be imported (found without importing it)."""
    return importlib.util.find_spec("mlflow") is not None


def import_mlflow() -> Any:
    """The mlflow module; ImportError naming the extra when it is not installed."""
    try:
        import mlflow
    except ImportError:
        raise missing_extra("mlflow", "mlflow") from None
    return mlflow


_lock_mutex = threading.RLock()
_lock_files: dict[Path, Any] = {}


@contextlib.contextmanager
def project_lock(settings: Settings) -> Iterator[None]:
    """Hold ``<results>/.mlflow.lock``: one sync at a time per project, across processes.

    Re-entrant within a thread; other threads of the process wait like other processes.
    """
    path = settings.results_path / ".mlflow.lock"
    with _lock_mutex:
        if path in _lock_files:  # held by this thread already (the mutex is re-entrant)
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: threads are still serialized
            yield
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a")  # noqa: SIM115 - closed by the with below
        except OSError as e:  # a read-only or full results directory: say where, no traceback
            msg = f"cannot sync into MLflow: cannot write {display_path(path)} ({e.strerror or e})"
            raise WriteError(msg) from None
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            _lock_files[path] = f
            try:
                yield
            finally:
                del _lock_files[path]
                fcntl.flock(f, fcntl.LOCK_UN)


def artifacts_root(uri: str) -> Path | None:
    """``mlartifacts/`` next to a SQLite store's file; None for other stores (theirs)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent / "mlartifacts"
    return None


def prepare_store(uri: str) -> None:
    """Create the directory of a SQLite store file."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
