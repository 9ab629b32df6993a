"""``xp rerun``: a past run executed again from its snapshot, config, upstream runs and inputs.

Real git repos, real runs in subprocesses, the ``xp`` command as a user types it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from helpers import SRC
from xpkit._core._lock import RunLock, load_lock

HELPER = "def fmt(total):\n    return f'total={total}'\n"

PREP = """
import dataclasses
from pathlib import Path
import xpkit as xp

@dataclasses.dataclass
class Config:
    raw: str = "raw.txt"
    scale: int = 2

@xp.stage(data=["raw"])
def main(cfg: Config):
    rows = Path(cfg.raw).read_text().split()
    Path(cfg.save_dir, "prepared.txt").write_text("\\n".join(str(int(r) * cfg.scale) for r in rows))
    return {"rows": len(rows)}

if __name__ == "__main__":
    xp.run(main)
"""

TRAIN = """
import dataclasses
from pathlib import Path
import xpkit as xp
import helper

@dataclasses.dataclass
class Config:
    prep: str = "results/prep/latest"
    epochs: int = 3
    out: str = "${save_dir}/model.txt"

@xp.stage(upstream=["prep"])
def main(cfg: Config):
    values = [int(v) for v in Path(cfg.prep, "prepared.txt").read_text().split()]
    for epoch in range(cfg.epochs):
        xp.log_metrics({"loss": 1.0 / (epoch + 1)}, step=epoch)
    Path(cfg.out).write_text(helper.fmt(sum(values) * cfg.epochs))
    return sum(values)

if __name__ == "__main__":
    xp.run(main)
"""

PIPELINE = """
import prep, train
prep.main()
train.main()
print(train.main.last.dir)
"""

NOISY = """
import dataclasses, os
from pathlib import Path
import xpkit as xp

@dataclasses.dataclass
class Config:
    n: int = 16
    fail: bool = False

@xp.stage()
def main(cfg: Config):
    Path(cfg.save_dir, "fixed.txt").write_text("same every time")
    Path(cfg.save_dir, "noise.bin").write_bytes(os.urandom(cfg.n))
    if cfg.fail or Path("broken").exists():
        raise RuntimeError("asked to fail")

if __name__ == "__main__":
    xp.run(main)
"""

TASKS = """
import dataclasses
from pathlib import Path
import xpkit as xp

@dataclasses.dataclass
class Config:
    x: int = 0

@xp.stage()
def main(cfg: Config):
    if Path(f"broken-{cfg.x}").exists():
        raise ValueError(f"task {cfg.x} is broken")
    Path(cfg.save_dir, f"out-{cfg.x}.txt").write_text(str(cfg.x * cfg.x))
    return cfg.x

if __name__ == "__main__":
    xp.run(main)
"""


def git(project: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def py(project: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("XPKIT_ROOT", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def xp(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return py(project, "-m", "xpkit", *args)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repo with a 2-stage pipeline, a noisy stage and a mapped stage, committed."""
    files = {
        "helper.py": HELPER,
        "prep.py": PREP,
        "train.py": TRAIN,
        "pipeline.py": PIPELINE,
        "noisy.py": NOISY,
        "tasks.py": TASKS,
        "raw.txt": "1 2 3 4\n",
        ".gitignore": "results/\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def run_pipeline(project: Path) -> Path:
    done = py(project, "pipeline.py")
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def rerun_lock(done: subprocess.CompletedProcess[str], project: Path) -> RunLock:
    """The run.lock of the run ``xp rerun`` says it made."""
    line = next(x for x in done.stdout.splitlines() if x.startswith("rerun of"))
    return load_lock(project / line.rsplit(" in ", 1)[1])


def test_verify_of_a_pipeline_is_identical_after_the_user_moved_on(project: Path) -> None:
    """Code edited, defaults changed, other work committed: the rerun still matches."""
    train_run = run_pipeline(project)
    original = load_lock(train_run)
    (project / "helper.py").write_text("def fmt(total):\n    return f'TOTAL {total}!'\n")
    train = project / "train.py"
    train.write_text(train.read_text().replace("epochs: int = 3", "epochs: int = 7"))
    (project / "notes.md").write_text("other work\n")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "other work")
    head, status = git(project, "rev-parse", "HEAD"), git(project, "status", "--porcelain")
    done = xp(project, "rerun", original.id, "--verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "identical: 3 output files" in done.stdout  # model.txt, metrics, return value
    new = rerun_lock(done, project)
    assert new.extra["rerun_of"] == original.id
    assert new.status == "completed"
    assert new.src is not None
    assert original.src is not None
    assert new.src["commit"] == original.src["commit"]  # the snapshot it ran
    assert new.config["epochs"] == 3  # the recorded config, not today's default
    assert new.upstream is not None
    assert original.upstream is not None
    assert new.upstream["prep"]["id"] == original.upstream["prep"]["id"]
    assert Path(project, new.dir, "model.txt").read_text() == "total=60"
    assert (project / "results" / "train" / "latest").resolve() == Path(project, new.dir)
    # the user's repo is as they left it
    assert git(project, "rev-parse", "HEAD") == head
    assert git(project, "status", "--porcelain") == status
    assert "TOTAL" in (project / "helper.py").read_text()


def test_verify_names_the_file_of_a_non_deterministic_stage(project: Path) -> None:
    """A stage writing random bytes: --verify lists noise.bin as differing and exits 1."""
    done = py(project, "noisy.py")
    assert done.returncode == 0, done.stderr
    original = load_lock(project / "results" / "noisy" / "latest")
    done = xp(project, "rerun", original.id, "--verify")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NOT identical" in done.stdout
    assert "differing  noise.bin" in done.stdout
    assert "fixed.txt" not in done.stdout.split("NOT identical", 1)[1]


def test_python_api_raises_when_not_reproducible(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xp.rerun(verify=True) raises NotReproducibleError naming the differing file."""
    assert py(project, "noisy.py").returncode == 0
    monkeypatch.chdir(project)
    code = (
        "import xpkit as xp, sys\n"
        "try:\n    xp.rerun('results/noisy/latest', verify=True)\n"
        "except xp.XpkitError as e:\n    print(type(e).__name__, e)\n"
        "print(xp.rerun('results/noisy/latest', n=4).lock.extra['rerun_overrides'])\n"
    )
    done = py(project, "-c", code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    raised = [line for line in lines if line.startswith("NotReproducibleError")]
    assert len(raised) == 1
    assert "noise.bin" in raised[0]
    assert lines[-1] == "['n=4']"


def test_changed_input_is_a_one_line_error_unless_allowed(project: Path) -> None:
    """raw.txt edited since: a one-line error naming it; --allow-changed-data runs anyway."""
    run_pipeline(project)
    prep_run = load_lock(project / "results" / "prep" / "latest")
    (project / "raw.txt").write_text("5 6\n")
    refused = xp(project, "rerun", prep_run.id)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "input 'raw' (raw.txt) changed since run" in refused.stderr
    runs_before = sorted((project / "results" / "prep").iterdir())
    assert len(runs_before) == 2  # the run and latest: nothing was created
    allowed = xp(project, "rerun", prep_run.id, "--allow-changed-data")
    assert allowed.returncode == 0, allowed.stderr
    assert rerun_lock(allowed, project).data["raw"]["hash"] != prep_run.data["raw"]["hash"]  # type: ignore[index]


def test_a_failed_run_reruns_and_overrides_are_recorded(project: Path) -> None:
    """A failed run fails again as it was; with fail=false it completes, overrides recorded."""
    done = py(project, "noisy.py", "fail=true")
    assert done.returncode == 1
    failed = load_lock(project / "results" / "noisy" / "latest")
    assert failed.status == "failed"
    again = xp(project, "rerun", failed.id)
    assert again.returncode == 1
    assert rerun_lock(again, project).status == "failed"
    fixed = xp(project, "rerun", failed.id, "fail=false")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    lock = rerun_lock(fixed, project)
    assert lock.status == "completed"
    assert lock.extra["rerun_overrides"] == ["fail=false"]
    assert lock.config["fail"] is False


def test_rerun_of_a_map_all_tasks_or_only_the_failed_ones(project: Path) -> None:
    """A map with 2 broken tasks: --failed runs those 2 only, over the recorded task list."""
    (project / "tasks.jsonl").write_text("".join(json.dumps({"x": i}) + "\n" for i in range(6)))
    for x in (2, 4):
        (project / f"broken-{x}").touch()
    done = py(project, "tasks.py", "--tasks", "tasks.jsonl", "--backend", "joblib", "--jobs", "2")
    assert done.returncode == 1
    original = load_lock(project / "results" / "tasks" / "latest")
    assert original.tasks is not None
    assert original.tasks["failed"] == 2
    for x in (2, 4):
        (project / f"broken-{x}").unlink()
    failed_only = xp(project, "rerun", original.id, "--failed")
    assert failed_only.returncode == 0, failed_only.stdout + failed_only.stderr
    lock = rerun_lock(failed_only, project)
    assert lock.tasks is not None
    assert (lock.tasks["total"], lock.tasks["done"], lock.tasks["backend"]) == (2, 2, "joblib")
    assert lock.tasks["code"] == original.src["commit"]  # type: ignore[index]
    assert lock.extra["rerun_tasks"] == [2, 4]
    assert sorted(p.name for p in Path(project, lock.dir).glob("out-*")) == [
        "out-2.txt",
        "out-4.txt",
    ]
    whole = xp(project, "rerun", original.id, "--backend", "serial")
    assert whole.returncode == 0, whole.stderr
    all_tasks = rerun_lock(whole, project).tasks
    assert all_tasks is not None
    assert (all_tasks["total"], all_tasks["done"]) == (6, 6)


def test_rerun_of_a_sweep_point(project: Path) -> None:
    """One point of a sweep reruns as a single run of that point's config."""
    done = py(project, "noisy.py", "--sweep", "n=4,8")
    assert done.returncode == 0, done.stderr
    points = [load_lock(p) for p in (project / "results" / "noisy").iterdir() if not p.is_symlink()]
    second = next(lock for lock in points if lock.extra["sweep"]["point"] == 1)
    again = xp(project, "rerun", second.id)
    assert again.returncode == 0, again.stderr
    lock = rerun_lock(again, project)
    assert lock.config["n"] == 8
    assert lock.extra["rerun_of"] == second.id
    assert "sweep" not in lock.extra
    assert len(Path(project, lock.dir, "noise.bin").read_bytes()) == 8


def test_rerun_of_a_run_pulled_from_a_store_in_another_clone(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Push a pipeline run, clone the repo (no snapshot branch), pull it, rerun --verify."""
    train_run = run_pipeline(project)
    original = load_lock(train_run)
    store = tmp_path_factory.mktemp("store")
    pushed = xp(project, "push", original.id, "--store", str(store))
    assert pushed.returncode == 0, pushed.stderr
    clone = tmp_path_factory.mktemp("clone") / "repo"
    clone_args = ["clone", "-q", "--no-local", "--single-branch", str(project), str(clone)]
    subprocess.run(["git", *clone_args], check=True)
    assert (
        subprocess.run(
            ["git", "cat-file", "-e", f"{original.src['commit']}^{{commit}}"],  # type: ignore[index]
            cwd=clone,
            check=False,
        ).returncode
        != 0
    )  # the snapshot is not in the clone until pulled
    pulled = xp(clone, "pull", original.id, "--store", str(store))
    assert pulled.returncode == 0, pulled.stderr
    done = xp(clone, "rerun", original.id, "--verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "identical" in done.stdout
    assert rerun_lock(done, clone).extra["rerun_of"] == original.id


def test_a_run_without_snapshot_or_with_a_missing_upstream_is_refused(project: Path) -> None:
    """No code snapshot, or an upstream run deleted: one-line errors naming the reason."""
    assert py(project, "noisy.py", "--no-src").returncode == 0
    no_src = load_lock(project / "results" / "noisy" / "latest")
    refused = xp(project, "rerun", no_src.id)
    assert refused.returncode == 2
    assert "recorded no code snapshot" in refused.stderr
    assert "Traceback" not in refused.stderr
    train_run = run_pipeline(project)
    prep_dir = Path(project, load_lock(train_run).upstream["prep"]["dir"])  # type: ignore[index]
    import shutil

    shutil.rmtree(prep_dir)
    gone = xp(project, "rerun", str(train_run))
    assert gone.returncode == 2
    assert "upstream 'prep'" in gone.stderr
    assert "not there any more" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_a_bad_override_is_one_line_and_makes_no_run(project: Path) -> None:
    """A typo in KEY=VALUE: the closest key is named, no run directory is made."""
    assert py(project, "noisy.py").returncode == 0
    original = load_lock(project / "results" / "noisy" / "latest")
    done = xp(project, "rerun", original.id, "nn=3")
    assert done.returncode == 2
    assert "unknown config key 'nn'" in done.stderr
    assert "closest: n" in done.stderr
    assert "Traceback" not in done.stderr
    runs = [p for p in (project / "results" / "noisy").iterdir() if not p.is_symlink()]
    assert len(runs) == 1


LIB_STAGE = """
import dataclasses
from pathlib import Path
import xpkit as xp
import labpkg

@dataclasses.dataclass
class Config:
    n: int = 3

@xp.stage()
def main(cfg: Config):
    Path(cfg.save_dir, "out.txt").write_text(labpkg.fmt(cfg.n))

if __name__ == "__main__":
    xp.run(main)
"""

LIB_PYPROJECT = """
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "labpkg"
version = "0.1"

[tool.setuptools]
package-dir = {"labpkg" = "lib/labpkg"}
packages = ["labpkg"]
"""


def test_a_package_installed_editable_reruns_from_the_snapshot(tmp_path: Path) -> None:
    """A project package installed editable by setuptools, whose import finder maps its name
    into the live tree (``lib/labpkg``), used by ``scripts/train.py``: after the package is
    edited, ``xp rerun`` runs the snapshot's package, not the live one."""
    project = tmp_path / "proj"
    files = {
        "pyproject.toml": LIB_PYPROJECT,
        "lib/labpkg/__init__.py": "def fmt(n):\n    return f'v1 {n}'\n",
        "scripts/train.py": LIB_STAGE,
        ".gitignore": "results/\n*.egg-info/\n",
    }
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(textwrap.dedent(text))
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "first")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv}))
    outer = sysconfig.get_path("purelib")  # xpkit's dependencies and setuptools
    (site / "outer.pth").write_text(f"{SRC}\n{outer}\n")
    python = str(venv / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps"]
    subprocess.run([*pip, "--no-build-isolation", "-e", project], check=True)
    finders = [p.name for p in site.glob("__editable__*finder.py")]
    assert finders, "setuptools installed the package through a .pth path, not its finder"

    env = {**os.environ, "XPKIT_TRACKING": "0"}
    env.pop("XPKIT_ROOT", None)
    env.pop("PYTHONPATH", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python, *args], cwd=project, env=env, capture_output=True, text=True, timeout=120
        )

    done = run("scripts/train.py")
    assert done.returncode == 0, done.stderr
    first = (project / "results/train/latest").resolve()
    assert (first / "out.txt").read_text() == "v1 3"
    (project / "lib/labpkg/__init__.py").write_text("def fmt(n):\n    return f'v2 {n}'\n")
    assert run("scripts/train.py").returncode == 0
    assert (project / "results/train/latest/out.txt").read_text() == "v2 3"  # live: edited
    done = run("-m", "xpkit", "rerun", str(first))
    assert done.returncode == 0, done.stderr
    assert (project / "results/train/latest/out.txt").read_text() == "v1 3"  # the snapshot's
