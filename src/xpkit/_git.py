"""Code snapshots: commit the working tree to a side branch, leaving the user's git state alone.

Every run commits what is on disk — tracked files with their working-tree content, untracked
files that ``.gitignore`` does not ignore, deletions — to ``refs/heads/run_logs``::

    seed    copy the private cache index (else the user's index) to a unique temporary
            index, keeping its mtime so that git's racy-entry check stays valid
    filter  ls-files on the temporary index: entries to drop (results dir, exclude globs,
            stale ignored entries) and changed files, whose sizes are checked against the cap
    add     GIT_INDEX_FILE=<tmp> git add -A  (.gitignore honoured, pathspecs leave out the rest)
    tree    git write-tree; the same tree and HEAD as the branch tip: reuse the tip
    commit  git commit-tree --no-gpg-sign -p <tip> -p HEAD
    swap    git update-ref refs/heads/run_logs <new> <tip>  (compare-and-swap, retried)
    cache   os.replace(<tmp>, cache index): the next snapshot only re-hashes what changed

Only the temporary and cache indexes (in ``<git dir>/xpkit/``), new objects and the snapshot
branch are written. Every command runs with ``GIT_OPTIONAL_LOCKS=0`` (no refresh of the user's
index), hooks off and LFS filters optional. Processes snapshotting at once each work on their
own temporary index; any of them is a valid cache, so the last ``os.replace`` simply wins.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import random
import secrets
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GitError

if TYPE_CHECKING:
    from ._context import ActiveRun, RunPlan

__all__ = [
    "Snapshot",
    "SourceRecorder",
    "checkout",
    "code_diff",
    "files_blobs",
    "snapshot",
    "source_files",
]

StrPath = str | os.PathLike[str]

# Options of every git command: never run the user's hooks (update-ref runs the
# reference-transaction hook, worktree add post-checkout), no auto gc in the user's repo, wait
# for a contended ref lock instead of failing.
_CONFIG = (
    *("-c", f"core.hooksPath={os.devnull}"),
    *("-c", "advice.addEmbeddedRepo=false"),
    *("-c", "core.safecrlf=false"),
    *("-c", "gc.auto=0"),
    *("-c", "maintenance.auto=false"),
    *("-c", "core.filesRefLockTimeout=2000"),
)
# Without git-lfs its filters would fail on every LFS file: store what is on disk (in a checkout
# without git-lfs that is the pointer).
_NO_LFS = tuple(
    arg
    for key in ("required=false", "clean=", "smudge=", "process=")
    for arg in ("-c", f"filter.lfs.{key}")
)
# Used only when git has no identity configured, so that a snapshot never fails for it.
_FALLBACK_IDENT = {
    "GIT_AUTHOR_NAME": "xpkit",
    "GIT_AUTHOR_EMAIL": "xpkit@localhost",
    "GIT_COMMITTER_NAME": "xpkit",
    "GIT_COMMITTER_EMAIL": "xpkit@localhost",
}
_CAS_ATTEMPTS = 50
_STALE_TMP_S = 3600.0
_ENV_DIRS = frozenset({"site-packages", "dist-packages", ".venv", "venv", ".tox", ".nox"})


@dataclass(frozen=True)
class Snapshot:
    """One code snapshot: the commit on the snapshot branch and the user's git state."""

    commit: str | None
    head: str | None = None
    branch: str | None = None
    dirty: bool = False
    remote: str | None = None
    skipped: tuple[str, ...] = ()
    reused: bool = False
    error: str | None = None


# -- running git ---------------------------------------------------------------------------


class _Call:
    """One running git command; :meth:`result` waits for it."""

    def __init__(
        self,
        cwd: Path,
        args: Sequence[str],
        *,
        index: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        try:
            self.proc = subprocess.Popen(
                ["git", *_CONFIG, *_lfs_config(), *args],
                cwd=cwd,
                env=_env(index, env),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            if cwd.is_dir():
                msg = f"cannot run `git {self.args[0]}`: git is not installed (not on PATH)"
            else:
                msg = f"cannot run `git {self.args[0]}` in {cwd}: no such directory"
            raise GitError(msg) from None

    def result(self, stdin: bytes = b"", *, ok: Iterable[int] = (0,)) -> bytes:
        """Wait and return stdout; raise GitError when the exit status is not in ``ok``."""
        out, err = self.proc.communicate(stdin)
        self.stderr = err.decode(errors="replace").strip()
        if self.proc.returncode not in tuple(ok):
            raise GitError(_failure(self.args, self.proc.returncode, self.stderr))
        return out


@functools.cache
def _lfs_config() -> tuple[str, ...]:
    return () if shutil.which("git-lfs") else _NO_LFS


def _env(index: Path | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GIT_INDEX_FILE"}
    env.update(GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    env.update(extra or {})
    return env


def _failure(args: Sequence[str], code: int, stderr: str) -> str:
    shown = " ".join(a for a in args[:4] if not a.startswith("--pathspec"))
    return f"`git {shown}` failed (exit {code}): {stderr or 'no message'}"


def _git(
    cwd: Path,
    args: Sequence[str],
    stdin: bytes = b"",
    *,
    index: Path | None = None,
    env: Mapping[str, str] | None = None,
    ok: Iterable[int] = (0,),
) -> bytes:
    """Run one git command in ``cwd`` and return its stdout."""
    return _Call(cwd, args, index=index, env=env).result(stdin, ok=ok)


def _text(out: bytes) -> str:
    return os.fsdecode(out).strip()


def _paths(out: bytes) -> list[str]:
    """Split the NUL-terminated paths of a ``-z`` listing."""
    return [os.fsdecode(p) for p in out.split(b"\0") if p]


def _nul(paths: Iterable[str]) -> bytes:
    return b"".join(os.fsencode(p) + b"\0" for p in paths)


# -- the repository and its commits --------------------------------------------------------


@dataclass(frozen=True)
class _Repo:
    root: Path  # the project root the caller passed (may be below top)
    top: Path
    git_dir: Path  # per worktree: <top>/.git, or <common>/worktrees/<name>


@dataclass(frozen=True)
class _Commit:
    sha: str
    tree: str
    parents: tuple[str, ...]


def _open_repo(root: Path) -> _Repo:
    try:
        out = _git(root, ["rev-parse", "--absolute-git-dir", "--show-toplevel"])
    except GitError as e:
        msg = f"{root} is not inside a git work tree ({e})"
        raise GitError(msg) from None
    git_dir, top = os.fsdecode(out).splitlines()[:2]
    return _Repo(root=root, top=Path(top), git_dir=Path(git_dir))


def _parse_commits(out: bytes, count: int) -> list[_Commit | None]:
    """Parse ``git cat-file --batch`` output; None where the name was missing or no commit."""
    commits: list[_Commit | None] = []
    pos = 0
    for _ in range(count):
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if len(header) != 3:  # "<name> missing" or "<name> ambiguous"
            commits.append(None)
            continue
        size = int(header[2])
        body = out[pos : pos + size]
        pos += size + 1
        commits.append(_parse_commit(header[0].decode(), body) if header[1] == b"commit" else None)
    return commits


def _parse_commit(sha: str, body: bytes) -> _Commit:
    tree, parents = "", []
    for line in body.split(b"\n\n", 1)[0].split(b"\n"):
        key, _, value = line.partition(b" ")
        if key == b"tree":
            tree = value.decode()
        elif key == b"parent":
            parents.append(value.decode())
    return _Commit(sha=sha, tree=tree, parents=tuple(parents))


def _read_commits(repo: _Repo, names: Sequence[str]) -> list[_Commit | None]:
    out = _git(repo.top, ["cat-file", "--batch"], "".join(f"{n}\n" for n in names).encode())
    return _parse_commits(out, len(names))


@dataclass(frozen=True)
class _State:
    head: _Commit | None
    tip: _Commit | None  # the snapshot branch
    branch: str | None
    remote: str | None


def _read_state(repo: _Repo, ref: str) -> _State:
    """HEAD, the snapshot branch tip, the current branch and the origin URL (in parallel)."""
    batch = _Call(repo.top, ["cat-file", "--batch"])
    symref = _Call(repo.top, ["symbolic-ref", "-q", "HEAD"])
    remote = _Call(repo.top, ["config", "--get", "remote.origin.url"])
    head, tip = _parse_commits(batch.result(f"HEAD\n{ref}\n".encode()), 2)
    branch = _text(symref.result(ok=(0, 1))).removeprefix("refs/heads/") or None
    return _State(head=head, tip=tip, branch=branch, remote=_text(remote.result(ok=(0, 1))) or None)


# -- the private index ---------------------------------------------------------------------


def _cache_key(user_index: Path) -> str:
    """Name the cache after the user's index: when they change it, reseed from it."""
    try:
        st = user_index.stat()
    except FileNotFoundError:
        return "none"
    return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}"


def _copy_index(src: Path, dst: Path) -> bool:
    """Copy an index keeping its mtime (git trusts entries older than the index file)."""
    try:
        with src.open("rb") as fsrc, dst.open("wb") as fdst:
            st = os.fstat(fsrc.fileno())
            shutil.copyfileobj(fsrc, fdst)
    except FileNotFoundError:
        return False
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    return True


@dataclass(frozen=True)
class _Index:
    tmp: Path  # this process's own temporary index
    cache: Path  # where it goes when done
    from_cache: bool


def _seed_index(repo: _Repo) -> _Index:
    xp_dir = repo.git_dir / "xpkit"
    xp_dir.mkdir(exist_ok=True)
    cache = xp_dir / f"index-{_cache_key(repo.git_dir / 'index')}"
    tmp = xp_dir / f"tmp-{os.getpid()}-{secrets.token_hex(4)}.index"
    if _copy_index(cache, tmp):
        return _Index(tmp=tmp, cache=cache, from_cache=True)
    _copy_index(repo.git_dir / "index", tmp)  # no index at all: git add creates one
    return _Index(tmp=tmp, cache=cache, from_cache=False)


def _keep_as_cache(index: _Index) -> None:
    """Make the temporary index the cache and drop caches of older user indexes."""
    os.replace(index.tmp, index.cache)
    now = time.time()
    for old in index.cache.parent.iterdir():
        stale_cache = old.name.startswith("index-") and old != index.cache
        stale_tmp = old.name.startswith("tmp-") and now - _mtime(old) > _STALE_TMP_S
        if stale_cache or stale_tmp:
            with contextlib.suppress(OSError):  # another process may be reading it
                old.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


# -- choosing what goes in -----------------------------------------------------------------


def _glob_pathspecs(pattern: str, magic: str) -> list[str]:
    """Git pathspecs for a gitignore-like glob: no inner slash matches at any depth."""
    body = pattern.strip().strip("/")
    if "/" not in body and not pattern.startswith("/"):
        body = f"**/{body}"
    return [f":({magic}){body}", f":({magic}){body}/**"]


def _literal(path: str, magic: str = "literal") -> str:
    return f":({magic}){path}"


@dataclass(frozen=True)
class _Filters:
    drop: list[str]  # pathspecs of what never goes in: results dir, exclude globs
    include: list[str]  # pathspecs of ignored files forced in
    max_bytes: float


def _filters(repo: _Repo, options: _Options) -> _Filters:
    drop = [spec for pattern in options.exclude for spec in _glob_pathspecs(pattern, "glob")]
    results = os.path.relpath(os.path.abspath(repo.root / options.results_dir), repo.top)
    if not results.startswith(".."):
        drop.append(_literal(Path(results).as_posix()))
    include = [spec for pattern in options.include for spec in _glob_pathspecs(pattern, "glob")]
    return _Filters(drop=drop, include=include, max_bytes=options.max_file_mb * 1024 * 1024)


def _excluding(specs: Iterable[str]) -> list[str]:
    """Turn positive pathspecs into exclusions."""
    return [spec.replace(":(", ":(exclude,", 1) for spec in specs]


@dataclass(frozen=True)
class _Plan:
    remove: list[str]  # entries to take out of the temporary index
    forced: list[str]  # ignored files to add because an include glob names them
    skipped: list[str]  # files over the size cap


def _plan(repo: _Repo, index: _Index, filters: _Filters) -> _Plan:
    """Ask git (in parallel) what to drop, what changed and what is forced in."""
    tmp, rest = index.tmp, [".", *_excluding(filters.drop)]
    drop = None
    if filters.drop:  # with no pathspec ls-files would list every entry
        drop = _Call(repo.top, ["ls-files", "-z", "-c", "--", *filters.drop], index=tmp)
    changed = _Call(
        repo.top, ["ls-files", "-z", "-m", "-o", "--exclude-standard", "--", *rest], index=tmp
    )
    forced = ignored = None
    if filters.include:
        args = ["ls-files", "-z", "-o", "-i", "--exclude-standard", "--", *filters.include]
        forced = _Call(repo.top, [*args, *_excluding(filters.drop)], index=tmp)
    if index.from_cache:  # untracked files snapshotted before may be ignored now
        args = ["ls-files", "-z", "-c", "-i", "--exclude-standard", "--", *rest]
        ignored = _Call(repo.top, [*args, *_excluding(filters.include)], index=tmp)
    to_remove = _paths(drop.result()) if drop else []
    candidates = _paths(changed.result())
    forced_paths = _paths(forced.result()) if forced else []
    if ignored is not None:
        to_remove += _untracked_by_user(repo, _paths(ignored.result()))
    skipped = _over_cap(repo.top, [*candidates, *forced_paths], filters.max_bytes)
    small = [p for p in forced_paths if p not in set(skipped)]
    return _Plan(remove=[*to_remove, *skipped], forced=small, skipped=skipped)


def _untracked_by_user(repo: _Repo, paths: list[str]) -> list[str]:
    """The ``paths`` that the user's own index does not track."""
    if not paths:
        return []
    out = _git(repo.top, ["ls-files", "-z", "-c", "--", *map(_literal, paths)])
    tracked = set(_paths(out))
    return [p for p in paths if p not in tracked]


def _over_cap(top: Path, paths: Iterable[str], max_bytes: float) -> list[str]:
    big = []
    for path in dict.fromkeys(paths):
        try:
            st = os.lstat(top / path)
        except OSError:  # deleted: recorded as a deletion
            continue
        if st.st_size > max_bytes and not os.path.isdir(top / path):
            big.append(path)
    return sorted(big)


def _build_tree(repo: _Repo, index: _Index, filters: _Filters, plan: _Plan) -> tuple[str, str]:
    """Update the temporary index from the working tree; return (tree sha, add's stderr)."""
    tmp = index.tmp
    if plan.remove:
        _git(
            repo.top,
            ["update-index", "-z", "--force-remove", "--stdin"],
            _nul(plan.remove),
            index=tmp,
        )
    specs = [
        ".",
        *_excluding(filters.drop),
        *(_literal(p, "exclude,literal") for p in plan.skipped),
    ]
    add = ["add", "-A", "--ignore-errors", "--pathspec-from-file=-", "--pathspec-file-nul"]
    problems = _add(repo, [*add], specs, tmp)
    if plan.forced:
        force = ["add", "-f", "--ignore-errors", "--pathspec-from-file=-", "--pathspec-file-nul"]
        problems += _add(repo, force, [_literal(p) for p in plan.forced], tmp)
    return _text(_git(repo.top, ["write-tree"], index=tmp)), problems


def _add(repo: _Repo, args: list[str], specs: list[str], tmp: Path) -> str:
    """Run ``git add``; files it could not read are reported, not fatal.

    Git also exits 1 when an exclude pathspec names an ignored directory: not a problem.
    """
    call = _Call(repo.top, args, index=tmp)
    try:
        call.result(_nul(specs))
    except GitError:
        if "fatal:" in call.stderr:
            raise
    lines = call.stderr.splitlines()
    return "\n".join(line for line in lines if line.startswith(("error:", "warning:")))


# -- committing ----------------------------------------------------------------------------


def _commit_tree(repo: _Repo, tree: str, parents: Sequence[str], message: str) -> str:
    args = ["commit-tree", "--no-gpg-sign", tree]
    for parent in dict.fromkeys(parents):
        args += ["-p", parent]
    try:
        return _text(_git(repo.top, args, message.encode()))
    except GitError:  # most often: no user.name / user.email configured
        fallback = {k: v for k, v in _FALLBACK_IDENT.items() if k not in os.environ}
        return _text(_git(repo.top, args, message.encode(), env=fallback))


def _reusable(tip: _Commit | None, tree: str, head: _Commit | None) -> bool:
    return tip is not None and tip.tree == tree and (head is None or head.sha in tip.parents)


def _publish(repo: _Repo, ref: str, tree: str, state: _State, message: str) -> tuple[str, bool]:
    """Commit ``tree`` on top of the branch tip with compare-and-swap; return (sha, reused)."""
    tip = state.tip
    for _ in range(_CAS_ATTEMPTS):
        if tip is not None and _reusable(tip, tree, state.head):
            return tip.sha, True
        parents = [c.sha for c in (tip, state.head) if c is not None]
        new = _commit_tree(repo, tree, parents, message)
        swap = _Call(
            repo.top, ["update-ref", "-m", "xpkit snapshot", ref, new, tip.sha if tip else ""]
        )
        try:
            swap.result()
            return new, False
        except GitError as e:
            error = e
        _check_ref(repo, ref)
        time.sleep(random.uniform(0.001, 0.02))  # another process moved the branch: retry
        tip = _read_commits(repo, [ref])[0]
    raise error


def _check_ref(repo: _Repo, ref: str) -> None:
    try:
        _git(repo.top, ["check-ref-format", ref])
    except GitError:
        msg = f"invalid snapshot branch name {ref.removeprefix('refs/heads/')!r}"
        raise GitError(msg) from None


# -- public API ----------------------------------------------------------------------------


def snapshot(
    root: StrPath,
    *,
    message: str,
    branch: str = "run_logs",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_file_mb: float = 10.0,
    results_dir: str = "results",
    logger: logging.Logger | None = None,
) -> Snapshot:
    """Commit the working tree of the repo at ``root`` to ``branch``; never raises for git.

    Args:
        root: the project root (the repo's top level, or a directory below it).
        message: the snapshot commit's message.
        branch: the side branch; the user's current branch must be another one.
        include: globs of ignored files to snapshot anyway (gitignore-like: a glob without
            an inner ``/`` matches at any depth; a directory stands for all below it).
        exclude: globs of files left out even when tracked.
        max_file_mb: changed or new files above this size are left out, with one warning.
        results_dir: never snapshotted (relative to ``root``).
        logger: where warnings go; default :func:`warnings.warn`.

    Returns:
        The snapshot; on failure (no git, not a repo, ...) ``commit`` is None and
        ``error`` says why, and a warning was emitted.

    Example:
        >>> snap = snapshot(".", message="xpkit: train results/train/240101-120000")
        >>> snap.commit, snap.dirty
    """
    options = _Options(
        include=tuple(include),
        exclude=tuple(exclude),
        max_file_mb=max_file_mb,
        results_dir=results_dir,
    )
    try:
        snap, problems = _snapshot(Path(root).resolve(), f"refs/heads/{branch}", message, options)
    except (GitError, OSError) as e:
        _warn(f"code snapshot skipped: {e}", logger)
        return Snapshot(commit=None, error=str(e))
    if snap.skipped:
        shown = ", ".join(snap.skipped[:20]) + (", ..." if len(snap.skipped) > 20 else "")
        _warn(
            f"code snapshot: {len(snap.skipped)} file(s) over max_file_mb={max_file_mb:g} left "
            f"out: {shown} (raise [tool.xpkit] max_file_mb, or exclude them)",
            logger,
        )
    if problems:
        _warn(f"code snapshot: some files could not be added:\n{problems}", logger)
    return snap


@dataclass(frozen=True)
class _Options:
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    max_file_mb: float
    results_dir: str


def _snapshot(root: Path, ref: str, message: str, options: _Options) -> tuple[Snapshot, str]:
    """Take the snapshot; return it and git's complaints about files it could not add."""
    repo = _open_repo(root)
    state = _read_state(repo, ref)
    if state.branch is not None and f"refs/heads/{state.branch}" == ref:
        msg = f"the current branch is the snapshot branch {state.branch!r}; check out another"
        raise GitError(msg)
    filters = _filters(repo, options)
    index = _seed_index(repo)
    try:
        plan = _plan(repo, index, filters)
        tree, problems = _build_tree(repo, index, filters, plan)
        commit, reused = _publish(repo, ref, tree, state, message)
        _keep_as_cache(index)
    finally:
        index.tmp.unlink(missing_ok=True)
    snap = Snapshot(
        commit=commit,
        head=state.head.sha if state.head else None,
        branch=state.branch,
        dirty=state.head is None or state.head.tree != tree,
        remote=state.remote,
        skipped=tuple(plan.skipped),
        reused=reused,
    )
    return snap, problems


def _warn(message: str, logger: logging.Logger | None) -> None:
    if logger is not None:
        logger.warning(message)
    else:
        warnings.warn(message, stacklevel=3)  # the caller of snapshot()


def source_files(root: StrPath, *, results_dir: str = "results") -> list[Path]:
    """The project's own imported modules: ``sys.modules`` files inside ``root``.

    Files in virtual environments, site-packages and the results directory do not count.
    """
    top = Path(root).resolve()
    results = top / results_dir
    found = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and file.startswith(str(top)):  # cheap filter first
            path = Path(file).resolve()
            if _is_project_file(path, top, results):
                found.add(path)
    return sorted(found)


def _is_project_file(path: Path, top: Path, results: Path) -> bool:
    if not path.is_relative_to(top) or path.is_relative_to(results):
        return False
    if path.is_relative_to(Path(sys.prefix).resolve()) and sys.prefix != sys.base_prefix:
        return False
    return not _ENV_DIRS.intersection(path.relative_to(top).parts) and path.is_file()


def files_blobs(root: StrPath, commit: str, paths: Iterable[StrPath]) -> dict[str, str]:
    """Blob shas of ``paths`` in the snapshot ``commit``, keyed by POSIX path relative to ``root``.

    Paths outside ``root`` or absent from the snapshot (ignored, too big) are left out.
    """
    top = Path(root).resolve()
    rels = sorted({rel for p in paths if (rel := _relative(top, p))})
    if not rels:
        return {}
    names = "".join(f"{commit}:./{rel}\n" for rel in rels).encode()
    out = _git(top, ["cat-file", "--batch-check=%(objectname) %(objecttype)"], names)
    blobs = {}
    for rel, line in zip(rels, os.fsdecode(out).splitlines(), strict=True):
        sha, _, kind = line.rpartition(" ")
        if kind == "blob":
            blobs[rel] = sha
    return blobs


def _relative(top: Path, path: StrPath) -> str | None:
    p = Path(os.path.abspath(top / path))
    if not p.is_relative_to(top) or "\n" in str(p):
        return None
    return p.relative_to(top).as_posix()


def checkout(root: StrPath, commit: str, dest: StrPath | None = None) -> Path:
    """Restore a snapshot as a detached git worktree; return its directory.

    ``dest`` defaults to ``<repo>-<short sha>`` next to the repo. The user's own work tree,
    index and branches are left alone.

    Raises:
        GitError: the commit is not in this repo, or ``dest`` exists and is not empty.
    """
    repo = _open_repo(Path(root).resolve())
    sha = _resolve_commit(repo, commit)
    target = Path(dest) if dest is not None else repo.top.parent / f"{repo.top.name}-{sha[:8]}"
    target = target.resolve()
    if target.exists() and any(target.iterdir()):
        msg = f"cannot check out {sha[:12]} into {target}: it exists and is not empty"
        raise GitError(msg)
    _git(repo.top, ["worktree", "add", "--detach", str(target), sha])
    return target


def _resolve_commit(repo: _Repo, commit: str) -> str:
    try:
        return _text(_git(repo.top, ["rev-parse", "--verify", "-q", f"{commit}^{{commit}}"]))
    except GitError:
        msg = (
            f"commit {commit} is not in the repo at {repo.top}: fetch the snapshot branch "
            "or pull the run (xp pull) first"
        )
        raise GitError(msg) from None


def code_diff(root: StrPath, commit_a: str, commit_b: str, *, stat: bool = False) -> str:
    """The ``git diff`` from snapshot ``commit_a`` to ``commit_b`` (``--stat`` when ``stat``)."""
    repo = _open_repo(Path(root).resolve())
    a, b = _resolve_commit(repo, commit_a), _resolve_commit(repo, commit_b)
    args = ["diff", "--no-color", "--no-ext-diff", *(["--stat"] if stat else []), a, b, "--"]
    return os.fsdecode(_git(repo.top, args))


# -- the run.lock section ------------------------------------------------------------------


class SourceRecorder:
    """``src``: the code snapshot of a run, taken in a thread as the run starts."""

    key = "src"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._snap: Snapshot | None = None

    def prepare(self, plan: RunPlan) -> None:
        pass

    def start(self, run: ActiveRun) -> None:
        if not (run.stage.src and run.settings.src):
            return
        settings = run.settings
        message = f"xpkit: {run.stage.name} {settings.relative(run.paths.dir)}"

        def work() -> None:
            try:
                self._snap = snapshot(
                    settings.root,
                    message=message,
                    branch=settings.branch,
                    include=settings.include,
                    exclude=settings.exclude,
                    max_file_mb=settings.max_file_mb,
                    results_dir=settings.results_dir,
                    logger=run.logger,
                )
            except Exception as e:  # a bug in the snapshot must not fail the run
                run.logger.warning("code snapshot failed: %r", e)
                self._snap = Snapshot(commit=None, error=repr(e))

        self._thread = threading.Thread(target=work, name="xpkit-src", daemon=True)
        self._thread.start()

    def finish(self, run: ActiveRun) -> Any:
        if self._thread is None:
            return None
        self._thread.join()
        snap = self._snap or Snapshot(commit=None, error="the snapshot did not run")
        files = _run_files(run, snap.commit) if snap.commit else {}
        return snapshot_section(snap, files)


def _run_files(run: ActiveRun, commit: str) -> dict[str, str]:
    settings = run.settings
    paths: list[StrPath] = list(source_files(settings.root, results_dir=settings.results_dir))
    with contextlib.suppress(TypeError, OSError):  # builtins, notebooks: no source file
        stage_file = inspect.getsourcefile(run.stage.fn)
        if stage_file is not None:
            paths.append(stage_file)
    try:
        return files_blobs(settings.root, commit, paths)
    except GitError as e:
        run.logger.warning("code snapshot: cannot list source blobs: %s", e)
        return {}


def snapshot_section(snap: Snapshot, files: Mapping[str, str]) -> dict[str, Any]:
    """The ``src`` section of run.lock; ``skipped`` and ``error`` only when set."""
    section: dict[str, Any] = {
        "commit": snap.commit,
        "head": snap.head,
        "branch": snap.branch,
        "dirty": snap.dirty,
        "remote": snap.remote,
        "files": dict(sorted(files.items())),
    }
    if snap.skipped:
        section["skipped"] = list(snap.skipped)
    if snap.error:
        section["error"] = snap.error
    return section
