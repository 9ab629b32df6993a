"""Maps and sweeps on a real single-node Slurm cluster: array chunks, pool requeues, sweeps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import SRC, ok_counts, xp
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the session fixture
from xpkit import Run
from xpkit._core._lock import load_lock
from xpkit._core._paths import RunPaths
from xpkit._parallel._slurm import max_array_size
from xpkit.errors import LockError

SCRIPT = """
import dataclasses, os, time
from pathlib import Path
import xpkit as xp

@dataclasses.dataclass
class Config:
    x: int = 0
    sleep_s: float = 0.0
    gate: str = ""  # a file to wait for (120 s at most) before the task does anything

@xp.stage(src=False)
def main(cfg: Config):
    deadline = time.monotonic() + 120
    while cfg.gate and not Path(cfg.gate).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(cfg.sleep_s)
    Path(cfg.save_dir, f"out-{cfg.x}.txt").write_text(os.environ.get("SLURM_JOB_ID", "-"))
    xp.log_metrics({"x": cfg.x})
    return cfg.x

if __name__ == "__main__":
    xp.run(main)
"""


@pytest.fixture
def project(tmp_path: Path, slurm_cluster: SlurmCluster) -> Path:  # noqa: F811
    """A project dir with a stage script; jobs get this worktree's xpkit."""
    (tmp_path / "job.py").write_text(textwrap.dedent(SCRIPT))
    return tmp_path


def env(project: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_ROOT": str(project)}


def xp_script(
    project: Path, *args: str, timeout_s: float = 60, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "job.py", *args],
        cwd=project,
        env=environ or env(project),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def write_tasks(project: Path, n: int, sleep_s: float, *, gate: Path | None = None) -> None:
    extra = {"gate": str(gate)} if gate else {}
    lines = (json.dumps({"x": i, "sleep_s": sleep_s, **extra}) + "\n" for i in range(n))
    (project / "tasks.jsonl").write_text("".join(lines))


def the_run(project: Path) -> Path:
    (run,) = [p for p in (project / "results" / "job").iterdir() if not p.is_symlink()]
    return run


def wait_tasks(project: Path, run: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``xp tasks RUN --wait``: follows the map to its end."""
    return subprocess.run(
        [sys.executable, "-m", "xpkit", "tasks", str(run), "--wait", "--interval", "2"],
        cwd=project,
        env=env(project),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def finished_runs(root: Path) -> list[Path]:
    """The run directories under ``root`` whose run.lock says the run ended."""
    if not root.exists():
        return []
    runs = [p for p in root.iterdir() if not p.is_symlink() and not p.name.startswith(".")]
    ended = []
    for run in runs:
        try:
            if load_lock(run).status != "running":
                ended.append(run)
        except LockError:
            pass  # created, run.lock not written yet
    return ended


def test_array_chunked_map_returns_at_once_and_finishes_in_one_run(project: Path) -> None:
    """chunks=4: submission returns with 4 array job ids; jobs run joblib; one run, all ok.

    Every task waits for a gate file that exists only once the submission has returned: a
    submission that waited for its jobs would time out instead.
    """
    gate = project / "gate"
    write_tasks(project, 40, 0.1, gate=gate)
    submitted = xp_script(
        project, "--tasks", "tasks.jsonl", "--backend", "slurm", "--slurm", "chunks=4", "cpus=2"
    )
    assert submitted.returncode == 0, submitted.stderr
    said = submitted.stdout + submitted.stderr
    assert said.count("submitted") == 1  # said once, with how to follow the jobs
    assert "--wait" in said
    run = the_run(project)
    lock = load_lock(run)
    assert lock.status == "running"
    assert ok_counts(run) == {}
    assert lock.tasks is not None
    assert lock.tasks["mode"] == "array"
    assert len(lock.tasks["jobs"]) == 4
    # the submitting process is gone, its jobs run the map: xp ls and xp show say running
    assert Run(run).status == "running"
    assert "running" in xp(project, "show", str(run)).stdout.splitlines()[0]
    gate.touch()
    waited = wait_tasks(project, run, 180)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    lock = load_lock(run)
    assert lock.status == "completed"
    assert lock.tasks is not None
    assert (lock.tasks["total"], lock.tasks["done"], lock.tasks["failed"]) == (40, 40, 0)
    assert lock.metrics is not None
    assert "x" in lock.metrics
    assert ok_counts(run) == dict.fromkeys(range(40), 1)
    job_ids = {(run / f"out-{i}.txt").read_text() for i in range(40)}
    assert len(job_ids) == 4  # every array task did its chunk
    assert "COMPLETED" in wait_tasks(project, run, 60).stdout


def test_pool_workers_hit_the_time_limit_requeue_and_finish_everything(project: Path) -> None:
    """workers=2, time_min=2, 80 tasks of 2.5 s: requeued, same run dir, nothing done twice."""
    write_tasks(project, 80, 2.5)
    submitted = xp_script(
        project,
        "--tasks",
        "tasks.jsonl",
        "--backend",
        "slurm",
        "--slurm",
        "workers=2",
        "time_min=2",
    )
    assert submitted.returncode == 0, submitted.stderr
    run = the_run(project)
    waited = wait_tasks(project, run, 360)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    lock = load_lock(run)
    assert lock.status == "completed"
    assert lock.tasks is not None
    assert lock.tasks["mode"] == "pool"
    assert (lock.tasks["done"], lock.tasks["failed"]) == (80, 0)
    assert ok_counts(run) == dict.fromkeys(range(80), 1)
    workers = sorted(p.stem for p in RunPaths(run).done.glob("*.jsonl"))
    assert any(".r" in w for w in workers), f"no worker was requeued: {workers}"
    assert len(list(run.glob("out-*.txt"))) == 80
    assert [p for p in (project / "results" / "job").iterdir() if not p.is_symlink()] == [run]


def test_pool_worker_killed_mid_task_is_taken_over(project: Path) -> None:
    """workers=2; one worker's job is killed (-9) in its long task while the other still has
    work: when the survivor runs out of tasks, the dead worker's claim has missed its
    heartbeats; the survivor waits until it is stale (XPKIT_POOL_STALE_S=12), takes the task
    over and ends the run, every task done once."""
    tasks = [{"x": 0, "sleep_s": 20.0}, *({"x": i, "sleep_s": 2.0} for i in range(1, 8))]
    (project / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    args = ["--tasks", "tasks.jsonl", "--backend", "slurm", "--slurm", "workers=2", "time_min=5"]
    submitted = subprocess.run(
        [sys.executable, "job.py", *args],
        cwd=project,
        env={**env(project), "XPKIT_POOL_STALE_S": "12"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    run = the_run(project)
    jobs = load_lock(run).tasks["jobs"]  # type: ignore[index]
    array = str(jobs[0]).split("_")[0]
    survivor = RunPaths(run).done / f"{array}_1.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_lines(survivor)) < 2:
        time.sleep(0.2)
    assert (RunPaths(run).claims / "0.0").exists(), "the first worker never took task 0"
    assert len(_lines(survivor)) == 2, "the second worker did not run two short tasks"
    subprocess.run(["scancel", "--signal=KILL", f"{array}_0"], check=True)
    waited = wait_tasks(project, run, 240)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    lock = load_lock(run)
    assert lock.status == "completed"
    assert ok_counts(run) == dict.fromkeys(range(8), 1)
    assert sorted(p.name for p in RunPaths(run).claims.glob("*.1")) == ["0.1"]
    assert len(_lines(survivor)) == 8


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def test_sweep_of_four_configs_on_slurm(project: Path) -> None:
    """--sweep x=1,2 sleep_s=0,0.5 --backend slurm: four runs, each its own dir, grouped."""
    submitted = xp_script(
        project, "--sweep", "x=1,2", "sleep_s=0,0.5", "--backend", "slurm", "--slurm", "time_min=5"
    )
    assert submitted.returncode == 0, submitted.stderr
    line = submitted.stderr.strip().splitlines()[-1]
    assert line.startswith("[xpkit] sweep of 4 points submitted to Slurm: jobs "), line
    assert len(line.split("jobs ", 1)[1].split(", ")) == 4
    deadline = time.monotonic() + 120
    runs: list[Path] = []
    while time.monotonic() < deadline:
        runs = finished_runs(project / "results" / "job")
        if len(runs) == 4:
            break
        time.sleep(1)
    assert len(runs) == 4
    locks = [load_lock(r) for r in runs]
    assert {lock.status for lock in locks} == {"completed"}
    sweeps = sorted((lock.extra["sweep"]["point"], lock.extra["sweep"]["id"]) for lock in locks)
    assert [p for p, _ in sweeps] == [0, 1, 2, 3]
    assert len({i for _, i in sweeps}) == 1
    assert sorted((lock.config["x"], lock.config["sleep_s"]) for lock in locks) == [
        (1, 0.0),
        (1, 0.5),
        (2, 0.0),
        (2, 0.5),
    ]


def _shim(project: Path, commands: tuple[str, ...]) -> tuple[dict[str, str], Path]:
    """An environment whose PATH logs each call of ``commands``, then execs the real one."""
    shims = project / "shims"
    shims.mkdir()
    log = project / "slurm-calls.log"
    for name in commands:
        real = shutil.which(name)
        assert real is not None, f"{name} not on PATH"
        script = shims / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexec {real} "$@"\n')
        script.chmod(0o755)
    shimmed = env(project)
    shimmed["PATH"] = f"{shims}{os.pathsep}{shimmed['PATH']}"
    return shimmed, log


def _calls(log: Path, name: str) -> list[list[str]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[1:] for line in lines if line.split()[0] == name]


def test_map_over_max_array_size_is_split_and_polled_in_one_call(project: Path) -> None:
    """More array tasks than MaxArraySize: several arrays, every task once; each poll of
    ``xp tasks --wait`` is one sacct call naming every array, and submission polls nothing."""
    limit = max_array_size()
    if limit > 32:
        message = (
            f"the cluster's MaxArraySize is {limit}: start it with"
            " SLURM_CI_MAX_ARRAY_SIZE=8 to test array splitting in seconds"
        )
        if os.environ.get("XPKIT_TEST_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    n = 2 * limit + 1
    write_tasks(project, n, 0.0)
    shimmed, log = _shim(project, ("sbatch", "sacct", "squeue", "scontrol"))
    args = ["--tasks", "tasks.jsonl", "--backend", "slurm", "--slurm", f"chunks={n}"]
    submitted = xp_script(project, *args, timeout_s=120, environ=shimmed)
    assert submitted.returncode == 0, submitted.stderr
    assert len(_calls(log, "sbatch")) == 3
    assert _calls(log, "scontrol") == [["show", "config"]]
    assert _calls(log, "sacct") == _calls(log, "squeue") == []  # no submitit polling
    run = the_run(project)
    tasks = load_lock(run).tasks
    assert tasks is not None
    assert tasks["arrays"] == 3
    assert len(tasks["jobs"]) == n
    arrays = list(dict.fromkeys(str(job).split("_")[0] for job in tasks["jobs"]))
    assert len(arrays) == 3
    log.unlink()
    waited = subprocess.run(
        [sys.executable, "-m", "xpkit", "tasks", str(run), "--wait", "--interval", "1"],
        cwd=project,
        env=shimmed,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr
    polls = waited.stdout.count("\ntasks  ") + waited.stdout.startswith("tasks  ")
    sacct = _calls(log, "sacct")
    assert len(sacct) == polls  # the progress lines, and the final report's poll
    assert all(call[call.index("-j") + 1] == ",".join(arrays) for call in sacct)
    assert _calls(log, "squeue") == []
    assert ok_counts(run) == dict.fromkeys(range(n), 1)
    assert load_lock(run).status == "completed"
    assert f"jobs   {n} array tasks in 3 array(s): " in waited.stdout  # summed, not listed


def test_a_refused_array_cancels_the_accepted_ones_and_a_resume_runs_each_task_once(
    project: Path,
) -> None:
    """The cluster accepts the first array and refuses the second (as when ``MaxJobCount``
    is reached): one line naming the refusal, the accepted array cancelled before any of
    its tasks ran, the run failed with that error; ``--resume`` then runs every task once."""
    limit = max_array_size()
    if limit > 32:
        message = f"the cluster's MaxArraySize is {limit}: start it with SLURM_CI_MAX_ARRAY_SIZE=8"
        if os.environ.get("XPKIT_TEST_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    n = 2 * limit + 1
    gate = project / "gate"
    write_tasks(project, n, 0.0, gate=gate)
    shimmed, log = _shim(project, ("scancel",))
    real = shutil.which("sbatch")
    refusal = "sbatch: error: Batch job submission failed: Resource temporarily unavailable"
    sbatch = project / "shims" / "sbatch"
    sbatch.write_text(
        "#!/bin/sh\n"
        f'echo "sbatch $*" >> {log}\n'
        f'if [ "$(grep -c ^sbatch {log})" = 2 ]; then echo "{refusal}" >&2; exit 1; fi\n'
        f'exec {real} "$@"\n'
    )
    sbatch.chmod(0o755)
    args = ["--tasks", "tasks.jsonl", "--backend", "slurm", "--slurm", f"chunks={n}"]
    submitted = xp_script(project, *args, timeout_s=120, environ=shimmed)
    assert submitted.returncode == 1
    (line,) = submitted.stderr.splitlines()
    assert line.startswith(
        f"error: Slurm refused array 2 of 3: {refusal}; the 1 array(s) it accepted were cancelled."
    )
    assert len(_calls(log, "sbatch")) == 2
    (cancelled,) = _calls(log, "scancel")
    run = the_run(project)
    lock = load_lock(run)
    assert lock.status == "failed"
    assert lock.error is not None
    assert "Slurm refused array 2 of 3" in str(lock.error["message"])
    deadline = time.monotonic() + 60  # the cancelled array leaves the queue
    while subprocess.run(
        ["squeue", "-h", "-j", cancelled[0]], capture_output=True, text=True
    ).stdout:
        assert time.monotonic() < deadline, "the accepted array is still queued"
        time.sleep(0.5)
    assert ok_counts(run) == {}  # none of its tasks ran: the gate was never opened
    gate.touch()
    resumed = xp_script(project, *args, "--resume", str(run), timeout_s=120)
    assert resumed.returncode == 0, resumed.stderr
    waited = wait_tasks(project, run, timeout_s=300)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert ok_counts(run) == dict.fromkeys(range(n), 1)
    assert load_lock(run).status == "completed"
