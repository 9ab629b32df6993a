"""``xp tasks RUN [--wait] [--failed]``: the progress of a mapped run."""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

from .._catalog._run import Run, process_alive
from .._catalog._runs import resolve_run
from .._core._lock import RunLock
from .._core._paths import RunPaths
from .._core._progress import duration_text
from .._parallel import _tasks
from .._parallel._jobs import job_states, unfinished

__all__ = ["main"]

_LISTED_JOBS = 12


def main(argv: list[str]) -> int:
    """Show done / failed / left, throughput, Slurm job states and failed tasks of a run."""
    parser = argparse.ArgumentParser(prog="xp tasks", description=main.__doc__)
    parser.add_argument(
        "run", metavar="RUN", help="run directory, latest link or id prefix (of a mapped run)"
    )
    parser.add_argument("--wait", action="store_true", help="follow until the map ends")
    parser.add_argument(
        "--failed", action="store_true", help="print every failed task with its traceback"
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, metavar="S", help="seconds between --wait polls"
    )
    options = parser.parse_args(argv)
    paths = RunPaths(resolve_run(options.run).dir.resolve())
    lock = _tasks.load_map_lock(paths)
    total = len(_tasks.read_todo(paths))
    scanner = _tasks.DoneScanner(paths, total)
    while True:
        state = scanner.refresh()
        lock = _tasks.load_map_lock(paths)
        states = _job_states(lock)
        if options.wait and lock.status == "running":
            _end_if_abandoned(paths, lock, state, states)
            lock = _tasks.load_map_lock(paths)
        if not options.wait or lock.status != "running":
            break
        print(_progress_line(state), flush=True)
        time.sleep(options.interval)
    status = Run(paths.dir).status  # as xp ls and xp show have it (a dead process: interrupted)
    print(_report(paths, lock, status, state, states, failed=options.failed))
    return 0 if status in ("completed", "running") else 1


def _job_states(lock: RunLock) -> dict[str, str]:
    jobs = (lock.tasks or {}).get("jobs")
    return job_states([str(j) for j in jobs]) if jobs else {}


def _end_if_abandoned(
    paths: RunPaths, lock: RunLock, state: _tasks.TaskState, states: dict[str, str]
) -> None:
    """End a run nobody else will end: its Slurm jobs are gone, or its process is dead."""
    if not (lock.tasks or {}).get("jobs"):
        if process_alive(lock) is False:
            _tasks.finalize(paths, state, force=True)
        return
    if state.left == 0:
        _tasks.try_finalize(paths, wait_submitted_s=60)
    elif states and not unfinished(states):
        time.sleep(1)  # a worker may be writing its last records
        _tasks.finalize(paths, _tasks.scan_done(paths, state.total), force=True)


def _jobs_line(states: dict[str, str]) -> str:
    """Each job's state, or for many jobs how many are in each state."""
    if len(states) <= _LISTED_JOBS:
        return ", ".join(f"{job} {state}" for job, state in sorted(states.items()))
    counts = collections.Counter(states.values())
    arrays = len({job.partition("_")[0] for job in states})
    shown = ", ".join(f"{n} {state}" for state, n in counts.most_common())
    return f"{len(states)} array tasks in {arrays} array(s): {shown}"


def _progress_line(state: _tasks.TaskState) -> str:
    pct = 100.0 * state.done / state.total if state.total else 100.0
    return (
        f"tasks  {state.total} total · {state.done} done · {len(state.failed)} failed · "
        f"{state.left} left  ({pct:.1f}%)"
    )


def _report(
    paths: RunPaths,
    lock: RunLock,
    status: str,
    state: _tasks.TaskState,
    states: dict[str, str],
    *,
    failed: bool,
) -> str:
    info: dict[str, Any] = dict(lock.tasks or {})
    mode = f" {info['mode']}" if info.get("mode") else ""
    lines = [
        f"run    {lock.dir}  (id {lock.id}, {info.get('backend', '?')}{mode}, {status})",
        _progress_line(state),
    ]
    if state.first_time is not None and state.last_time is not None:
        span = max(state.last_time - state.first_time, 1e-3)
        rate = (state.done + len(state.failed)) / span
        eta = f"; about {duration_text(state.left / rate)} left" if state.left and rate else ""
        lines.append(f"speed  {rate:.2f} tasks/s over {duration_text(span)}{eta}")
    if states:
        lines.append("jobs   " + _jobs_line(states))
    if state.failed:
        lines.append("failed:")
        todo = _tasks.read_todo(paths)
        for i in sorted(state.failed):
            error = state.failed[i].get("error") or {}
            lines.append(f"  task {i}: {error.get('type', '?')}: {error.get('message', '')}")
            if failed:
                lines.append(f"    task value: {todo[i]!r}")
                lines.extend("    " + t for t in str(error.get("traceback", "")).splitlines())
    return "\n".join(lines)
