"""The Slurm backend of ``Stage.map`` and ``Stage.sweep``, through submitit, non-blocking.

Submission returns at once; the job ids go to run.lock ``tasks.jobs``. Two modes:

* array (default): the tasks left are split in ``chunks`` contiguous slices, one array task
  per slice, each running joblib inside over the CPUs of its allocation;
* pool (``workers=N``): N array tasks each take tasks one at a time until none is left.
  When the time limit nears, a worker stops taking tasks; submitit's signal then calls
  :meth:`SlurmWorker.checkpoint`, which requeues the job: it starts again in the same run
  directory and goes on. The run ends when every task has a record.

Claiming tasks on a shared filesystem (pool mode). A worker takes task ``i`` by creating
``tasks/claims/<i>.0`` with ``O_CREAT|O_EXCL`` (atomic, NFS included): exactly one worker
wins. While it runs the task, a thread touches the claim every ``HEARTBEAT_S``. A claim
whose mtime is ``STALE_S`` older than the filesystem's own clock (read by touching a file
of ours, so no clock skew between nodes) belongs to a dead worker; anyone may then take the
task by creating the next generation ``<i>.1`` (again ``O_EXCL``: one winner per stale
claim). A checkpointing worker makes its claim stale at once (mtime 0). Before writing an
``ok`` record, a worker checks that no newer generation of its claim exists, so a worker
paused past ``STALE_S`` (e.g. suspended) and overtaken never records the task a second
time. A worker that runs out of free tasks while a claim has missed its heartbeats (its
worker probably died) waits for that claim to go stale and takes the task over; claims still
beating are left to their workers, so no worker idles for another's long task. Claims are
never deleted during a map (a deleted claim could be taken again by a worker with an
outdated view); a resume starts a fresh claims directory.

Ending the run: each worker, when it has nothing left to do, checks whether every task has
a record; the first to see it creates ``tasks/finalized`` exclusively and writes the final
run.lock (status, ended, tasks counts, metrics). ``xp tasks RUN --wait`` ends a run whose
jobs are all gone with tasks never run (``interrupted``). Workers never write to MLflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core._paths import RunPaths
from .._execute._capture import LogFile, capture_output
from ..errors import ConfigError, TaskError, missing_extra
from . import _tasks
from ._map import TaskSpec, available_cpus, run_joblib, run_task, task_run

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .._api._stage import Stage
    from .._execute._context import ActiveRun
    from ._map import MapOptions

__all__ = [
    "OPTIONS",
    "SlurmWorker",
    "check_slurm_options",
    "job_states",
    "submit",
    "submit_sweep",
    "unfinished",
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


def _seconds_from_env(name: str, default: float) -> float:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        msg = f"{name} must be a positive number of seconds, got {text!r}"
        raise ConfigError(msg)
    return value


# a claim untouched for STALE_S belongs to a dead worker; raise it where the shared
# filesystem caches attributes longer (environment XPKIT_POOL_STALE_S, read by the workers)
STALE_S = _seconds_from_env("XPKIT_POOL_STALE_S", 180.0)
HEARTBEAT_S = min(30.0, STALE_S / 6)
_DEFAULT_TIME_MIN = 60
_DEFAULT_CHUNKS = 10
_LIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
    | {"CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
)


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


def _executor(folder: Path, options: Mapping[str, Any], name: str, root: Path) -> Any:
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
        "setup": [f"export XPKIT_ROOT={shlex.quote(str(root))}", _pythonpath_line()],
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


def _pythonpath_line() -> str:
    """Jobs import THIS xpkit and the script's modules, whatever else is installed there."""
    import xpkit

    dirs = [str(Path(xpkit.__file__).resolve().parents[1])]
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.is_file():
        dirs.append(str(script.resolve().parent))
    front = shlex.quote(os.pathsep.join(dict.fromkeys(dirs)))
    return f'export PYTHONPATH={front}"${{PYTHONPATH:+:$PYTHONPATH}}"'


def submit(
    active: ActiveRun, pending: Sequence[int], total: int, options: MapOptions
) -> dict[str, Any]:
    """Submit the jobs of a map; return what run.lock ``tasks`` records about them."""
    paths = active.paths
    slurm = options.slurm
    _fresh_claims(paths)
    spec = TaskSpec.of(active, options.key)
    if "workers" in slurm:
        count = max(1, min(int(slurm["workers"]), len(pending)))
        workers = [SlurmWorker(spec, mode="pool", workers=count) for _ in range(count)]
        section: dict[str, Any] = {"mode": "pool", "workers": count}
    else:
        count = max(1, min(int(slurm.get("chunks", _DEFAULT_CHUNKS)), len(pending)))
        size = -(-len(pending) // count)
        slices = [list(pending[k : k + size]) for k in range(0, len(pending), size)]
        workers = [SlurmWorker(spec, mode="array", indices=s) for s in slices]
        section = {"mode": "array", "chunks": len(slices)}
    executor = _executor(paths.slurm, slurm, active.stage.name, active.settings.root)
    for worker in workers:
        worker.signal_delay_s = executor.parameters["signal_delay_s"]
    with executor.batch():
        jobs = [executor.submit(worker) for worker in workers]
    ids = [str(job.job_id) for job in jobs]
    active.logger.info(
        "submitted %d Slurm %s job(s) for %d tasks: %s; follow: xp tasks %s --wait",
        len(ids),
        section["mode"],
        len(pending),
        ", ".join(ids),
        active.lock.dir,
    )
    return {**section, "jobs": ids}


def _fresh_claims(paths: RunPaths) -> None:
    """A resume starts a new claims directory (no worker of the old attempt is alive)."""
    if paths.claims.exists():
        old = paths.claims.with_name(f".claims-{time.time_ns()}")
        paths.claims.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    paths.claims.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        paths.finalized.unlink()
    with contextlib.suppress(FileNotFoundError):
        paths.submitted.unlink()


def submit_sweep(
    calls: Sequence[tuple[Stage[Any], DictConfig, Mapping[str, Any], bool]],
    options: Mapping[str, Any],
    sweep_id: str,
) -> list[str]:
    """Submit one array task per sweep point; return the job ids (non-blocking)."""
    from .._core._settings import load_settings
    from ._map import sweep_point

    stage = calls[0][0]
    settings = load_settings()
    folder = settings.results_path / stage.name / ".slurm" / sweep_id
    executor = _executor(folder, options, stage.name, settings.root)
    with executor.batch():
        jobs = [executor.submit(sweep_point, *call) for call in calls]
    return [str(job.job_id) for job in jobs]


@dataclasses.dataclass
class SlurmWorker:
    """The callable a Slurm job runs: an array chunk, or a pool worker.

    submitit requeues a job whose callable has a ``checkpoint`` method when the time limit
    nears (its signal), and calls it again in the requeued job.
    """

    spec: TaskSpec
    mode: str
    indices: list[int] = dataclasses.field(default_factory=list)
    workers: int = 1
    signal_delay_s: float = 90.0
    _claim: Path | None = dataclasses.field(default=None, init=False, repr=False)

    def __call__(self) -> dict[str, int]:
        paths = RunPaths(self.spec.run_dir)
        todo = _tasks.read_todo(paths)
        log = LogFile(paths.log)
        try:
            with capture_output(log, fds=False):
                if self.mode == "pool":
                    self._pool(paths, todo)
                else:
                    self._array(paths, todo)
                state = _tasks.scan_done(paths, len(todo))
                _tasks.try_finalize(paths)
        finally:
            log.close()
        return state.counts()

    def checkpoint(self) -> Any:
        """Called by submitit on the time-limit signal: free the claim, requeue this worker."""
        from submitit.helpers import DelayedSubmission

        claim, self._claim = self._claim, None
        if claim is not None:
            with contextlib.suppress(OSError):
                os.utime(claim, (0, 0))  # stale at once: anyone may take the task again
        return DelayedSubmission(self)

    def _array(self, paths: RunPaths, todo: Sequence[Any]) -> None:
        state = _tasks.scan_done(paths, len(todo))
        pending = [i for i in self.indices if i not in state.ok]
        spec = dataclasses.replace(self.spec, worker_prefix=f"{_job_name()}-")
        run_joblib(spec, todo, pending, available_cpus(), lambda *_: None)

    def _pool(self, paths: RunPaths, todo: Sequence[Any]) -> None:
        pool = _Pool(self, paths, todo)
        try:
            pool.run()
        finally:
            pool.close()


class _Pool:
    """One pool worker's loop: take free tasks, then stale ones, until none is left."""

    def __init__(self, owner: SlurmWorker, paths: RunPaths, todo: Sequence[Any]) -> None:
        self.owner = owner
        self.paths = paths
        self.todo = todo
        self.worker = _job_name()
        self.scanner = _tasks.DoneScanner(paths, len(todo))
        self.log = _tasks.DoneLog(paths, self.worker)
        self.active = task_run(owner.spec)
        self.configs = _tasks.TaskConfigs(owner.spec.config, owner.spec.key)
        self.durations: list[float] = []
        self.clock = _TimeLeft(owner.signal_delay_s)
        self._beat = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="xpkit-claim", daemon=True)
        self._thread.start()
        paths.claims.mkdir(parents=True, exist_ok=True)

    def run(self) -> None:
        state = self.scanner.refresh()
        total = len(self.todo)
        rank = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0)
        start = rank * total // max(1, self.owner.workers)
        refreshed = time.monotonic()
        with self.active:
            for i in [*range(start, total), *range(start)]:
                if time.monotonic() - refreshed > 10:
                    state, refreshed = self.scanner.refresh(), time.monotonic()
                if i in state.ok or i in state.failed:
                    continue
                self._wait_if_time_is_short()
                if _create(self.paths.claim_file(i, 0)):
                    self._run(i, 0)
            while self._take_over():
                pass

    def _take_over(self) -> bool:
        """Run one task whose claim is stale; or, when a claim has missed its heartbeats (its
        worker probably died), wait a heartbeat so as to take it once stale rather than leave
        it to a resume. False when neither: claims still beating are left to their workers."""
        state = self.scanner.refresh()
        fs_now = _fs_now(self.paths, self.worker)
        orphaned = False
        for i in state.missing():
            gen, mtime = _latest_claim(self.paths, i)
            if gen >= 0 and fs_now - mtime < STALE_S:
                orphaned = orphaned or fs_now - mtime > 2.5 * HEARTBEAT_S
                continue
            self._wait_if_time_is_short()
            if _create(self.paths.claim_file(i, gen + 1)):
                if i in self.scanner.refresh().ok:
                    continue
                self._run(i, gen + 1)
                return True
        if orphaned:
            self._wait_if_time_is_short()
            time.sleep(HEARTBEAT_S)
        return orphaned

    def _run(self, i: int, gen: int) -> None:
        claim = self.paths.claim_file(i, gen)
        self.owner._claim = claim
        self._beat.set()
        start = time.monotonic()
        try:
            run_task(
                self.owner.spec.stage.fn,
                self.configs,
                self.todo[i],
                i,
                self.log,
                still_mine=lambda: not self.paths.claim_file(i, gen + 1).exists(),
            )
        finally:
            self.owner._claim = None
            self._beat.clear()
        self.durations.append(time.monotonic() - start)

    def _heartbeat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            claim = self.owner._claim
            if self._beat.is_set() and claim is not None:
                with contextlib.suppress(OSError):
                    os.utime(claim)

    def _wait_if_time_is_short(self) -> None:
        """Take no task that cannot end before the time-limit signal; wait for the signal."""
        mean_s = sum(self.durations[-20:]) / len(self.durations[-20:]) if self.durations else 0
        while self.clock.short(margin_s=1.5 * mean_s + 5):
            time.sleep(2)  # submitit's signal handler checkpoints, requeues and exits

    def close(self) -> None:
        self.log.close()
        self.active.close()


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


def _job_name() -> str:
    """``<jobid>_<arrayindex>`` (``.r<n>`` after the n-th requeue) or ``<jobid>``."""
    env = os.environ
    array = env.get("SLURM_ARRAY_JOB_ID")
    name = f"{array}_{env.get('SLURM_ARRAY_TASK_ID')}" if array else env.get("SLURM_JOB_ID")
    if not name:
        return _tasks.local_worker_id()
    restarts = env.get("SLURM_RESTART_COUNT", "0")
    return f"{name}.r{restarts}" if restarts not in ("", "0") else name


def _create(path: Path) -> bool:
    """Create ``path`` exclusively; True when this process made it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.write(fd, f"{_job_name()}\n".encode())
    os.close(fd)
    return True


def _latest_claim(paths: RunPaths, i: int) -> tuple[int, float]:
    """``(generation, mtime)`` of the newest claim of task ``i``; ``(-1, 0)`` when none."""
    gen, mtime = -1, 0.0
    while True:
        try:
            mtime = paths.claim_file(i, gen + 1).stat().st_mtime
        except FileNotFoundError:
            return gen, mtime
        gen += 1


def _fs_now(paths: RunPaths, worker: str) -> float:
    """The shared filesystem's clock: the mtime of a file this worker just touched."""
    probe = paths.claims / f".now-{worker}"
    probe.touch()
    return probe.stat().st_mtime


# --- job states ----------------------------------------------------------------------------


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
