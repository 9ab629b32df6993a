"""Recorders fill sections of run.lock (``env``, ``src``, ``data``, ``upstream``, ...).

A stage run creates fresh recorders and drives them through three phases::

    prepare(plan)   before the run directory exists: validate, raise XpkitError on bad
                    input (a missing data path, a missing upstream); nothing is created;
                    may return ``{dotted_key: value}`` config updates
    start(run)      the run directory exists and run.lock says "running": start work,
                    in a background thread when it is slow; never block the body long
    finish(run)     after the body returned or raised: join background work and return
                    the value stored under ``lock[recorder.key]`` (None: key left out)

``finish`` is called even when the body failed or was interrupted; an exception it raises
is logged as a warning and never hides the body's own outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._execute._context import ActiveRun, RunPlan

__all__ = ["EnvRecorder", "Recorder", "default_recorders"]


class Recorder(Protocol):
    """One section of run.lock."""

    key: str

    def prepare(self, plan: RunPlan) -> Mapping[str, Any] | None:
        """Validate before the run directory exists; may return config updates.

        The returned ``{dotted_key: value}`` replace config values before the run starts
        (an upstream ``latest`` link is recorded as the run directory it points at).
        """

    def start(self, run: ActiveRun) -> None:
        """Start recording; the run directory exists."""

    def finish(self, run: ActiveRun) -> Any:
        """Return the section's value once the body is over."""


class EnvRecorder:
    """``env``: python, platform, host, packages, gpu, slurm (collected in a thread)."""

    key = "env"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._value: dict[str, Any] = {}

    def prepare(self, plan: RunPlan) -> None:
        return None

    def start(self, run: ActiveRun) -> None:
        from .._core._env import collect_env

        def work() -> None:
            self._value = collect_env()

        self._thread = threading.Thread(target=work, name="xpkit-env", daemon=True)
        self._thread.start()

    def finish(self, run: ActiveRun) -> Any:
        if self._thread is not None:
            self._thread.join()
        return self._value


def default_recorders(plan: RunPlan) -> list[Recorder]:
    """The recorders of one run, in the order their sections appear in run.lock."""
    # imported on the first run, not with xpkit
    from ._data import DataRecorder
    from ._lineage import UpstreamRecorder
    from ._source import SourceRecorder

    return [UpstreamRecorder(), SourceRecorder(), DataRecorder(), EnvRecorder()]
