"""Slurm job states: one batched ``sacct`` call (``squeue`` without accounting) per poll."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import TaskError

__all__ = ["job_states", "require_jobs", "unfinished"]

_LIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
    | {"CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
)


def job_states(ids: Sequence[str], *, timeout_s: float = 10.0) -> dict[str, str]:
    """``{job id: state}`` from ``sacct`` (with a timeout), else ``squeue``; {} when unknown."""
    if not ids:
        return {}
    joined = ",".join(ids)
    out = _ask(["sacct", "-n", "-P", "-X", "-j", joined, "-o", "JobID,State"], timeout_s)
    if out is None:
        out = _ask(["squeue", "-h", "-j", joined, "-o", "%i|%T"], timeout_s)
        if out is None:
            return {}
        states = dict.fromkeys(ids, "GONE")
    else:
        states = {}
    for line in out.splitlines():
        job, _, state = line.partition("|")
        if job:
            states[job.strip()] = state.split()[0] if state.strip() else "UNKNOWN"
    return states


def _ask(cmd: list[str], timeout_s: float) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def unfinished(states: Mapping[str, str]) -> list[str]:
    """The jobs still pending or running."""
    return [job for job, state in states.items() if state in _LIVE_STATES]


def require_jobs(lock: Any) -> list[str]:
    """The Slurm job ids of a mapped run.

    Raises:
        TaskError: the run was not submitted to Slurm.
    """
    jobs = (lock.tasks or {}).get("jobs")
    if not jobs:
        msg = f"run {lock.id} has no Slurm jobs"
        raise TaskError(msg)
    return [str(j) for j in jobs]
