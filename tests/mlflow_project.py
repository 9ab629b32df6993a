"""A small real project for the MLflow tests: prepare -> train, a run with overrides, a sweep.

Runs are made by running the scripts as a user would (subprocesses, a git repository, a
joblib sweep), with automatic MLflow sync off: each test decides how and where to sync.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from helpers import SRC

PREPARE = """
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class Config:
    raw: str = "data/raw.csv"  # hashed on every run
    scale: float = 1.0


@xp.stage(data=["raw"])
def main(cfg: Config):
    rows = Path(cfg.raw).read_text().splitlines()
    (Path(cfg.save_dir) / "rows.txt").write_text(str(len(rows) * cfg.scale))
    xp.log_metrics({"rows": len(rows)})


if __name__ == "__main__":
    xp.run(main)
"""

TRAIN = """
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class Config:
    prep: str = "results/prepare/latest"  # the prepare run trained on
    labels: str = "data/labels.csv"  # hashed on every run
    lr: float = 0.1
    epochs: int = 3


@xp.stage(data=["labels"], upstream=["prep"])
def main(cfg: Config):
    n = float((Path(cfg.prep) / "rows.txt").read_text())
    for epoch in range(cfg.epochs):
        xp.log_metrics({"train_loss": n / (1 + cfg.lr * (epoch + 1))}, step=epoch)


if __name__ == "__main__":
    xp.run(main)
"""

SWEEP_LR = ("0.01", "0.5", "1.0")
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "xpkit tests",
    "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "xpkit tests",
    "GIT_COMMITTER_EMAIL": "tests@example.invalid",
}


def project_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a command run in the project: this checkout's xpkit, no auto sync."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {
        **env,
        **GIT_IDENTITY,
        "PYTHONPATH": str(SRC),
        "XPKIT_ROOT": str(root),
        "XPKIT_TRACKING": "0",
        **extra,
    }


def run_in(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    """Run a command in the project; fail with its output when it fails."""
    done = subprocess.run(
        list(args),
        cwd=root,
        env=env or project_env(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def make_pipeline(root: Path) -> Path:
    """A git project with prepare, train (lr=0.05) and a 3-point joblib sweep of train."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "raw.csv").write_text("a\nb\nc\nd\n")
    (root / "data" / "labels.csv").write_text("1\n0\n1\n1\n")
    (root / "prepare.py").write_text(textwrap.dedent(PREPARE))
    (root / "train.py").write_text(textwrap.dedent(TRAIN))
    (root / ".gitignore").write_text("results/\n")
    git = shutil.which("git") or "git"
    run_in(root, git, "init", "-q")
    run_in(root, git, "add", "-A")
    run_in(root, git, "commit", "-qm", "pipeline")
    python = sys.executable
    run_in(root, python, "prepare.py")
    run_in(root, python, "train.py", "lr=0.05")
    sweep = f"lr={','.join(SWEEP_LR)}"
    run_in(root, python, "train.py", "--sweep", sweep, "--backend", "joblib", "--jobs", "2")
    return root


def run_dirs(root: Path, stage: str) -> list[Path]:
    """The run directories of a stage, oldest first."""
    return sorted(p for p in (root / "results" / stage).glob("2*") if p.is_dir())
