"""The life of a run as a fault injector sees it: kill -9 at every phase, a full disk, a
read-only results directory, a resumed map's history, the entry of runs made in workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import SRC

ENV = {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_TRACKING": "0"}
ENV.pop("XPKIT_ROOT", None)

PREPARE = """
from dataclasses import dataclass
from pathlib import Path
import xpkit as xp

@dataclass
class Config:
    raw: str = "data"

@xp.stage(data=["raw"])
def main(cfg: Config):
    (Path(cfg.save_dir) / "rows.txt").write_text("3\\n")
    return 3

if __name__ == "__main__":
    xp.run(main)
"""

TRAIN = """
import time
from dataclasses import dataclass
import xpkit as xp

@dataclass
class Config:
    prep: str = "results/prepare/latest"
    raw: str = "data"
    wait_recorded: bool = False
    sleep_s: float = 0.0

def kill_point():
    pass

@xp.stage(upstream=["prep"], data=["raw"])
def main(cfg: Config):
    xp.log_metrics({"loss": 0.5}, step=0)
    time.sleep(cfg.sleep_s)
    if cfg.wait_recorded:  # a long body: everything the start knows is recorded by now
        run = xp.current()
        while not (run.reload().lock.data and run.lock.env):
            time.sleep(0.05)
        kill_point()
    return 1

if __name__ == "__main__":
    xp.run(main)
"""

# Runs a script with a profile hook that SIGKILLs the process when a given function is
# entered (``module:function``); when data hashing is under way while the body runs
# (``hashing``: the hashing thread is held until the body starts, then kills); or when
# run.lock's final version is about to replace the running one (``final-write``: the
# temporary file is written, the rename never happens).
KILLER = """
import os, runpy, signal, sys, threading

target = os.environ["KILL_AT"]
armed = []
body_started = threading.Event()

def hook(frame, event, arg):
    if event == "call":
        name = f"{frame.f_globals.get('__name__')}:{frame.f_code.co_name}"
        if name == target:
            os.kill(os.getpid(), signal.SIGKILL)
        if target == "hashing" and name == "__main__:main":
            body_started.set()
        if target == "hashing" and name == "xpkit._record._hashing:hash_one":
            body_started.wait()
            os.kill(os.getpid(), signal.SIGKILL)
        if target == "final-write" and name == "xpkit._core._paths:atomic_write_bytes":
            path, data = frame.f_locals.get("path"), frame.f_locals.get("data", b"")
            if path is not None and path.name == "run.lock" and b"\\nstatus: completed\\n" in data:
                armed.append(True)
    elif event == "c_call" and armed and arg is os.replace:
        os.kill(os.getpid(), signal.SIGKILL)

sys.setprofile(hook)
threading.setprofile(hook)
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git project with data, a prepare stage run once, and a train stage consuming it."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.csv").write_text("a,b\n1,2\n")
    (tmp_path / "prepare.py").write_text(PREPARE)
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "killer.py").write_text(KILLER)
    assert python(tmp_path, "prepare.py").returncode == 0
    return tmp_path


def python(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def xp(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return python(project, "-m", "xpkit", *args)


def train_runs(project: Path) -> list[Path]:
    stage = project / "results" / "train"
    return sorted(p for p in stage.iterdir() if not p.is_symlink()) if stage.is_dir() else []


def killed_run(project: Path, phase: str) -> Path:
    """Run train.py killed by SIGKILL at ``phase``; return its run directory."""
    overrides = {"__main__:kill_point": ["wait_recorded=true"], "hashing": ["sleep_s=30"]}
    done = python(project, "killer.py", "train.py", *overrides.get(phase, []), KILL_AT=phase)
    assert done.returncode == -9, done.stderr
    (run,) = train_runs(project)
    return run


def lock_of(run: Path) -> dict[str, object]:
    data = yaml.safe_load((run / "run.lock").read_text())
    assert isinstance(data, dict)
    return data


def test_kill_at_start_leaves_no_run_and_the_next_run_works(project: Path) -> None:
    """Killed as its directory is made: no run.lock, nothing listed; the next run completes."""
    run = killed_run(project, "xpkit._execute._lifecycle:_open")
    assert list(run.iterdir()) == []
    assert "train" not in xp(project, "ls").stdout
    assert python(project, "train.py").returncode == 0
    assert lock_of(train_runs(project)[-1])["status"] == "completed"


def test_kill_during_the_snapshot_keeps_the_config_and_the_next_run_works(project: Path) -> None:
    """Killed while the code is snapshotted: run.lock has the config and shows interrupted."""
    run = killed_run(project, "xpkit._record._git:snapshot")
    lock = lock_of(run)
    assert lock["status"] == "running"
    assert lock["config"]["raw"] == "data"
    shown = xp(project, "show", str(run))
    assert shown.returncode == 0, shown.stderr
    assert "interrupted" in shown.stdout
    assert python(project, "train.py").returncode == 0


@pytest.mark.parametrize(
    "phase",
    ["hashing", "__main__:kill_point", "final-write"],
    ids=["hashing", "body", "final-write"],
)
def test_a_killed_run_keeps_its_provenance(project: Path, phase: str) -> None:
    """Killed while hashing, in the body or in its final write: run.lock holds the code
    snapshot and the upstream run (and, from the body on, the data and environment);
    ``xp show`` and ``xp lineage`` show them; the next run completes."""
    run = killed_run(project, phase)
    lock = lock_of(run)
    src, upstream = lock["src"], lock["upstream"]
    assert isinstance(src, dict)
    assert src["commit"]
    assert src["files"]["train.py"]
    assert isinstance(upstream, dict)
    assert upstream["prep"]["stage"] == "prepare"
    if phase != "hashing":
        data, env = lock["data"], lock["env"]
        assert isinstance(data, dict)
        assert data["raw"]["hash"].startswith("xxh3_128:")
        assert isinstance(env, dict)
        assert env["packages"]
    shown = xp(project, "show", str(run))
    assert shown.returncode == 0, shown.stderr
    assert "interrupted" in shown.stdout
    assert str(src["commit"])[:8] in shown.stdout
    assert "no code snapshot" not in shown.stdout
    lineage = xp(project, "lineage", str(run))
    assert lineage.returncode == 0, lineage.stderr
    assert "prepare" in lineage.stdout
    assert python(project, "train.py").returncode == 0
    assert lock_of(train_runs(project)[-1])["status"] == "completed"


def test_a_kill_in_the_final_write_leaves_the_running_lock_whole(project: Path) -> None:
    """Killed between the final run.lock's temporary file and its rename: run.lock is the
    last complete one (running, with every section), never a torn file; the temporary file
    left is never listed as one of the run's files."""
    from xpkit import Run
    from xpkit._core._paths import is_write_temp

    run = killed_run(project, "final-write")
    assert lock_of(run)["status"] == "running"
    left = [p for p in run.iterdir() if is_write_temp(p.name)]
    assert left
    assert not set(left) & set(Run(run).files())


# --- a full disk, a read-only results directory -------------------------------------------


@pytest.fixture
def small_results(project: Path) -> Iterator[Path]:
    """``results/small`` on a 2 MiB tmpfs (root only)."""
    where = project / "results" / "small"
    where.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


FILLER = """
from dataclasses import dataclass
from pathlib import Path
import xpkit as xp

@dataclass
class Config:
    save_dir: str = "results/small/${now:%y%m%d-%H%M%S}"
    fill: bool = True

@xp.stage
def main(cfg: Config):
    xp.log_metrics({"loss": 0.25}, step=0)
    print("before the disk filled", flush=True)
    if cfg.fill:
        with open(Path(cfg.save_dir) / "big.bin", "wb") as f:
            while True:
                f.write(b"x" * 65536)
                f.flush()
    return 1

if __name__ == "__main__":
    xp.run(main)
"""


def test_a_body_that_fills_the_disk_ends_failed_with_its_metrics(
    project: Path, small_results: Path
) -> None:
    """The body's write fails on a full disk: the run ends failed with the reason, its
    metrics kept in run.lock (rewritten in place), no traceback of xpkit's own."""
    (project / "filler.py").write_text(FILLER)
    done = python(project, "filler.py")
    assert done.returncode == 1
    assert "No space left on device" in done.stderr
    assert "xpkit/" not in done.stderr.replace(str(project), "")
    (run,) = [p for p in small_results.iterdir() if not p.is_symlink()]
    lock = lock_of(run)
    assert lock["status"] == "failed"
    assert "No space left" in lock["error"]["message"]  # type: ignore[index]
    assert lock["metrics"] == {"loss": 0.25}


def test_a_full_disk_at_start_is_one_line_and_leaves_no_directory(
    project: Path, small_results: Path
) -> None:
    """No room for the run's first files: one line naming the run directory, exit 2, and no
    empty or half-made run directory left behind."""
    with open(small_results / "ballast", "wb") as f:
        try:
            while True:
                f.write(b"x" * 65536)
                f.flush()
        except OSError:
            pass
    (project / "filler.py").write_text(FILLER)
    done = python(project, "filler.py", "fill=false")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot write the run directory results/small/" in lines[0]
    assert "No space left on device" in lines[0]
    assert sorted(p.name for p in small_results.iterdir()) == ["ballast"]


def test_a_read_only_results_directory_is_one_line(project: Path) -> None:
    """results/ read-only (a bind mount, root only): one line naming the directory, exit 2."""
    results = project / "results"
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(results), str(results)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only here (root needed): {mounted.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(results)], check=False)
        done = python(project, "train.py")
    finally:
        subprocess.run(["umount", "-l", str(results)], check=False)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: cannot write the run directory results/train/")
    assert "Read-only file system" in line


# --- a resumed map, runs made in workers ---------------------------------------------------

MAPPED = """
import os
from dataclasses import dataclass
import xpkit as xp

@dataclass
class Config:
    x: int = 0
    fail_at: int = -1

@xp.stage
def main(cfg: Config):
    if cfg.x == cfg.fail_at:
        raise ValueError(f"task {cfg.x}")
    xp.log_metrics({"x": cfg.x})
    return cfg.x

if __name__ == "__main__":
    xp.run(main)
"""


def test_a_resumed_map_keeps_its_first_start_and_lists_its_attempts(tmp_path: Path) -> None:
    """A map failing a task, then resumed: same id, first ``started`` kept, one entry per
    attempt in ``attempts`` (its pid, tasks done in it), duration the sum of attempts."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "mapped.py").write_text(MAPPED)
    (tmp_path / "tasks.jsonl").write_text(
        "".join(json.dumps({"x": i, "fail_at": 3}) + "\n" for i in range(6))
    )
    first = python(tmp_path, "mapped.py", "--tasks", "tasks.jsonl")
    assert first.returncode == 1
    (run,) = [p for p in (tmp_path / "results" / "mapped").iterdir() if not p.is_symlink()]
    before = lock_of(run)
    (tmp_path / "mapped.py").write_text(MAPPED.replace("raise ValueError", "pass  #"))
    again = python(tmp_path, "mapped.py", "--resume", str(run))
    assert again.returncode == 0, again.stderr
    after = lock_of(run)
    assert after["id"] == before["id"]
    assert after["started"] == before["started"]
    assert after["status"] == "completed"
    attempts = after["attempts"]
    assert isinstance(attempts, list)
    assert len(attempts) == 2
    assert attempts[0]["started"] == before["started"]
    assert attempts[0]["duration_s"] == before["duration_s"]
    assert attempts[1]["done"] == 1
    assert attempts[1]["pid"] != attempts[0]["pid"]
    total = attempts[0]["duration_s"] + attempts[1]["duration_s"]
    assert after["duration_s"] == pytest.approx(total, abs=0.01)
    assert after["tasks"]["done"] == 6
    assert after["tasks"]["resumed"] == 1


SWEPT = """
from dataclasses import dataclass
import xpkit as xp

@dataclass
class Config:
    x: int = 0

@xp.stage
def main(cfg: Config):
    return cfg.x

if __name__ == "__main__":
    xp.run(main)
"""


def test_runs_made_in_joblib_workers_record_the_users_script_as_entry(tmp_path: Path) -> None:
    """Sweep points run by joblib workers record the script that defines the stage (not
    joblib's worker module), so that ``xp log`` can import it again."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    name = f"swept_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.py").write_text(SWEPT)
    done = python(tmp_path, f"{name}.py", "--sweep", "x=1,2,3", "--backend", "joblib")
    assert done.returncode == 0, done.stderr
    runs = [p for p in (tmp_path / "results" / name).iterdir() if not p.is_symlink()]
    assert len(runs) == 3
    for run in runs:
        entry = lock_of(run)["entry"]
        assert entry == {"module": "__main__", "qualname": "main", "file": f"{name}.py"}


def test_a_stage_called_in_a_body_is_an_upstream_of_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline of plain calls: the inner run is in the outer run.lock ``upstream``."""
    from helpers import import_project

    module = import_project(
        tmp_path,
        monkeypatch,
        "pipe_mod",
        """
        from dataclasses import dataclass
        import xpkit as xp

        @dataclass
        class Config:
            x: int = 1

        @xp.stage(name="inner")
        def inner(cfg: Config):
            return cfg.x

        @xp.stage(name="outer")
        def outer(cfg: Config):
            return inner(x=cfg.x + 1) + 1
        """,
    )
    assert module.outer() == 3
    lock = module.outer.last.lock
    (key,) = lock.upstream
    assert lock.upstream[key]["id"] == module.inner.last.id


GATED = """
import time
from dataclasses import dataclass
from pathlib import Path
import xpkit as xp

@dataclass
class Config:
    x: int = 0

@xp.stage
def main(cfg: Config):
    if cfg.x >= 3:  # tasks 3, 4, 5 wait for the gate: the map is caught half done
        while not Path("gate").exists():
            time.sleep(0.05)
    return cfg.x

if __name__ == "__main__":
    xp.run(main)
"""


def _views(project: Path, run: Path) -> tuple[str, str, str]:
    """The status and done count of a map as ``xp ls``, ``xp show`` and ``xp tasks`` say."""
    listed = json.loads(xp(project, "ls", "--format", "json").stdout)
    (row,) = [r for r in listed if r["dir"].endswith(run.name)]
    shown = xp(project, "show", str(run)).stdout
    tasks = xp(project, "tasks", str(run)).stdout
    status_in_show = shown.splitlines()[0].split()[-1]
    done_in_show = shown.split("done ")[1].split(",")[0]
    status_in_tasks = tasks.splitlines()[0].rsplit(", ", 1)[1].rstrip(")")
    done_in_tasks = tasks.split(" done")[0].rsplit("· ", 1)[1]
    assert row["status"] == status_in_show == status_in_tasks, (listed, shown, tasks)
    assert done_in_show == done_in_tasks, (shown, tasks)
    return row["status"], done_in_show, tasks


def test_ls_show_and_tasks_agree_on_a_live_a_dead_and_a_resumed_map(tmp_path: Path) -> None:
    """Half done and running, then killed, then resumed: ``xp ls``, ``xp show`` and ``xp
    tasks`` give the same status and the same count of done tasks at every step."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "gated.py").write_text(GATED)
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps({"x": i}) + "\n" for i in range(6)))
    proc = subprocess.Popen(
        [sys.executable, "gated.py", "--tasks", "tasks.jsonl"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        stage_dir = tmp_path / "results" / "gated"
        while not list(stage_dir.glob("*/tasks/done/*.jsonl")) or _done(stage_dir) < 3:
            assert proc.poll() is None
            time.sleep(0.05)
        (run,) = [p for p in stage_dir.iterdir() if not p.is_symlink()]
        assert _views(tmp_path, run)[:2] == ("running", "3")
    finally:
        proc.kill()
        proc.wait()
    assert _views(tmp_path, run)[:2] == ("interrupted", "3")
    (tmp_path / "gate").touch()
    assert python(tmp_path, "gated.py", "--resume", str(run)).returncode == 0
    assert _views(tmp_path, run)[:2] == ("completed", "6")


def _done(stage_dir: Path) -> int:
    return sum(f.read_text().count('"ok"') for f in stage_dir.glob("*/tasks/done/*.jsonl"))
