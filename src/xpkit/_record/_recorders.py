"""The recorders of a run: one per section of run.lock (``upstream``, ``src``, ``data``, ``env``).

The interface they follow is in :mod:`._plan`.
"""

from __future__ import annotations

import threading
from typing import Any

from .._core._threads import start_thread
from ._data import DataRecorder
from ._lineage import UpstreamRecorder
from ._plan import Recorder, RecordingRun, RunPlan
from ._source import SourceRecorder

__all__ = ["EnvRecorder", "default_recorders"]


class EnvRecorder:
    """``env``: python, platform, host, packages, gpu, slurm (collected in a thread)."""

    key = "env"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._value: dict[str, Any] = {}

    def prepare(self, plan: RunPlan) -> None:
        return None

    def start(self, run: RecordingRun) -> None:
        from .._core._env import collect_env

        def work() -> None:
            self._value = collect_env()
            run.publish(self.key, self._value)

        self._thread = start_thread(work, name="xpkit-env")

    def finish(self, run: RecordingRun) -> Any:
        if self._thread is not None:
            self._thread.join()
        return self._value


def default_recorders() -> list[Recorder]:
    """The recorders of one run, in the order they start: those working in a thread (data
    hashes, the environment) before the code snapshot, which the body waits for."""
    return [UpstreamRecorder(), DataRecorder(), EnvRecorder(), SourceRecorder()]
