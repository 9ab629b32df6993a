"""The ``slurm`` backend, through submitit: non-blocking, jobs that end the work themselves.

Submission returns at once with the job ids. Two modes:

* array (default): the items left are split in ``chunks`` contiguous slices, one array task
  per slice, each running joblib inside over the CPUs of its allocation; more slices than
  the cluster's ``MaxArraySize`` go in several arrays;
* pool (``workers=N``, maps only): N array tasks each take tasks one at a time until none is
  left (see ``_pool.py``). When the time limit nears, a worker stops taking tasks;
  submitit's signal then calls the job's ``checkpoint``, which requeues it: it starts again
  in the same run directory and goes on.

Every job, once its items are run, calls ``work.after_job()``: for a map, the first job to
see every task recorded writes the final run.lock (see ``_tasks.try_finalize``); ``xp tasks
RUN --wait`` ends a map whose jobs are all gone with tasks never run (``interrupted``).
Workers never write to MLflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core._paths import PACKAGE_DIR
from ..errors import ConfigError, TaskError, missing_extra
from ._backends import OnDone, Submitted, Work, available_cpus, chunks
from ._joblib import JoblibBackend
from ._map import MapWork
from ._pool import Pool, fresh_claims

if TYPE_CHECKING:
    from .._record._codetree import CodeTree

__all__ = [
    "OPTIONS",
    "SlurmBackend",
    "check_slurm_options",
    "max_array_size",
    "parse_duration_s",
    "submit_arrays",
]

OPTIONS: dict[str, tuple[type, ...]] = {
    "partition": (str,),
    "time_min": (int,),
    "cpus": (int,),
    "mem_gb": (int, float),
    "gpus": (int,),
    "array_parallelism": (int,),
    "chunks": (int,),
    "workers": (int,),
    "additional": (Mapping,),
}


_DEFAULT_TIME_MIN = 60
_DEFAULT_CHUNKS = 10
_SLURM_MAX_ARRAY_SIZE = 1001


class SlurmBackend:
    """Items run in Slurm jobs (submitit); ``run`` returns once they are submitted."""

    name = "slurm"
    in_process = False
    detached = True

    def __init__(self, options: Mapping[str, Any]) -> None:
        check_slurm_options(options)
        self.options = dict(options)

    def run(self, work: Work, indices: Sequence[int], on_done: OnDone) -> Submitted:
        """Submit the jobs of ``indices``; their ids and how the work was split."""
        executor = _executor(work.folder, self.options, work.label, work.root, work.code)
        delay_s = float(executor.parameters["signal_delay_s"])
        jobs: list[Any]
        if "workers" in self.options:
            if not isinstance(work, MapWork):
                msg = "Slurm pool mode (workers=N) runs the tasks of a map; give chunks=N here"
                raise ConfigError(msg)
            fresh_claims(work.paths)
            count = max(1, min(int(self.options["workers"]), len(indices)))
            jobs = [PoolJob(work, count, delay_s) for _ in range(count)]
            details: dict[str, Any] = {"mode": "pool", "workers": count}
        else:
            if isinstance(work, MapWork):
                fresh_claims(work.paths)
                count = int(self.options.get("chunks", _DEFAULT_CHUNKS))
            else:  # a sweep: one array task per point unless told otherwise
                count = int(self.options.get("chunks", len(indices)))
            slices = chunks(indices, count)
            shared = _pickled(work)  # once, not once per array task: 10,000 tasks in seconds
            jobs = [ArrayJob(shared, s) for s in slices]
            details = {"mode": "array", "chunks": len(slices)}
        details["slurm"] = dict(self.options)  # what a rerun of the map submits again
        ids = submit_arrays(executor, jobs, max_array_size())
        arrays = len({job_id.partition("_")[0] for job_id in ids})
        return Submitted(tuple(ids), {**details, "arrays": arrays})


def submit_arrays(executor: Any, jobs: Sequence[Any], limit: int) -> list[str]:
    """Submit ``jobs`` as array jobs of at most ``limit`` tasks each; every task's job id.

    Slurm rejects an array whose indices reach ``MaxArraySize`` (submitit #1624), so
    the jobs go in consecutive slices, one ``sbatch`` each.

    Raises:
        TaskError: the cluster refused an array (a cap on queued jobs such as
            ``MaxJobCount``, which counts every array task; a bad option). The arrays it
            had accepted are cancelled first: no job of the map is left that its run.lock
            does not list, so a resume runs every task once.
    """
    ids: list[str] = []
    starts = range(0, len(jobs), max(1, limit))
    for n, start in enumerate(starts, 1):
        printed = io.StringIO()  # submitit prints sbatch's complaint; the error below holds it
        try:
            with contextlib.redirect_stderr(printed), executor.batch():
                submitted = [executor.submit(job) for job in jobs[start : start + limit]]
        except Exception as e:  # submitit's FailedJobError: sbatch's own message
            raise _refused(e, n, len(starts), ids) from e
        sys.stderr.write(printed.getvalue())
        ids += [str(job.job_id) for job in submitted]
    return ids


def _refused(error: Exception, n: int, arrays: int, ids: list[str]) -> TaskError:
    """The error for array ``n`` of ``arrays`` refused, once the ones in ``ids`` are cancelled."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    which = f"array {n} of {arrays}" if arrays > 1 else "the map's array"
    accepted = sorted({job_id.partition("_")[0] for job_id in ids}, key=lambda i: (len(i), i))
    if not accepted:
        cancelled = ""
    elif cancel_jobs(accepted):
        cancelled = f"; the {len(accepted)} array(s) it accepted were cancelled"
    else:
        cancelled = f"; cancel the {len(accepted)} it accepted: scancel {' '.join(accepted)}"
    msg = (
        f"Slurm refused {which}: {reason}{cancelled}. A cluster caps queued jobs "
        "(MaxJobCount counts each array task): fewer array tasks with --slurm chunks=N"
    )
    return TaskError(msg)


def cancel_jobs(job_ids: Sequence[str], *, timeout_s: float = 30.0) -> bool:
    """``scancel`` the jobs (whole arrays for array ids); whether Slurm took the request."""
    try:
        done = subprocess.run(
            ["scancel", *job_ids], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def max_array_size(*, timeout_s: float = 10.0) -> int:
    """The cluster's ``MaxArraySize`` (``scontrol show config``); Slurm's default, 1001,
    when it cannot be read. An array's indices must stay below it."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return _SLURM_MAX_ARRAY_SIZE
    for line in out.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "MaxArraySize" and value.strip().isdigit():
            return max(1, int(value))
    return _SLURM_MAX_ARRAY_SIZE


@dataclasses.dataclass
class ArrayJob:
    """An array task: its slice of the items, with joblib over its allocation's CPUs.

    ``work`` may come pickled (see :func:`_pickled`). A requeued job (preemption, time
    limit) runs again and skips the items already done.
    """

    work: Work | bytes
    indices: list[int]

    def __call__(self) -> None:
        work = _unpickled(self.work)
        with work.in_job():
            left = work.left(self.indices)
            JoblibBackend(available_cpus()).run(work, left, lambda done: False)
            work.after_job()

    def checkpoint(self) -> Any:
        """Called by submitit on the time-limit signal: requeue this job."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


@dataclasses.dataclass
class PoolJob:
    """A pool worker: takes a map's tasks one at a time until none is left."""

    work: MapWork
    workers: int
    signal_delay_s: float
    _pool: Pool | None = dataclasses.field(default=None, init=False, repr=False)

    def __call__(self) -> None:
        clock = _TimeLeft(self.signal_delay_s)
        rank = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0)
        with self.work.in_job():
            self._pool = Pool(
                self.work, rank=rank, workers=self.workers, wait_if_short=clock.wait_if_short
            )
            try:
                self._pool.run()
            finally:
                self._pool.close()
            self.work.after_job()

    def checkpoint(self) -> Any:
        """Called by submitit on the time-limit signal: free the claim, requeue this worker."""
        from submitit.helpers import DelayedSubmission

        if self._pool is not None:
            self._pool.release()
        return DelayedSubmission(PoolJob(self.work, self.workers, self.signal_delay_s))


def _pickled(work: Work) -> bytes:
    """``work`` pickled by value (as submitit would), so that each of many array tasks
    carries bytes to copy instead of objects to pickle again (~3 ms each)."""
    import cloudpickle  # type: ignore[import-untyped]  # submitit's dependency, no stubs

    data: bytes = cloudpickle.dumps(work)
    return data


def _unpickled(work: Work | bytes) -> Work:
    if isinstance(work, bytes):
        import pickle

        loaded: Work = pickle.loads(work)  # written by this map's own process
        return loaded
    return work


def check_slurm_options(options: Mapping[str, Any]) -> None:
    """Validate Slurm options.

    Raises:
        ConfigError: an unknown option (the valid ones listed) or a value of the wrong type.
    """
    for name, value in options.items():
        if name not in OPTIONS:
            msg = f"unknown Slurm option {name!r} (valid: {', '.join(OPTIONS)})"
            raise ConfigError(msg)
        kinds = OPTIONS[name]
        if not isinstance(value, kinds) or isinstance(value, bool):
            expected = " or ".join(k.__name__ for k in kinds)
            msg = f"Slurm option {name!r} must be {expected}, got {value!r}"
            raise ConfigError(msg)
    if "chunks" in options and "workers" in options:
        msg = "Slurm options 'chunks' (array mode) and 'workers' (pool mode) exclude each other"
        raise ConfigError(msg)


def _executor(
    folder: Path, options: Mapping[str, Any], name: str, root: Path, code: CodeTree | None
) -> Any:
    try:
        import submitit
    except ImportError:
        raise missing_extra("submitit", "parallel") from None
    time_min = int(options.get("time_min", _DEFAULT_TIME_MIN))
    # every requeue counts as a "timeout" for submitit when time_min <= 10: allow many
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=10_000)
    params: dict[str, Any] = {
        "time": time_min,
        "cpus_per_task": int(options.get("cpus", 1)),
        "job_name": f"xp-{name}",
        "signal_delay_s": int(min(90, max(20, time_min * 60 // 4))),
        "stderr_to_stdout": True,
        "setup": [f"export XPKIT_ROOT={shlex.quote(str(root))}", _pythonpath_line(code)],
    }
    if "partition" in options:
        params["partition"] = options["partition"]
    if "mem_gb" in options:
        params["mem"] = f"{options['mem_gb']}GB"
    if "gpus" in options:
        params["gpus_per_node"] = options["gpus"]
    if "array_parallelism" in options:
        params["array_parallelism"] = options["array_parallelism"]
    if options.get("additional"):
        params["additional_parameters"] = dict(options["additional"])
    executor.update_parameters(**params)
    return executor


def _pythonpath_line(code: CodeTree | None) -> str:
    """Jobs import THIS xpkit and the script's modules (from the snapshot's code tree when
    there is one), whatever else is installed there."""
    dirs = [os.path.dirname(PACKAGE_DIR)]
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.is_file():
        folder = script.resolve().parent
        inside = code.tree_path(folder) if code is not None else None
        dirs.append(str(inside if inside is not None and inside.is_dir() else folder))
    front = shlex.quote(os.pathsep.join(dict.fromkeys(dirs)))
    return f'export PYTHONPATH={front}"${{PYTHONPATH:+:$PYTHONPATH}}"'


class _TimeLeft:
    """Seconds before the job's time-limit signal, from ``squeue`` (at most every 20 s)."""

    def __init__(self, signal_delay_s: float) -> None:
        env = os.environ
        array = env.get("SLURM_ARRAY_JOB_ID")
        # an array's last task has SLURM_JOB_ID == the array id, which squeue expands to all
        self._job = (
            f"{array}_{env.get('SLURM_ARRAY_TASK_ID')}" if array else env.get("SLURM_JOB_ID")
        )
        self._signal_s = signal_delay_s
        self._end: float | None = None
        self._asked = 0.0

    def wait_if_short(self, margin_s: float) -> None:
        """Block while a task of ``margin_s`` could not end before the signal; the signal's
        checkpoint then requeues the job and exits."""
        while self.short(margin_s=margin_s):
            time.sleep(2)

    def short(self, *, margin_s: float) -> bool:
        if self._job is None:
            return False
        if time.monotonic() - self._asked > 20:
            self._asked = time.monotonic()
            left = _squeue_time_left(self._job)
            if left is not None:
                self._end = time.monotonic() + left - self._signal_s
        return self._end is not None and self._end - time.monotonic() < margin_s


def _squeue_time_left(job: str) -> float | None:
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%L"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_duration_s(out.splitlines()[0]) if out else None


def parse_duration_s(text: str) -> float | None:
    """Slurm's ``[D-]HH:MM:SS`` / ``MM:SS`` as seconds; None for UNLIMITED and the like."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds + (int(days) * 86400 if days.isdigit() else 0)
