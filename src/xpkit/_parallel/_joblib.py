"""The ``joblib`` backend: items in local worker processes (loky), in batches."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError, missing_extra
from ._backends import OnDone, Submitted, Work, available_cpus, batches

__all__ = ["JoblibBackend"]


class JoblibBackend:
    """Items run in ``jobs`` local processes (default: the CPUs this process may use)."""

    name = "joblib"
    in_process = False
    detached = False

    def __init__(self, jobs: int | None = None) -> None:
        if jobs is not None and jobs < 1:
            msg = f"jobs must be a positive number of processes, got {jobs}"
            raise ConfigError(msg)
        self.jobs = jobs

    def run(self, work: Work, indices: Sequence[int], on_done: OnDone) -> Submitted | None:
        processes = min(self.jobs or available_cpus(), max(1, len(indices)))
        if processes == 1:  # no worker process to start
            for done in work.run(indices):
                on_done(done)
            return None
        try:
            import joblib
        except ImportError:
            raise missing_extra("joblib", "parallel") from None
        parallel = joblib.Parallel(n_jobs=processes, return_as="generator", batch_size=1)
        calls = (joblib.delayed(work.run)(batch) for batch in batches(indices, processes))
        for dones in parallel(calls):
            for done in dones:
                on_done(done)
        return None
