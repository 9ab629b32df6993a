"""Mapping a stage over tasks (serial, joblib), resuming after kill -9, and sweeping a grid."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import xpkit as xp
from helpers import SRC, ok_counts
from xpkit._core._lock import load_lock
from xpkit._core._paths import RunPaths
from xpkit._parallel import _tasks
from xpkit.errors import ConfigError, TaskError


@dataclasses.dataclass
class Config:
    x: int = 0
    fail_at: int = -1
    name: str = "item"


@xp.stage(name="square", src=False)
def square(cfg: Config) -> int:
    if cfg.x == cfg.fail_at:
        raise ValueError(f"cannot do {cfg.x}")
    Path(cfg.save_dir, f"out-{cfg.x}.txt").write_text(str(cfg.x * cfg.x))
    return cfg.x * cfg.x


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory (no git) as the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XPKIT_ROOT", str(tmp_path))
    return tmp_path


def run_dirs(project: Path, stage: str = "square") -> list[Path]:
    root = project / "results" / stage
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())


@pytest.mark.parametrize("backend", ["serial", "joblib"])
def test_map_runs_every_task_once_in_one_run(project: Path, backend: str) -> None:
    """1,000 tasks: one run dir, one run.lock, every output there, each task ok exactly once."""
    run = square.map([{"x": i} for i in range(1000)], backend=backend, jobs=2)
    assert run_dirs(project) == [run.dir]
    assert run.status == "completed"
    counts_section = {"total": 1000, "done": 1000, "failed": 0, "backend": backend}
    if backend != "serial":  # workers say whose code they ran: no git here, the working tree
        counts_section["code"] = "working tree"
    assert run.lock.tasks == counts_section
    assert run.result == [i * i for i in range(1000)]
    assert len(list(run.dir.glob("out-*.txt"))) == 1000
    assert (run.dir / "out-999.txt").read_text() == str(999 * 999)
    counts = ok_counts(run.dir)
    assert set(counts) == set(range(1000))
    assert max(counts.values()) == 1
    todo = RunPaths(run.dir).todo.read_text().splitlines()
    assert json.loads(todo[7]) == {"i": 7, "task": {"x": 7}}


@pytest.mark.parametrize("backend", ["serial", "joblib"])
def test_failing_task_is_recorded_with_traceback_and_map_goes_on(
    project: Path, backend: str
) -> None:
    """A task that raises is a failed record with its traceback; others run; the run fails."""
    with pytest.raises(TaskError, match=r"1 of 20 tasks failed .*task 5: ValueError"):
        square.map([{"x": i, "fail_at": 5} for i in range(20)], backend=backend, jobs=2)
    run = square.last
    assert run is not None
    assert run.reload().status == "failed"
    assert run.lock.tasks is not None
    assert (run.lock.tasks["done"], run.lock.tasks["failed"]) == (19, 1)
    state = _tasks.scan_done(run.paths, 20)
    error = state.failed[5]["error"]
    assert error["type"] == "ValueError"
    assert error["message"] == "cannot do 5"
    assert error["traceback"].startswith("Traceback (most recent call last):")
    assert "in square" in error["traceback"]
    assert error["traceback"].endswith("ValueError: cannot do 5\n")
    assert "task 5 failed: ValueError: cannot do 5" in run.paths.log.read_text()


def test_serial_stop_on_error_hands_back_the_failing_task_locals(project: Path) -> None:
    """stop_on_error: the first failure ends the map, with its locals like a single run."""
    with pytest.raises(ValueError, match="cannot do 3"):
        square.map([{"x": i, "fail_at": 3} for i in range(10)], stop_on_error=True)
    run = square.last
    assert run is not None
    assert run.locals is not None
    assert run.locals["cfg"].x == 3
    assert run.reload().status == "failed"
    assert run.lock.error is not None
    assert run.lock.error["type"] == "ValueError"
    assert sorted(ok_counts(run.dir)) == [0, 1, 2]


def test_task_key_sets_each_task_at_a_config_key(project: Path) -> None:
    """With key=..., each task value is set at that config key."""
    run = square.map(range(5), key="x")
    assert run.result == [0, 1, 4, 9, 16]


def test_bad_task_key_fails_before_any_run(project: Path) -> None:
    """A task naming an unknown config key is a ConfigError before any directory exists."""
    with pytest.raises(ConfigError, match="nope"):
        square.map([{"nope": 1}])
    assert not (project / "results").exists()


def test_resume_retries_failed_and_missing_tasks_only(project: Path) -> None:
    """resume=RUN_DIR: the same run dir and id; failed + missing tasks run; done ones never."""
    with pytest.raises(TaskError):
        square.map([{"x": i, "fail_at": 4} for i in range(10)])
    run = square.last
    assert run is not None
    first_id = run.id
    missing = RunPaths(run.dir).done_file("gone")
    # tasks 8 and 9 never ran: drop their records
    records = [
        line
        for f in run.paths.done.glob("*.jsonl")
        for line in f.read_text().splitlines()
        if json.loads(line)["i"] < 8
    ]
    for f in run.paths.done.glob("*.jsonl"):
        f.unlink()
    missing.write_text("\n".join(records) + "\n")

    @xp.stage(name="square", src=False)
    def fixed(cfg: Config) -> int:
        return cfg.x

    resumed = fixed.map(None, resume=run.dir)
    assert resumed.dir == run.dir
    assert resumed.reload().id == first_id
    assert resumed.status == "completed"
    assert resumed.lock.tasks is not None
    assert resumed.lock.tasks["resumed"] == 1
    assert resumed.result == [None] * 4 + [4] + [None] * 3 + [8, 9]
    assert ok_counts(run.dir) == dict.fromkeys(range(10), 1)


def test_torn_last_line_is_ignored_and_the_next_writer_starts_a_fresh_line(
    tmp_path: Path,
) -> None:
    """A record cut mid-write (kill -9) is skipped; appending after it loses nothing."""
    paths = RunPaths(tmp_path)
    paths.done.mkdir(parents=True)
    paths.done_file("w").write_bytes(b'{"i": 0, "status": "ok"}\n{"i": 1, "sta')
    assert _tasks.scan_done(paths, 3).ok == {0}
    log = _tasks.DoneLog(paths, "w")
    log.record(2, "ok", 0.1)
    log.close()
    state = _tasks.scan_done(paths, 3)
    assert state.ok == {0, 2}
    assert state.missing() == [1]


def test_incremental_scanner_reads_only_new_complete_lines(tmp_path: Path) -> None:
    """DoneScanner.refresh picks up records appended since the last refresh."""
    paths = RunPaths(tmp_path)
    scanner = _tasks.DoneScanner(paths, 4)
    assert scanner.refresh().done == 0
    log = _tasks.DoneLog(paths, "a")
    log.record(0, "ok", 0.0)
    assert scanner.refresh().ok == {0}
    log.record(1, "failed", 0.0, error={"type": "E", "message": "m", "traceback": "t"})
    log.record(1, "ok", 0.0)
    log.close()
    state = scanner.refresh()
    assert state.ok == {0, 1}
    assert state.failed == {}


def test_tasks_must_be_json_values(project: Path) -> None:
    """A task that cannot be stored as JSON is a one-line TaskError."""
    with pytest.raises(TaskError, match="task 0 cannot be stored as JSON"):
        square.map([{"x": 1, "name": object()}], key=None)


def test_unknown_backend_and_slurm_option_errors_list_the_valid_ones(project: Path) -> None:
    """Unknown backend / Slurm option: one line naming the valid choices."""
    with pytest.raises(ConfigError, match="valid: serial, joblib, slurm"):
        square.map([{"x": 1}], backend="dask")
    with pytest.raises(ConfigError, match=r"unknown Slurm option 'cpu'.*cpus"):
        square.map([{"x": 1}], backend="slurm", slurm={"cpu": 2})


SCRIPT = """
import dataclasses, time
from pathlib import Path
import xpkit as xp

@dataclasses.dataclass
class Config:
    x: int = 0
    sleep_s: float = 0.01

@xp.stage(src=False)
def main(cfg: Config):
    time.sleep(cfg.sleep_s)
    Path(cfg.save_dir, f"out-{cfg.x}.txt").write_text(str(cfg.x))
    xp.log_metrics({"x": cfg.x})
    return cfg.x

if __name__ == "__main__":
    xp.run(main)
"""


def script_env(project: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_ROOT": str(project)}


def test_kill_9_of_a_joblib_map_then_resume_does_exactly_what_is_left(project: Path) -> None:
    """kill -9 of the whole process group halfway; --resume: all done, none done twice."""
    (project / "job.py").write_text(textwrap.dedent(SCRIPT))
    n = 600
    (project / "tasks.jsonl").write_text("".join(json.dumps({"x": i}) + "\n" for i in range(n)))
    cmd = [sys.executable, "job.py", "--tasks", "tasks.jsonl", "--backend", "joblib"]
    proc = subprocess.Popen(
        [*cmd, "--jobs", "2", "sleep_s=0.01"],
        env=script_env(project),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    run_dir = None
    while time.monotonic() < deadline:
        found = [p for p in (project / "results" / "job").glob("2*") if p.is_dir()]
        if found and sum(ok_counts(found[0]).values()) >= n // 2:
            run_dir = found[0]
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run_dir is not None, "the map did not get halfway in 30 s"
    assert load_lock(run_dir).status == "running"
    before = ok_counts(run_dir)
    assert n // 2 <= len(before) < n
    result = subprocess.run(
        [sys.executable, "job.py", "--resume", str(run_dir), "--backend", "joblib", "--jobs", "2"],
        env=script_env(project),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    counts = ok_counts(run_dir)
    assert set(counts) == set(range(n))
    assert max(counts.values()) == 1
    lock = load_lock(run_dir)
    assert lock.status == "completed"
    assert lock.tasks is not None
    assert lock.tasks["done"] == n
    assert len(list(run_dir.glob("out-*.txt"))) == n
    assert [p for p in (project / "results" / "job").iterdir() if not p.is_symlink()] == [run_dir]


def test_cli_tasks_file_formats_and_task_key(project: Path) -> None:
    """--tasks reads JSON lines, a YAML list, or plain lines (with --task-key)."""
    (project / "job.py").write_text(textwrap.dedent(SCRIPT))
    (project / "a.yaml").write_text(yaml.safe_dump([{"x": 1}, {"x": 2}]))
    (project / "b.txt").write_text("3\n4\n\n5\n")
    env = script_env(project)
    for args in (["--tasks", "a.yaml"], ["--tasks", "b.txt", "--task-key", "x"]):
        done = subprocess.run(
            [sys.executable, "job.py", *args, "sleep_s=0"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    runs = sorted(
        (p for p in (project / "results" / "job").iterdir() if not p.is_symlink()),
        key=lambda p: load_lock(p).started,
    )
    assert [sorted(f.name for f in r.glob("out-*")) for r in runs] == [
        ["out-1.txt", "out-2.txt"],
        ["out-3.txt", "out-4.txt", "out-5.txt"],
    ]
    assert load_lock(runs[1]).metrics == {"x": 5}


def test_sweep_makes_one_run_per_point_grouped(project: Path) -> None:
    """A 2x2 grid: four full runs with distinct dirs, each run.lock naming the sweep."""
    runs = square.sweep({"x": [1, 2], "name": ["a", "b"]}, backend="joblib", jobs=2)
    assert len({r.dir for r in runs}) == 4
    sweeps = [load_lock(r.dir).extra["sweep"] for r in runs]
    assert len({s["id"] for s in sweeps}) == 1
    assert [s["point"] for s in sweeps] == [0, 1, 2, 3]
    assert [s["values"] for s in sweeps][1] == {"x": 1, "name": "b"}
    assert {load_lock(r.dir).status for r in runs} == {"completed"}
    assert [load_lock(r.dir).config["x"] for r in runs] == [1, 1, 2, 2]


def test_ls_groups_the_points_of_a_sweep(project: Path) -> None:
    """xp ls shows a sweep column (sweep id and point) and --format json carries it."""
    runs = square.sweep({"x": [1, 2]})
    sweep_id = load_lock(runs[0].dir).extra["sweep"]["id"]
    env = script_env(project)
    table = subprocess.run(
        [sys.executable, "-m", "xpkit", "ls"], env=env, capture_output=True, text=True
    )
    assert table.returncode == 0, table.stderr
    assert "sweep" in table.stdout.splitlines()[0]
    assert f"{sweep_id[:6]} 1/2" in table.stdout
    assert f"{sweep_id[:6]} 2/2" in table.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "xpkit", "ls", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    sweeps = sorted(r["sweep"] for r in json.loads(listed.stdout))
    assert sweeps == [f"{sweep_id} 1/2", f"{sweep_id} 2/2"]


def test_cli_joblib_map_with_a_failing_task(project: Path) -> None:
    """A script's task failing in a joblib worker: its traceback names the script's line (not
    cloudpickle's <dynamic-code>); the map's error says how to see and redo it, no traceback."""
    script = textwrap.dedent(SCRIPT).replace(
        "time.sleep(cfg.sleep_s)", "assert cfg.x != 2, 'x must not be 2'"
    )
    (project / "job.py").write_text(script)
    (project / "tasks.txt").write_text("1\n2\n3\n")
    cmd = ["job.py", "--tasks", "tasks.txt", "--task-key", "x", "--backend", "joblib"]
    done = subprocess.run(
        [sys.executable, *cmd, "--jobs", "2"],
        env=script_env(project),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    run = xp.Run(project / "results" / "job" / "latest")
    shown = f"results/job/{run.dir.name}"
    assert (
        f"1 of 3 tasks failed (first: task 1: AssertionError: x must not be 2); see them:"
        f" xp tasks {shown} --failed; run what is left: --resume {shown}"
    ) in run.paths.log.read_text()
    trace = _tasks.scan_done(run.paths, 3).failed[1]["error"]["traceback"]
    assert f'File "{project / "job.py"}", line 13, in main' in trace
    assert "assert cfg.x != 2, 'x must not be 2'" in trace
    # fixed, resumed without --task-key: the map's recorded key is used, one task runs
    (project / "job.py").write_text(script.replace("cfg.x != 2", "cfg.x != 20"))
    wrong = subprocess.run(
        [sys.executable, "job.py", "--resume", shown, "--task-key", "y"],
        env=script_env(project),
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2
    assert "set each task at key 'x', not 'y'" in wrong.stderr
    resumed = subprocess.run(
        [sys.executable, "job.py", "--resume", shown],
        env=script_env(project),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert run.reload().lock.tasks == {
        "total": 3,
        "done": 3,
        "failed": 0,
        "backend": "serial",
        "key": "x",
        "resumed": 1,
    }
    assert ok_counts(run.dir) == {0: 1, 1: 1, 2: 1}


def test_cli_sweep_ends_with_one_summary_line(project: Path) -> None:
    """--sweep x=1,2: one line naming the sweep and where to compare its runs."""
    (project / "job.py").write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run(
        [sys.executable, "job.py", "--sweep", "x=1,2"],
        env=script_env(project),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    runs = [p for p in (project / "results" / "job").iterdir() if not p.is_symlink()]
    sweep_id = load_lock(runs[0]).extra["sweep"]["id"]
    assert done.stderr.strip().splitlines()[-1] == (
        f"[xpkit] sweep {sweep_id}: 2 runs completed in results/job"
        " (compare them: xp ls results/job)"
    )


def test_cli_sweep_and_failing_point(project: Path) -> None:
    """--sweep x=1,2,3 with one failing point: three runs, exit status 1."""
    (project / "job.py").write_text(
        textwrap.dedent(SCRIPT).replace("time.sleep(cfg.sleep_s)", "assert cfg.x != 2")
    )
    done = subprocess.run(
        [sys.executable, "job.py", "--sweep", "x=1,2,3"],
        env=script_env(project),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "1 of 3 sweep points failed" in done.stderr
    # one line naming the failed point's run directory (relative), no xpkit traceback
    assert "Traceback" not in done.stderr
    assert "error: 1 of 3 sweep points failed (results/job/" in done.stderr
    statuses = sorted(
        load_lock(p).status for p in (project / "results" / "job").iterdir() if not p.is_symlink()
    )
    assert statuses == ["completed", "completed", "failed"]


def test_xp_tasks_shows_progress_and_failures(project: Path) -> None:
    """xp tasks RUN: done / failed / left and the failed tasks; exit 1 as the map failed."""
    with pytest.raises(TaskError):
        square.map([{"x": i, "fail_at": 2} for i in range(6)])
    assert square.last is not None
    out = subprocess.run(
        [sys.executable, "-m", "xpkit", "tasks", str(square.last.dir), "--failed"],
        env=script_env(project),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1, out.stderr
    assert "5 done" in out.stdout
    assert "1 failed" in out.stdout
    assert "0 left" in out.stdout
    assert "task 2: ValueError: cannot do 2" in out.stdout
    assert "ValueError: cannot do 2" in out.stdout.split("failed:")[1].split("task value")[1]


def test_pool_claims_are_exclusive_and_stale_ones_taken_over_once(tmp_path: Path) -> None:
    """A claim is won by one creator; a stale claim by exactly one next generation."""
    from xpkit._parallel import _pool

    paths = RunPaths(tmp_path)
    paths.claims.mkdir(parents=True)
    assert _pool.latest_claim(paths, 5) == (-1, 0.0)
    assert _pool.create(paths.claim_file(5, 0))
    assert not _pool.create(paths.claim_file(5, 0))
    os.utime(paths.claim_file(5, 0), (0, 0))  # what a checkpointing worker does
    gen, mtime = _pool.latest_claim(paths, 5)
    assert (gen, mtime) == (0, 0.0)
    assert _pool._fs_now(paths, "w") - mtime > _pool.STALE_S
    assert [_pool.create(paths.claim_file(5, gen + 1)) for _ in range(3)] == [True, False, False]
    assert _pool.latest_claim(paths, 5)[0] == 1


def test_slurm_time_left_parsing() -> None:
    """squeue's %L durations in seconds; UNLIMITED is None."""
    from xpkit._parallel._slurm import parse_duration_s

    assert parse_duration_s("1:30") == 90
    assert parse_duration_s("01:00:05") == 3605
    assert parse_duration_s("2-00:00:01") == 2 * 86400 + 1
    assert parse_duration_s("UNLIMITED") is None
