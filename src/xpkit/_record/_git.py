"""Code snapshots: commit the working tree to a side branch, leaving the user's git state alone.

Every run commits what is on disk — tracked files with their working-tree content, untracked
files that ``.gitignore`` does not ignore, deletions — to ``refs/heads/run_logs``::

    seed    copy the private cache index (else the user's index) to a unique temporary
            index, keeping its mtime so that git's racy-entry check stays valid
    look    diff-files (one stat pass: changed and deleted entries) and ls-files -o (new
            files, .gitignore honoured) on the temporary index, in parallel; files over the
            size cap, the results dir and exclude globs are left out
    update  GIT_INDEX_FILE=<tmp> git update-index --add --remove: hash only those paths
            (git add -A --ignore-errors when one cannot be added, e.g. a nested repo)
    tree    git write-tree; the same tree and HEAD as the branch tip: reuse the tip
    commit  git commit-tree --no-gpg-sign -p <tip> -p HEAD
    swap    git update-ref refs/heads/run_logs <new> <tip>  (compare-and-swap, retried;
            a ref lock left by a killed git ends it at once: the commit stays off the
            branch, and a warning names the file to remove)
    cache   os.replace(<tmp>, cache index): the next snapshot re-hashes only what changed

Only the temporary and cache indexes (in ``<git dir>/xpkit/``), new objects and the snapshot
branch are written. Every command runs with ``GIT_OPTIONAL_LOCKS=0`` (no refresh of the user's
index), hooks off and LFS filters optional. Processes snapshotting at once each work on their
own temporary index; any of them is a valid cache, so the last ``os.replace`` simply wins.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import random
import re
import secrets
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._core._progress import duration_text
from ..errors import GitError

__all__ = [
    "Snapshot",
    "checkout",
    "code_diff",
    "files_blobs",
    "git_succeeds",
    "git_text",
    "run_git",
    "snapshot",
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
    *("-c", "core.splitIndex=false"),  # our index in one file: no sharedindex.* in .git
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
# git holds a ref lock for milliseconds (and waits core.filesRefLockTimeout for one): a lock
# file older than this has no live writer
_STALE_REF_LOCK_S = 5.0


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
    error: str | None = None  # no commit: why; with a commit: why it is not on the branch


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


def run_git(
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


def git_text(cwd: Path, args: Sequence[str], *, ok: Iterable[int] = (0,)) -> str:
    """Run one git command in ``cwd`` and return its stdout as stripped text."""
    return _text(run_git(cwd, args, ok=ok))


def git_succeeds(cwd: Path, args: Sequence[str], *, ok: Iterable[int] = (0, 1)) -> bool:
    """Whether a git command answering by its exit status says yes (0); the rest of ``ok``: no."""
    call = _Call(cwd, args)
    call.result(ok=ok)
    return call.proc.returncode == 0


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
    common_dir: Path  # shared by linked worktrees: refs, objects, info/exclude


@dataclass(frozen=True)
class _Commit:
    sha: str
    tree: str
    parents: tuple[str, ...]


_REV_PARSE = ["rev-parse", "--absolute-git-dir", "--git-common-dir", "--show-toplevel"]


def _open_repo(root: Path) -> _Repo:
    return _repo_from(root, _Call(root, _REV_PARSE))


def _repo_from(root: Path, rev_parse: _Call) -> _Repo:
    try:
        out = rev_parse.result()
    except GitError as e:
        msg = f"{root} is not inside a git work tree ({e})"
        raise GitError(msg) from None
    git_dir, common_dir, top = os.fsdecode(out).splitlines()[:3]
    return _Repo(root=root, top=Path(top), git_dir=Path(git_dir), common_dir=root / common_dir)


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
    out = run_git(repo.top, ["cat-file", "--batch"], "".join(f"{n}\n" for n in names).encode())
    return _parse_commits(out, len(names))


@dataclass(frozen=True)
class _State:
    head: _Commit | None
    tip: _Commit | None  # the snapshot branch
    branch: str | None
    remote: str | None


def _read_state(root: Path, ref: str) -> tuple[_Repo, _State]:
    """The repo, its HEAD, the snapshot branch tip, the current branch and origin's URL."""
    rev_parse = _Call(root, _REV_PARSE)
    batch = _Call(root, ["cat-file", "--batch"])
    remote = _Call(root, ["config", "--get", "remote.origin.url"])
    try:
        repo = _repo_from(root, rev_parse)
    finally:  # reap them even when this is no repo at all
        commits = batch.result(f"HEAD\n{ref}\n".encode(), ok=range(256))
        url = _text(remote.result(ok=range(256)))
    head, tip = _parse_commits(commits, 2)
    state = _State(head=head, tip=tip, branch=_current_branch(repo), remote=url or None)
    return repo, state


def _current_branch(repo: _Repo) -> str | None:
    """The checked-out branch, None when HEAD is detached (read from HEAD: no process)."""
    text = (repo.git_dir / "HEAD").read_text(encoding="utf-8").strip()
    if not text.startswith("ref: "):
        return None
    ref = text.removeprefix("ref: ")
    if ref == "refs/heads/.invalid":  # the reftable backend keeps HEAD elsewhere
        ref = _text(run_git(repo.top, ["symbolic-ref", "-q", "HEAD"], ok=(0, 1)))
    return ref.removeprefix("refs/heads/") or None


# -- the private index ---------------------------------------------------------------------


def _cache_key(user_index: Path, filters: _Filters) -> str:
    """Name the cache after the user's index (when they change it, reseed from it) and the
    filters it was built with (so that it never holds what they leave out)."""
    try:
        st = user_index.stat()
        user = f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}"
    except FileNotFoundError:
        user = "none"
    digest = hashlib.blake2b(repr(filters).encode(), digest_size=6).hexdigest()
    return f"{user}-{digest}"


def _copy_index(src: Path, dst: Path) -> int | None:
    """Copy an index keeping its mtime (git trusts entries older than the index file).

    Returns the mtime in ns, None when ``src`` does not exist.
    """
    try:
        with src.open("rb") as fsrc, dst.open("wb") as fdst:
            st = os.fstat(fsrc.fileno())
            shutil.copyfileobj(fsrc, fdst)
    except FileNotFoundError:
        return None
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    return st.st_mtime_ns


@dataclass(frozen=True)
class _Index:
    tmp: Path  # this process's own temporary index
    cache: Path  # where it goes when done
    cached_ns: int | None  # the mtime of the cache it was seeded from, None: the user's index


def _seed_index(repo: _Repo, filters: _Filters) -> _Index:
    xp_dir = repo.git_dir / "xpkit"
    xp_dir.mkdir(exist_ok=True)
    user = repo.git_dir / "index"
    cache = xp_dir / f"index-{_cache_key(user, filters)}"
    tmp = xp_dir / f"tmp-{os.getpid()}-{secrets.token_hex(4)}.index"
    cached_ns = _copy_index(cache, tmp)
    if cached_ns is None:
        _copy_index(user, tmp)  # no index at all: update-index creates one
    return _Index(tmp=tmp, cache=cache, cached_ns=cached_ns)


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
    update: list[str]  # paths to hash again: stat-dirty, deleted, new, forced in
    forced: list[str]  # the ignored files among them, named by an include glob
    skipped: list[str]  # files over the size cap


def _plan(repo: _Repo, index: _Index, filters: _Filters) -> _Plan:
    """Ask git, in parallel, what changed on disk since the temporary index and what to drop.

    One stat pass (``diff-files``) finds changed and deleted entries without hashing them,
    so only those are hashed again; ``add -A`` would stat every file a second time.
    """
    tmp, top, keep = index.tmp, repo.top, [".", *_excluding(filters.drop)]
    calls = {
        "dirty": ["diff-files", "-z", "--name-only", "--ignore-submodules=dirty", "--", *keep],
        "new": ["ls-files", "-z", "-o", "--exclude-standard", "--", *keep],
    }
    if filters.drop and index.cached_ns is None:  # a cache never holds what filters drop
        calls["drop"] = ["ls-files", "-z", "-c", "--", *filters.drop]
    if filters.include:
        force = ["ls-files", "-z", "-o", "-i", "--exclude-standard", "--", *filters.include]
        calls["forced"] = [*force, *_excluding(filters.drop)]
    running = {name: _Call(top, args, index=tmp) for name, args in calls.items()}
    out = {name: _paths(call.result()) for name, call in running.items()}
    new = [p.rstrip("/") for p in out["new"]]  # "dir/": a nested repo
    stale = _stale_ignored(repo, index, filters, [*out["dirty"], *new])
    changed = [*out["dirty"], *new, *out.get("forced", [])]
    skipped = _over_cap(top, changed, filters.max_bytes)
    small = [p for p in dict.fromkeys(changed) if p not in set(skipped)]
    forced = [p for p in out.get("forced", []) if p not in set(skipped)]
    remove = [*out.get("drop", []), *stale, *skipped]
    return _Plan(remove=remove, update=small, forced=forced, skipped=skipped)


def _stale_ignored(repo: _Repo, index: _Index, filters: _Filters, changed: list[str]) -> list[str]:
    """Entries of the cache that the user does not track and that are now ignored.

    Only looked for when ignore rules changed since the cache was written: a ``.gitignore``
    among the changed files, or a newer ``info/exclude`` (a global excludes file is not
    watched).
    """
    if index.cached_ns is None or not _ignore_rules_changed(repo, index.cached_ns, changed):
        return []
    ours = _Call(repo.top, ["ls-files", "-z", "-c"], index=index.tmp)
    theirs = _Call(repo.top, ["ls-files", "-z", "-c"])
    candidates = sorted(set(_paths(ours.result())) - set(_paths(theirs.result())))
    if not candidates:
        return []
    check = ["check-ignore", "-z", "--stdin", "--no-index"]
    ignored = _paths(run_git(repo.top, check, _nul(candidates), ok=(0, 1)))
    if ignored and filters.include:
        listing = ["ls-files", "-z", "-c", "--", *filters.include]
        forced = set(_paths(run_git(repo.top, listing, index=index.tmp)))
        ignored = [p for p in ignored if p not in forced]
    return ignored


def _ignore_rules_changed(repo: _Repo, cached_ns: int, changed: list[str]) -> bool:
    if any(p == ".gitignore" or p.endswith("/.gitignore") for p in changed):
        return True
    try:
        return (repo.common_dir / "info" / "exclude").stat().st_mtime_ns > cached_ns
    except OSError:
        return False


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
    """Update the temporary index from the working tree; return (tree sha, git's complaints)."""
    tmp, problems = index.tmp, ""
    if plan.remove:
        remove = ["update-index", "-z", "--force-remove", "--stdin"]
        run_git(repo.top, remove, _nul(plan.remove), index=tmp)
    if plan.update:
        update = ["update-index", "-z", "--add", "--remove", "--stdin"]
        try:
            run_git(repo.top, update, _nul(plan.update), index=tmp)
        except GitError:  # one path git cannot add (a nested repo without commit) fails all
            problems = _add_all(repo, tmp, filters, plan)
    return _text(run_git(repo.top, ["write-tree"], index=tmp)), problems


def _add_all(repo: _Repo, tmp: Path, filters: _Filters, plan: _Plan) -> str:
    """The slow path: ``git add -A --ignore-errors``, skipping what it cannot add."""
    specs = [
        ".",
        *_excluding(filters.drop),
        *(_literal(p, "exclude,literal") for p in plan.skipped),
    ]
    problems = _add(repo, ["add", "-A"], specs, tmp)
    if plan.forced:
        problems += _add(repo, ["add", "-f"], [_literal(p) for p in plan.forced], tmp)
    return problems


def _add(repo: _Repo, args: list[str], specs: list[str], tmp: Path) -> str:
    """Run ``git add``; files it could not read are reported, not fatal.

    Git also exits 1 when an exclude pathspec names an ignored directory: not a problem.
    """
    options = ["--ignore-errors", "--pathspec-from-file=-", "--pathspec-file-nul"]
    call = _Call(repo.top, [*args, *options], index=tmp)
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
        return _text(run_git(repo.top, args, message.encode()))
    except GitError:  # most often: no user.name / user.email configured
        fallback = {k: v for k, v in _FALLBACK_IDENT.items() if k not in os.environ}
        return _text(run_git(repo.top, args, message.encode(), env=fallback))


def _reusable(tip: _Commit | None, tree: str, head: _Commit | None) -> bool:
    return tip is not None and tip.tree == tree and (head is None or head.sha in tip.parents)


@dataclass(frozen=True)
class _Published:
    sha: str
    reused: bool = False
    blocked: str = ""  # why the branch does not hold ``sha``: a stale ref lock; else ""


def _publish(repo: _Repo, ref: str, tree: str, state: _State, message: str) -> _Published:
    """Commit ``tree`` on top of the branch tip with compare-and-swap.

    One commit per tip seen, not per attempt: a retry on the same tip reuses it. A ref lock
    left by a killed git ends the attempts at once: the commit stays off the branch.
    """
    tip, base, new = state.tip, state.tip, ""
    for _ in range(_CAS_ATTEMPTS):
        if tip is not None and _reusable(tip, tree, state.head):
            return _Published(tip.sha, reused=True)
        if not new or tip != base:
            parents = [c.sha for c in (tip, state.head) if c is not None]
            new, base = _commit_tree(repo, tree, parents, message), tip
        stale = _stale_lock(repo.common_dir / f"{ref}.lock")
        if stale:  # update-ref would wait for it in vain
            return _Published(new, blocked=stale)
        swap = _Call(
            repo.top, ["update-ref", "-m", "xpkit snapshot", ref, new, tip.sha if tip else ""]
        )
        try:
            swap.result()
            return _Published(new)
        except GitError as e:
            error = e
        named = _LOCK_EXISTS.search(swap.stderr)
        stale = _stale_lock(repo.top / named[1]) if named else ""
        if stale:  # another lock file of the ref store (reftable, packed-refs)
            return _Published(new, blocked=stale)
        _check_ref(repo, ref)
        time.sleep(random.uniform(0.001, 0.02))  # another process moved the branch: retry
        tip = _read_commits(repo, [ref])[0]
    raise error


# git: "Unable to create '/repo/.git/refs/heads/run_logs.lock': File exists."
_LOCK_EXISTS = re.compile(r"Unable to create '([^']+\.lock)': File exists")


def _stale_lock(path: Path) -> str:
    """Why ``path`` is a lock file no live git holds (older than the bound), else ""."""
    try:
        age_s = time.time() - path.stat().st_mtime
    except OSError:
        return ""
    if age_s < _STALE_REF_LOCK_S:
        return ""  # git holds a ref lock for milliseconds: a young one may be live
    return f"{path} is a stale lock left by a killed git {duration_text(age_s)} ago"


def _check_ref(repo: _Repo, ref: str) -> None:
    try:
        run_git(repo.top, ["check-ref-format", ref])
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
    if snap.commit and snap.error:  # a stale ref lock kept it off the branch
        _warn(f"code snapshot {snap.commit[:12]} is {snap.error}: remove that file", logger)
    return snap


@dataclass(frozen=True)
class _Options:
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    max_file_mb: float
    results_dir: str


def _snapshot(root: Path, ref: str, message: str, options: _Options) -> tuple[Snapshot, str]:
    """Take the snapshot; return it and git's complaints about files it could not add."""
    repo, state = _read_state(root, ref)
    if state.branch is not None and f"refs/heads/{state.branch}" == ref:
        msg = f"the current branch is the snapshot branch {state.branch!r}; check out another"
        raise GitError(msg)
    filters = _filters(repo, options)
    index = _seed_index(repo, filters)
    try:
        plan = _plan(repo, index, filters)
        tree, problems = _build_tree(repo, index, filters, plan)
        published = _publish(repo, ref, tree, state, message)
        _keep_as_cache(index)
    finally:
        index.tmp.unlink(missing_ok=True)
    branch = ref.removeprefix("refs/heads/")
    snap = Snapshot(
        commit=published.sha,
        head=state.head.sha if state.head else None,
        branch=state.branch,
        dirty=state.head is None or state.head.tree != tree,
        remote=state.remote,
        skipped=tuple(plan.skipped),
        reused=published.reused,
        error=f"not on branch {branch!r}: {published.blocked}" if published.blocked else None,
    )
    return snap, problems


def _warn(message: str, logger: logging.Logger | None) -> None:
    if logger is not None:
        logger.warning(message)
    else:
        warnings.warn(message, stacklevel=3)  # the caller of snapshot()


def files_blobs(root: StrPath, commit: str, paths: Iterable[StrPath]) -> dict[str, str]:
    """Blob shas of ``paths`` in the snapshot ``commit``, keyed by POSIX path relative to ``root``.

    Paths outside ``root`` or absent from the snapshot (ignored, too big) are left out.
    """
    top = Path(root).resolve()
    rels = sorted({rel for p in paths if (rel := _relative(top, p))})
    if not rels:
        return {}
    names = "".join(f"{commit}:./{rel}\n" for rel in rels).encode()
    out = run_git(top, ["cat-file", "--batch-check=%(objectname) %(objecttype)"], names)
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
    why = _occupied(target)
    if why:
        msg = f"cannot check out {sha[:12]} into {target}: {why}"
        raise GitError(msg)
    run_git(repo.top, ["worktree", "add", "--detach", str(target), sha])
    return target


def _occupied(target: Path) -> str:
    """Why a worktree cannot go to ``target`` ("" when it is free or an empty directory)."""
    try:
        if not target.exists():
            return ""
        if not target.is_dir():
            return "it is a file, not a directory"
        return "it exists and is not empty" if any(target.iterdir()) else ""
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"


def _resolve_commit(repo: _Repo, commit: str) -> str:
    try:
        return _text(run_git(repo.top, ["rev-parse", "--verify", "-q", f"{commit}^{{commit}}"]))
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
    return os.fsdecode(run_git(repo.top, args))
