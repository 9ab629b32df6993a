"""Code snapshot time: xpkit vs the seed's GitPython ``IndexFile`` recipe vs ``git status``.

Scenarios (each in its own scratch repo under a temporary directory):

* ``tracked``: 10,000 tracked files, one file changed before every snapshot.
* ``untracked``: one tracked file and 10,000 untracked ones; first and second snapshot.

Run with ``python benchmarks/bench_git.py [--files N] [--repeats R] [--scenario S]``; the
peer column needs GitPython (``pip install GitPython``). Prints medians in ms and ratios.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from xpkit._record._git import snapshot  # after the sys.path tweak: runs from a checkout

IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout


def make_files(root: Path, count: int, prefix: str) -> None:
    """``count`` small Python files, 100 per directory."""
    for i in range(count):
        path = root / f"{prefix}{i // 100:03d}" / f"mod_{i % 100:02d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# module {i}\nVALUE = {i}\n" + "x = 1\n" * (i % 40))


def make_repo(root: Path, *, tracked: int, untracked: int) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("results/\n")
    make_files(root, tracked, "pkg")
    (root / "train.py").write_text("LR = 0\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    make_files(root, untracked, "scratch")
    git(root, "status", "--porcelain")  # a user's usual refreshed index
    return root


def commit_cwd(branch: str, message: str, repo: object) -> object:
    """The seed's GitPython recipe (from the user request), verbatim but for the repo argument."""
    from git import IndexFile

    index = IndexFile(repo)  # type: ignore[arg-type]
    log_branch = getattr(repo.heads, branch, False) or repo.create_head(branch)  # type: ignore[attr-defined]
    to_add = (
        set(repo.untracked_files)  # type: ignore[attr-defined]
        | {d.a_path or d.b_path for d in index.diff(None) if d.change_type != "D"}
        | {d.a_path or d.b_path for d in index.diff(repo.head.commit) if d.change_type != "A"}  # type: ignore[attr-defined]
    ) - {d.a_path or d.b_path for d in index.diff(None) if d.change_type == "D"}
    index.add(to_add, force=False, write=False, write_extension_data=True)
    log_commit = index.commit(message, parent_commits=[log_branch.commit], head=False)
    log_branch.commit = log_commit
    return log_commit


def xpkit_snapshot(repo: Path) -> None:
    snap = snapshot(repo, message="bench")
    assert snap.commit, snap.error


def gitpython_snapshot(repo: Path) -> None:
    from git.repo import Repo

    commit_cwd("run_logs", "bench", Repo(repo))


def git_status(repo: Path) -> None:
    subprocess.run(
        ["git", "--no-optional-locks", "status", "--porcelain"],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (the git commands)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(
    fn: Callable[[Path], None], repo: Path, repeats: int, *, edit: bool
) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``fn(repo)``; with ``edit``, train.py changes first.

    CPU time is reported too because wall time on a busy machine is noisy.
    """
    walls, cpus = [], []
    for i in range(repeats):
        if edit:
            (repo / "train.py").write_text(f"LR = {time.time_ns()} + {i}\n")
        start, start_cpu = time.perf_counter(), cpu_s()
        fn(repo)
        walls.append((time.perf_counter() - start) * 1000)
        cpus.append((cpu_s() - start_cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def tracked_scenario(base: Path, files: int, repeats: int) -> None:
    print(f"\n{files:,} tracked files, one changed before each snapshot ({repeats} repeats)")
    template = make_repo(base / "tracked", tracked=files, untracked=0)
    tools: dict[str, Callable[[Path], None]] = {
        "xpkit snapshot": xpkit_snapshot,
        "GitPython IndexFile (seed)": gitpython_snapshot,
        "git status": git_status,
    }
    medians = {}
    for name, fn in tools.items():
        repo = base / name.split()[0]
        shutil.copytree(template, repo, symlinks=True)
        git(repo, "status", "--porcelain")  # new inodes: let git refresh the user's index
        fn(repo)  # warm up: the first snapshot creates the branch (and xpkit its cache)
        medians[name] = timed(fn, repo, repeats, edit=True)
    report(medians, "xpkit snapshot")


def untracked_scenario(base: Path, files: int, repeats: int) -> None:
    print(f"\n{files:,} untracked files: first snapshot, then next ones (one file changed)")
    medians = {}
    for name, fn, n in (
        ("xpkit snapshot", xpkit_snapshot, repeats),
        ("GitPython IndexFile (seed)", gitpython_snapshot, 2),  # ~20 s per call
        ("git status", git_status, repeats),
    ):
        repo = make_repo(base / f"untracked-{name.split()[0]}", tracked=0, untracked=files)
        medians[f"{name}: first"] = timed(fn, repo, 1, edit=True)
        medians[f"{name}: next"] = timed(fn, repo, n, edit=True)
    report(medians, "xpkit snapshot: next")


def report(medians: dict[str, tuple[float, float]], reference: str) -> None:
    width = max(map(len, medians))
    wall_ref, cpu_ref = medians[reference]
    print(f"  {'':<{width}}  {'wall':>9}  {'ratio':>6}  {'CPU':>9}  {'ratio':>6}")
    for name, (wall, cpu) in medians.items():
        print(
            f"  {name:<{width}}  {wall:6.1f} ms  {wall / wall_ref:5.2f}x"
            f"  {cpu:6.1f} ms  {cpu / cpu_ref:5.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--scenario", choices=["tracked", "untracked", "both"], default="both")
    args = parser.parse_args()
    os.environ.update(IDENTITY)
    warnings.simplefilter("ignore")
    load = os.getloadavg()[0]
    print(f"git {git(Path.cwd(), 'version').split()[-1]}, {os.cpu_count()} CPUs, load {load:.1f}")
    with tempfile.TemporaryDirectory(prefix="xpkit-bench-git-") as tmp:
        if args.scenario in ("tracked", "both"):
            tracked_scenario(Path(tmp), args.files, args.repeats)
        if args.scenario in ("untracked", "both"):
            untracked_scenario(Path(tmp), args.files, args.repeats)


if __name__ == "__main__":
    main()
