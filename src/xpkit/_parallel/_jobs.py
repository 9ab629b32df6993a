"""Slurm job states: one batched ``sacct`` call (``squeue`` without accounting) per poll.

Never submitit's own ``job.state`` / ``done()`` / ``result()``: they ask ``sacct`` again and
again while waiting (submitit #1759).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import TaskError

__all__ = ["expand_ids", "job_ranges", "job_states", "require_jobs", "unfinished"]

_LIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
    | {"CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
    | {"UNKNOWN"}  # not listed (yet) by accounting: never taken for gone
)


def job_states(ids: Sequence[str], *, timeout_s: float = 10.0) -> dict[str, str]:
    """``{job id: state}`` from one ``sacct`` call (with a timeout), else one ``squeue``
    call; {} when unknown.

    The call names each array once (``123`` for ``123_0`` ... ``123_9999``), so that ten
    thousand tasks cost one short command line; the consolidated rows of pending tasks
    (``123_[5-9999%50]``) are expanded back to the ids asked for.
    """
    if not ids:
        return {}
    wanted = set(ids)
    arrays = ",".join(dict.fromkeys(job.partition("_")[0] for job in ids))
    out = _ask(["sacct", "-n", "-P", "-X", "-j", arrays, "-o", "JobID,State"], timeout_s)
    states: dict[str, str] = {}
    if out is None:
        out = _ask(["squeue", "-h", "-r", "-j", arrays, "-o", "%i|%T"], timeout_s)
        if out is None:
            return {}
        states = dict.fromkeys(ids, "GONE")
    listed: set[str] = set()
    for line in out.splitlines():
        job, _, state = line.partition("|")
        shown = state.split()[0] if state.strip() else "UNKNOWN"
        listed.add(job.strip().partition("_")[0])
        for one in expand_ids(job.strip()):
            if one in wanted:
                states[one] = shown
    # accounting lags behind the controller: a task of a listed array that is not listed
    # itself yet may well run (an array accounting never heard of is left out, as before)
    for job in ids:
        if job not in states and job.partition("_")[0] in listed:
            states[job] = "UNKNOWN"
    return states


def expand_ids(job: str) -> list[str]:
    """Slurm's ``123_[0-3,7%2]`` as ``["123_0", ..., "123_3", "123_7"]``; others as is."""
    base, bracket, spec = job.partition("_[")
    if not bracket:
        return [job] if job else []
    spec = spec.rstrip("]").partition("%")[0]
    out: list[str] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            out += [f"{base}_{i}" for i in range(int(first), int(last or first) + 1)]
    return out


def job_ranges(ids: Sequence[str]) -> str:
    """Job ids as Slurm writes arrays: ``683_[0-999], 700_[0-3,5]``; others as they are."""
    arrays: dict[str, list[int]] = {}
    plain: list[str] = []
    for job in ids:
        base, _, task = job.partition("_")
        if task.isdigit():
            arrays.setdefault(base, []).append(int(task))
        else:
            plain.append(job)
    parts = plain + [f"{base}_[{_spans(sorted(tasks))}]" for base, tasks in arrays.items()]
    return ", ".join(parts)


def _spans(tasks: list[int]) -> str:
    out: list[str] = []
    start = prev = tasks[0]
    for task in [*tasks[1:], None]:
        if task is not None and task == prev + 1:
            prev = task
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if task is not None:
            start = prev = task
    return ",".join(out)


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
