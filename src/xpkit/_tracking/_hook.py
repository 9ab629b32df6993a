"""The run hook that mirrors runs into MLflow while they run (when tracking is on).

Light on purpose: it decides whether a run is tracked from the settings and
``XPKIT_TRACKING`` alone, and imports the syncing machinery (``_mlflow_live``, then mlflow
itself, later and lazily) only for a tracked run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._execute._context import ActiveRun

__all__ = ["TRACKING", "Tracking"]


class Tracking:
    """Follows a run for MLflow: live metrics while it runs, the final sync and the stage's
    loggers at its end."""

    def __repr__(self) -> str:
        return "MLflow tracking"

    def begin(self, run: ActiveRun) -> Callable[[], None] | None:
        """Start following ``run``; returns the call that ends it (None when tracking is off)."""
        from ._store import tracking_enabled  # light: decides without importing mlflow

        if not tracking_enabled(run.settings):
            return None
        from ._mlflow_live import begin_run

        tracking = begin_run(run.stage.loggers, run.run, run.settings)
        return None if tracking is None else tracking.end


TRACKING = Tracking()
