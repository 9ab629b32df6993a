"""Code trees: a snapshot commit checked out as a worktree in the git dir, reused, collected."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import SRC
from xpkit._record import _codetree
from xpkit._record._codetree import KEEP_S, code_tree, keep_tree, remove_tree
from xpkit._record._git import Snapshot, snapshot
from xpkit.errors import GitError


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "helper.py").write_text("VALUE = 'old'\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def snap(repo: Path) -> Snapshot:
    return snapshot(repo, message="xpkit: test")


def test_a_tree_is_checked_out_once_and_reused(repo: Path) -> None:
    """The same commit gives the same worktree; the user's status and worktree are intact."""
    first = code_tree(repo, snap(repo))
    assert first.worktree == repo / ".git" / "xpkit" / "trees" / first.commit
    assert (first.dir / "helper.py").read_text() == "VALUE = 'old'\n"
    marker = first.dir / "left-by-a-run"
    marker.touch()
    (repo / "helper.py").write_text("VALUE = 'new'\n")
    again = code_tree(repo, Snapshot(commit=first.commit[:10]))  # a short sha names it too
    assert (again.commit, again.worktree) == (first.commit, first.worktree)
    assert marker.exists()  # not checked out anew
    assert git(repo, "status", "--porcelain") == "M helper.py"
    assert (first.dir / "helper.py").read_text() == "VALUE = 'old'\n"


def test_a_commit_not_in_the_repo_is_one_line_naming_the_fix(repo: Path) -> None:
    """A run pulled without its code: the error says to pull it."""
    with pytest.raises(
        GitError, match=r"code snapshot 0123456789ab is not in the repository.*xp pull"
    ):
        code_tree(repo, Snapshot(commit="0123456789abcdef0123456789abcdef01234567"))


def test_idle_trees_are_removed_when_another_is_added(repo: Path) -> None:
    """A tree unused for KEEP_S goes (worktree and git's record of it); a recent one stays."""
    old = code_tree(repo, snap(repo))
    ready = Path(f"{old.worktree}.ready")
    long_ago = time.time() - KEEP_S - 60
    os.utime(ready, (long_ago, long_ago))
    (repo / "helper.py").write_text("VALUE = 'newer'\n")
    new = code_tree(repo, snap(repo))
    assert new.commit != old.commit
    assert not old.worktree.exists()
    assert not ready.exists()
    assert str(old.worktree) not in git(repo, "worktree", "list")
    assert new.worktree.exists()


def test_keep_tree_checks_a_removed_tree_out_again(repo: Path) -> None:
    """A worker whose tree was collected while it waited gets it back, never the live code."""
    tree = code_tree(repo, snap(repo))
    remove_tree(tree)
    assert not tree.worktree.exists()
    back = keep_tree(tree)
    assert (back.dir / "helper.py").read_text() == "VALUE = 'old'\n"


def test_a_half_made_tree_is_replaced(repo: Path) -> None:
    """A process killed during the checkout leaves a directory without .ready: redone."""
    tree = code_tree(repo, snap(repo))
    Path(f"{tree.worktree}.ready").unlink()
    (tree.dir / "helper.py").write_text("half written")
    again = code_tree(repo, tree.snapshot)
    assert (again.dir / "helper.py").read_text() == "VALUE = 'old'\n"


def test_processes_asking_at_once_share_one_tree(repo: Path) -> None:
    """Eight threads ask for the same new tree at once: one checkout, all get it."""
    commit = snap(repo)
    with ThreadPoolExecutor(8) as pool:
        trees = list(pool.map(lambda _: code_tree(repo, commit), range(8)))
    assert len({t.worktree for t in trees}) == 1
    assert git(repo, "worktree", "list").count("xpkit/trees") == 1


def test_use_tree_switches_a_process_to_the_snapshot(repo: Path) -> None:
    """A process that imported the live module imports the tree's after use_tree."""
    tree = code_tree(repo, snap(repo))
    (repo / "helper.py").write_text("VALUE = 'live'\n")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(repo)!r})
        import helper
        before = helper.VALUE
        from xpkit._record._codetree import code_tree
        from xpkit._record._git import Snapshot
        from xpkit._execute._snapcode import use_tree
        tree = code_tree({str(repo)!r}, Snapshot(commit={tree.commit!r}))
        use_tree(tree)
        import helper
        print(before, helper.VALUE, {str(repo)!r} in sys.path)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["live", "old", "False"]


def test_trees_live_in_the_common_git_dir(repo: Path) -> None:
    """From a linked worktree of the user, trees go to the shared git dir."""
    linked = repo.parent / f"{repo.name}-linked"
    git(repo, "worktree", "add", "-q", str(linked))
    tree = code_tree(linked, snap(linked))
    assert tree.worktree.parent == repo / ".git" / "xpkit" / "trees"
    assert _codetree.KEEP_S > 0
