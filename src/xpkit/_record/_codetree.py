"""Code trees: a snapshot commit checked out as a git worktree that runs import code from.

``xp rerun`` runs a past run's code, and the workers of a map or sweep run the code of the
snapshot taken when it was submitted: both import the project's modules from a worktree of
that commit instead of the user's working tree. The worktrees live in the repository's git
directory, one per commit, shared by every run of that commit::

    <git common dir>/xpkit/trees/<sha>         the worktree (detached at <sha>)
    <git common dir>/xpkit/trees/<sha>.ready   made once checked out; its mtime: last use
    <git common dir>/xpkit/trees/.lock         held while a tree is added or removed

A tree unused for :data:`KEEP_S` is removed (``git worktree remove``) when another tree is
added; a worker whose tree was removed under it checks it out again. The user's working
tree, index, HEAD and branches are never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GitError
from ._git import Snapshot, git_text, run_git

__all__ = ["KEEP_S", "CodeTree", "code_tree", "keep_tree", "remove_tree"]

KEEP_S = 7 * 24 * 3600.0
"""A code tree unused this long is removed when another one is added."""


@dataclass(frozen=True)
class CodeTree:
    """A snapshot checked out for runs to import their code from.

    ``dir`` is where the project root lies inside the worktree (the worktree itself unless
    the project is a subdirectory of its repository); ``root`` is the live project root it
    stands for. ``snapshot`` is what run.lock ``src`` records of it.
    """

    snapshot: Snapshot
    dir: Path
    root: Path
    worktree: Path = field(compare=False)

    @property
    def commit(self) -> str:
        """The snapshot commit (full sha)."""
        assert self.snapshot.commit is not None
        return self.snapshot.commit

    def live_path(self, path: str | os.PathLike[str]) -> Path | None:
        """The path in the live project of ``path`` inside this tree; None when outside."""
        p = Path(os.path.abspath(path))
        return self.root / p.relative_to(self.dir) if p.is_relative_to(self.dir) else None

    def tree_path(self, path: str | os.PathLike[str]) -> Path | None:
        """The path inside this tree of ``path`` in the live project; None when outside."""
        p = Path(os.path.abspath(path))
        return self.dir / p.relative_to(self.root) if p.is_relative_to(self.root) else None


def code_tree(root: str | os.PathLike[str], snapshot: Snapshot) -> CodeTree:
    """The code tree of ``snapshot.commit`` for the project at ``root``, checked out if needed.

    Raises:
        GitError: ``root`` is not in a git repository, the commit is not in it (a run
            pulled without its code), or the worktree cannot be added.
    """
    live = Path(root).resolve()
    top, common = _repo_dirs(live)
    sha = _full_sha(top, str(snapshot.commit))
    trees = common / "xpkit" / "trees"
    worktree = trees / sha
    ready = trees / f"{sha}.ready"
    if not _usable(worktree, ready):
        trees.mkdir(parents=True, exist_ok=True)
        with _locked(trees / ".lock"):
            if not _usable(worktree, ready):
                _add(top, worktree, ready, sha)
                _prune(top, trees, keep=sha)
    with contextlib.suppress(OSError):  # a read-only repo: the tree still serves
        os.utime(ready)
    inner = worktree / live.relative_to(top)
    return CodeTree(
        snapshot=dataclasses.replace(snapshot, commit=sha), dir=inner, root=live, worktree=worktree
    )


def keep_tree(tree: CodeTree) -> CodeTree:
    """``tree``, marked as used now; checked out again when it was removed meanwhile (a
    worker that waited in a queue longer than :data:`KEEP_S`).

    Raises:
        GitError: it was removed and cannot be checked out again.
    """
    ready = Path(f"{tree.worktree}.ready")
    if _usable(tree.worktree, ready):
        with contextlib.suppress(OSError):
            os.utime(ready)
        return tree
    return code_tree(tree.root, tree.snapshot)


def remove_tree(tree: CodeTree) -> None:
    """Remove a code tree now (its worktree and its git bookkeeping)."""
    top, _ = _repo_dirs(tree.root)
    with _locked(tree.worktree.parent / ".lock"):
        _remove(top, tree.worktree)


def _repo_dirs(root: Path) -> tuple[Path, Path]:
    """The repository's top level and its common git directory (shared by worktrees)."""
    try:
        out = git_text(root, ["rev-parse", "--show-toplevel", "--git-common-dir"])
    except GitError as e:
        msg = f"{root} is not inside a git work tree ({e})"
        raise GitError(msg) from None
    top, common = out.splitlines()[:2]
    return Path(top).resolve(), (root / common).resolve()


def _full_sha(top: Path, commit: str) -> str:
    try:
        return git_text(top, ["rev-parse", "--verify", "-q", f"{commit}^{{commit}}"])
    except GitError:
        msg = (
            f"code snapshot {commit[:12]} is not in the repository at {top}: pull the run "
            "with its code (xp pull) or fetch the snapshot branch first"
        )
        raise GitError(msg) from None


def _usable(worktree: Path, ready: Path) -> bool:
    return ready.exists() and (worktree / ".git").exists()


def _add(top: Path, worktree: Path, ready: Path, sha: str) -> None:
    """Check ``sha`` out at ``worktree`` (a half-made tree of a killed process replaced)."""
    ready.unlink(missing_ok=True)
    if worktree.exists() or worktree.is_symlink():
        _remove(top, worktree)
    run_git(top, ["worktree", "add", "--detach", "--quiet", str(worktree), sha])
    ready.touch()


def _remove(top: Path, worktree: Path) -> None:
    with contextlib.suppress(GitError):
        run_git(top, ["worktree", "remove", "--force", "--force", str(worktree)])
    if worktree.exists() or worktree.is_symlink():
        shutil.rmtree(worktree, ignore_errors=True)
    Path(f"{worktree}.ready").unlink(missing_ok=True)
    with contextlib.suppress(GitError):
        run_git(top, ["worktree", "prune"])


def _prune(top: Path, trees: Path, *, keep: str) -> None:
    """Remove the trees unused for :data:`KEEP_S` (never ``keep``)."""
    now = time.time()
    for ready in trees.glob("*.ready"):
        sha = ready.name.removesuffix(".ready")
        try:
            idle_s = now - ready.stat().st_mtime
        except OSError:
            continue
        if sha != keep and idle_s > KEEP_S:
            _remove(top, trees / sha)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (``flock``; none where the OS has no flock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: one process at a time is assumed
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
