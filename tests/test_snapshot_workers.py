"""Workers of a map or sweep run the code of the snapshot taken at submission, not the live tree.

The user edits a module while the tasks run (joblib) or wait in the queue (Slurm): every
task still runs the snapshot's code, and run.lock ``tasks.code`` names the commit they ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import SRC
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the session fixture
from xpkit._core._lock import load_lock

STAGE = """
import dataclasses, time
from pathlib import Path
import xpkit as xp

VERSION = "old"


@dataclasses.dataclass
class Config:
    x: int = 0
    edit: bool = False  # task 0 edits the code as the map runs (the joblib test)


@xp.stage(name="job")
def main(cfg: Config):
    save = Path(cfg.save_dir)
    if cfg.edit and cfg.x == 0:
        edit_the_code()
        Path("edited").touch()
    elif cfg.edit:
        while not Path("edited").exists():
            time.sleep(0.02)
    import helper  # imported when a task runs: after the edit

    (save / f"out-{cfg.x}.txt").write_text(f"{VERSION} {helper.VALUE} {helper.twice(cfg.x)}")
    return cfg.x


def edit_the_code():
    Path("helper.py").write_text("VALUE = 'new'\\ndef twice(x):\\n    return -1\\n")
    stage = Path("stage_mod.py")
    stage.write_text(stage.read_text().replace('VERSION = "old"', 'VERSION = "new"'))
"""

HELPER = "VALUE = 'old'\ndef twice(x):\n    return 2 * x\n"

DRIVER = """
import json, sys
import stage_mod
backend, options, edit = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
tasks = [{"x": i, "edit": edit} for i in range(int(sys.argv[4]))]
if backend == "slurm":
    run = stage_mod.main.map(tasks, backend="slurm", slurm=options)
else:
    run = stage_mod.main.map(tasks, backend=backend, jobs=options["jobs"])
print(run.dir)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repo with a stage module, the helper it imports, and a driver script."""
    (tmp_path / "stage_mod.py").write_text(textwrap.dedent(STAGE))
    (tmp_path / "helper.py").write_text(HELPER)
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "first"], cwd=tmp_path, check=True)
    return tmp_path


def drive(project: Path, backend: str, options: dict[str, object], *, edit: bool, n: int) -> Path:
    env = {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_ROOT": str(project)}
    args = [backend, json.dumps(options), "1" if edit else "0", str(n)]
    done = subprocess.run(
        [sys.executable, "driver.py", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def outputs(run: Path, n: int) -> list[str]:
    return [(run / f"out-{i}.txt").read_text() for i in range(n)]


def test_joblib_map_runs_the_snapshot_when_the_code_is_edited_mid_map(project: Path) -> None:
    """Task 0 edits helper.py and the stage module; every other task still runs the old code."""
    run = drive(project, "joblib", {"jobs": 2}, edit=True, n=12)
    assert "new" in (project / "helper.py").read_text()  # the live tree was edited
    assert outputs(run, 12) == [f"old old {2 * i}" for i in range(12)]
    lock = load_lock(run)
    assert lock.status == "completed"
    assert lock.tasks is not None
    assert lock.src is not None
    assert lock.tasks["code"] == lock.src["commit"]
    trees = project / ".git" / "xpkit" / "trees"
    assert (trees / lock.src["commit"] / "helper.py").read_text() == HELPER
    diff = ["git", "diff", "--name-only"]
    edited = subprocess.run(diff, cwd=project, text=True, capture_output=True, check=True)
    assert edited.stdout.split() == ["helper.py", "stage_mod.py"]  # the user's tree, as left


def test_no_snapshot_means_workers_run_the_working_tree_and_say_so(project: Path) -> None:
    """A stage with src=False: run.lock says the workers ran the working tree."""
    source = (project / "stage_mod.py").read_text()
    (project / "stage_mod.py").write_text(source.replace('name="job"', 'name="job", src=False'))
    run = drive(project, "joblib", {"jobs": 2}, edit=False, n=4)
    lock = load_lock(run)
    assert lock.tasks is not None
    assert lock.tasks["code"] == "working tree"
    assert lock.src is None
    assert outputs(run, 4) == [f"old old {2 * i}" for i in range(4)]


def test_joblib_sweep_points_run_the_snapshot_and_record_its_commit(project: Path) -> None:
    """Point 0 edits the code mid-sweep: every point ran the snapshot, one commit for all."""
    (project / "sweep.py").write_text(
        "import stage_mod\n"
        "runs = stage_mod.main.sweep({'x': [0, 1, 2, 3], 'edit': [True]}, backend='joblib',"
        " jobs=2)\n"
        "print('\\n'.join(str(r.dir) for r in runs))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_ROOT": str(project)}
    done = subprocess.run(
        [sys.executable, "sweep.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    dirs = [Path(line) for line in done.stdout.split() if line.startswith("/")]
    assert len(dirs) == 4
    locks = [load_lock(d) for d in dirs]
    commits = {lock.src["commit"] for lock in locks if lock.src}
    assert len(commits) == 1  # one snapshot for the whole sweep, not one per point
    assert "new" in (project / "helper.py").read_text()
    texts = [(d / f"out-{x}.txt").read_text() for x, d in enumerate(dirs)]
    assert texts == [f"old old {2 * x}" for x in range(4)]


def test_slurm_map_runs_the_snapshot_when_edited_before_the_jobs_start(
    project: Path,
    slurm_cluster: SlurmCluster,  # noqa: F811
) -> None:
    """Submitted with a delayed start, then edited: every task in every job ran the snapshot."""
    options = {"chunks": 2, "cpus": 1, "additional": {"begin": "now+4"}}
    run = drive(project, "slurm", options, edit=False, n=6)
    stage = project / "stage_mod.py"
    stage.write_text(stage.read_text().replace('VERSION = "old"', 'VERSION = "new"'))
    (project / "helper.py").write_text("VALUE = 'new'\ndef twice(x):\n    return -1\n")
    lock = load_lock(run)
    assert lock.tasks is not None
    assert lock.src is not None
    assert lock.tasks["code"] == lock.src["commit"]
    deadline = time.monotonic() + 180
    while load_lock(run).status == "running" and time.monotonic() < deadline:
        time.sleep(1)
    assert load_lock(run).status == "completed", (run / "run.log").read_text()
    assert outputs(run, 6) == [f"old old {2 * i}" for i in range(6)]
