"""Code snapshots travelling with pushed runs: git bundles inside the store.

Each run's snapshot commit is named ``refs/xpkit/runs/<id>`` in the repository. A push puts
the commits the store does not hold yet into one new bundle, whose history stops at the
commits of earlier bundles (incremental): ``code/<name>-<hash>.bundle``, then
``code/<name>.json`` (its refs, prerequisites, creation time, file and hash) as the marker
that the bundle is whole. ``<name>`` is derived from what the bundle holds, so concurrent
pushes of the same runs write one bundle; the file is named by its content hash, so a json
always names the file its writer wrote. Bundles sort by creation time, so a pull that lacks a
prerequisite fetches the earlier bundles first. A bundle is verified against its hash before
git reads it.

A pull fetches bundles into ``refs/xpkit/runs/*`` and moves the snapshot branch
(``run_logs``) forward when that is a fast-forward; otherwise (the branch went another way in
this clone, or it is checked out) the branch is left alone and the pulled commits stay
reachable through ``refs/xpkit/runs/<id>``. HEAD, the index and the working tree are never
touched.
"""

from __future__ import annotations

import json
import re
import secrets
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .._record._git import git_succeeds, git_text, run_git
from ..errors import GitError, StoreError
from ._storage import Store, copy_hashing

__all__ = ["COMMIT", "CodeReport", "check_code", "has_git", "pull_code", "push_code", "run_ref"]

_CODE = "code"
COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a full sha-1 or sha-256 object name
_NAME = re.compile(r"[0-9]{20}-[0-9a-f]{6}|b-[0-9a-f]{16}")  # (older) time-named, content-named
_FILE = re.compile(r"b-[0-9a-f]{16}-[0-9a-f]{32}\.bundle")
_HASH = re.compile(r"xxh3_128:[0-9a-f]{32}")


def run_ref(run_id: str) -> str:
    """The ref keeping a run's snapshot commit reachable."""
    return f"refs/xpkit/runs/{run_id}"


@dataclass(frozen=True)
class _Bundle:
    name: str
    refs: Mapping[str, str]  # ref -> commit
    prerequisites: tuple[str, ...]
    created_ns: int
    file: str  # its key below code/
    hash: str | None  # None: written by an older xpkit


@dataclass
class CodeReport:
    """What a pull did to the local repository."""

    fetched: list[str]  # bundle names
    branch_updated: str | None  # the new tip of the snapshot branch, when it moved
    missing: list[str]  # commits no bundle could provide


def has_git(root: Path) -> bool:
    """Whether ``root`` is inside a git work tree."""
    try:
        return git_text(root, ["rev-parse", "--is-inside-work-tree"]) == "true"
    except GitError:
        return False


def _has_commit(root: Path, commit: str) -> bool:
    return git_succeeds(root, ["cat-file", "-e", f"{commit}^{{commit}}"], ok=(0, 1, 128))


def _is_ancestor(root: Path, ancestor: str, commit: str) -> bool:
    return git_succeeds(root, ["merge-base", "--is-ancestor", ancestor, commit])


def _bundles(store: Store, *, whole: bool = True) -> list[_Bundle]:
    """The bundles of the store, oldest first; a json that is not one of ours is ignored.

    ``whole``: only those whose bundle file is there too.
    """
    keys = store.sizes(_CODE)
    out = []
    for key in keys:
        name = key.removesuffix(".json")
        if name == key or not _NAME.fullmatch(name):
            continue
        bundle = _parse(name, store.read_bytes(f"{_CODE}/{key}"))
        if bundle is not None and (bundle.file in keys or not whole):
            out.append(bundle)
    return sorted(out, key=lambda b: (b.created_ns, b.name))


def _parse(name: str, data: bytes | None) -> _Bundle | None:
    try:
        meta = json.loads(data or b"")
        old = name[0] != "b"
        bundle = _Bundle(
            name,
            dict(meta["refs"]),
            tuple(meta["prerequisites"]),
            int(name[:20]) if old else int(meta["created_ns"]),
            f"{name}.bundle" if old else str(meta["file"]),
            None if old else str(meta["hash"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    shas = [*bundle.refs.values(), *bundle.prerequisites]
    ok = all(isinstance(c, str) and COMMIT.fullmatch(c) for c in shas)
    ok = ok and (bundle.hash is None or bool(_HASH.fullmatch(bundle.hash)))
    ok = ok and (bundle.file == f"{name}.bundle" or bool(_FILE.fullmatch(bundle.file)))
    return bundle if ok else None


def push_code(
    root: Path, store: Store, commits: Mapping[str, str], *, git_remote: str | None = None
) -> tuple[dict[str, str], str | None]:
    """Make the store hold every commit of ``commits`` (run id → commit).

    Returns:
        commit → name of the bundle holding it, and the name of the new bundle (if any).

    Raises:
        StoreError: a commit is neither in this repository nor in the store.
    """
    if not commits:
        return {}, None
    bundles = _bundles(store)
    known = {c: b.name for b in bundles for c in b.refs.values()}
    for run_id, commit in commits.items():
        if _has_commit(root, commit):
            run_git(root, ["update-ref", run_ref(run_id), commit])
        elif commit not in known:
            msg = (
                f"code snapshot {commit[:12]} of run {run_id} is neither in this repository nor "
                "in the store; push from the clone that made the run"
            )
            raise StoreError(msg)
    holder = _holders(root, commits.values(), known)
    todo = {r: c for r, c in commits.items() if c not in holder}
    name = None
    if todo:
        name = _write_bundle(root, store, todo, [c for c in known if _has_commit(root, c)])
        holder.update(dict.fromkeys(todo.values(), name))
    if git_remote:
        specs = [f"{run_ref(r)}:{run_ref(r)}" for r, c in commits.items() if _has_commit(root, c)]
        run_git(root, ["push", "--quiet", git_remote, *specs])
    return holder, name


def _holders(root: Path, commits: Iterable[str], known: Mapping[str, str]) -> dict[str, str]:
    """commit → a bundle already holding it (as a ref, or as an ancestor of one)."""
    local_tips = [c for c in known if _has_commit(root, c)]
    out: dict[str, str] = {}
    for commit in commits:
        if commit in known:
            out[commit] = known[commit]
            continue
        for tip in local_tips:
            if _is_ancestor(root, commit, tip):
                out[commit] = known[tip]
                break
    return out


def _write_bundle(
    root: Path, store: Store, commits: Mapping[str, str], exclude: Sequence[str]
) -> str:
    """Bundle ``commits`` (less ``exclude``) unless the store holds that very bundle already."""
    refs = {run_ref(r): c for r, c in sorted(commits.items())}
    what = json.dumps([refs, sorted(exclude)]).encode()
    name = f"b-{xxhash.xxh3_64_hexdigest(what)}"
    if any(b.name == name for b in _bundles(store)):
        return name  # a concurrent push of the same runs wrote it
    with tempfile.TemporaryDirectory(prefix="xpkit-bundle-") as tmp:
        path = Path(tmp) / f"{name}.bundle"
        args = ["bundle", "create", "--quiet", str(path), *refs, *(f"^{c}" for c in exclude)]
        run_git(root, ["-c", "pack.threads=1", *args])  # one thread: the same bytes each time
        prerequisites = _header_prerequisites(path)
        digest = _hash(path)
        file = f"{name}-{digest.removeprefix('xxh3_128:')}.bundle"
        store.put_file(path, f"{_CODE}/{file}")
    meta = {
        "refs": refs,
        "prerequisites": prerequisites,
        "created_ns": time.time_ns(),
        "file": file,
        "hash": digest,
    }
    store.write_bytes(f"{_CODE}/{name}.json", json.dumps(meta, indent=1).encode())
    return name


def _hash(path: Path) -> str:
    h = xxhash.xxh3_128()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"xxh3_128:{h.hexdigest()}"


def check_code(root: Path, store: Store, codes: Mapping[str, Mapping[str, str | None]]) -> None:
    """Refuse a pull whose code the store names but cannot give.

    Args:
        codes: run id → the ``code`` of its manifest (``commit``, ``bundle``).

    Raises:
        StoreError: the bundle a run names is missing, or a bundle holding a needed commit
            (or one it builds on) lacks its file.
    """
    bundles = _bundles(store, whole=False)
    keys = store.sizes(_CODE)
    names = {b.name: b for b in bundles}
    by_commit = {c: b for b in bundles for c in b.refs.values()}
    todo = []
    for run_id, code in codes.items():
        commit, name = str(code["commit"]), code.get("bundle")
        if _has_commit(root, commit):
            continue
        if name not in names:
            msg = f"code bundle {name} of run {run_id} is missing from store {store.url}"
            raise StoreError(msg)
        todo.append(commit)
    seen: set[str] = set()
    while todo:
        bundle = by_commit.get(todo.pop())
        if bundle is None or bundle.name in seen:
            continue  # an inner commit: pull_code finds it in an earlier bundle, or says so
        seen.add(bundle.name)
        if bundle.file not in keys:
            msg = (
                f"code bundle {bundle.name} in store {store.url} has no file {bundle.file}; "
                "push the runs again"
            )
            raise StoreError(msg)
        todo += [c for c in bundle.prerequisites if not _has_commit(root, c)]


def _header_prerequisites(path: Path) -> list[str]:
    """The ``-<sha>`` lines of a bundle's header: commits the bundle needs to be present."""
    out = []
    with path.open("rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line:
                break
            if line.startswith("-"):
                out.append(line[1:].split(" ", 1)[0])
    return out


def pull_code(root: Path, store: Store, commits: Mapping[str, str], *, branch: str) -> CodeReport:
    """Bring ``commits`` (run id → commit) into the repository at ``root`` from the store."""
    bundles = _bundles(store)
    report = CodeReport(fetched=[], branch_updated=None, missing=[])
    with tempfile.TemporaryDirectory(prefix="xpkit-pull-") as tmp:
        fetcher = _Fetcher(root, store, bundles, Path(tmp), report)
        try:
            for commit in commits.values():
                fetcher.ensure(commit)
            for run_id, commit in commits.items():
                if _has_commit(root, commit):
                    run_git(root, ["update-ref", run_ref(run_id), commit])
                else:
                    report.missing.append(commit)
        finally:
            fetcher.close()
    report.branch_updated = _advance_branch(
        root, branch, [c for c in commits.values() if c not in report.missing]
    )
    return report


class _Fetcher:
    """Fetches bundles, the earlier ones first when a prerequisite is missing."""

    def __init__(
        self, root: Path, store: Store, bundles: list[_Bundle], tmp: Path, report: CodeReport
    ) -> None:
        self.root, self.store, self.bundles, self.tmp, self.report = (
            root,
            store,
            bundles,
            tmp,
            report,
        )
        self.done: set[str] = set()
        self.namespace = f"refs/xpkit/fetch-{secrets.token_hex(4)}"

    def ensure(self, commit: str, *, before: int | None = None) -> None:
        if _has_commit(self.root, commit):
            return
        limit = len(self.bundles) if before is None else before
        direct = [i for i in range(limit) if commit in self.bundles[i].refs.values()]
        # a commit named by a bundle comes from it; an inner one from any earlier bundle
        for i in direct or range(limit):
            self._fetch(i)
            if _has_commit(self.root, commit):
                return

    def _fetch(self, index: int) -> None:
        bundle = self.bundles[index]
        if bundle.name in self.done:
            return
        self.done.add(bundle.name)
        for prerequisite in bundle.prerequisites:
            self.ensure(prerequisite, before=index)
        path = self.tmp / f"{bundle.name}.bundle"
        self._download(bundle, path)
        # into a private namespace: a bundle never moves refs of its own choosing
        spec = f"+refs/*:{self.namespace}/*"
        run_git(
            self.root, ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(path), spec]
        )
        self.report.fetched.append(bundle.name)

    def _download(self, bundle: _Bundle, path: Path) -> None:
        try:
            with self.store.open_read(f"{_CODE}/{bundle.file}") as src, path.open("xb") as dst:
                digest = copy_hashing(src, dst)
        except FileNotFoundError:
            msg = f"code bundle {bundle.name} in store {self.store.url} has no file {bundle.file}"
            raise StoreError(msg) from None
        if bundle.hash is not None and digest != bundle.hash:
            msg = f"code bundle {bundle.file} in store {self.store.url} does not match its hash"
            raise StoreError(msg)

    def close(self) -> None:
        """Drop the fetched refs; pull_code names the commits it needs."""
        refs = git_text(self.root, ["for-each-ref", "--format=%(refname)", self.namespace])
        if refs.strip():
            stdin = "".join(f"delete {ref}\n" for ref in refs.split())
            run_git(self.root, ["update-ref", "--stdin"], stdin.encode())


def _advance_branch(root: Path, branch: str, commits: Sequence[str]) -> str | None:
    """Fast-forward ``refs/heads/<branch>`` over ``commits``; never when it is checked out."""
    ref = f"refs/heads/{branch}"
    head = git_text(root, ["symbolic-ref", "-q", "HEAD"], ok=(0, 1))
    if head == ref or not commits:
        return None
    tip = git_text(root, ["rev-parse", "-q", "--verify", f"{ref}^{{commit}}"], ok=(0, 1))
    new = tip
    for commit in commits:
        if not new or (commit != new and _is_ancestor(root, new, commit)):
            new = commit
    if new == tip:
        return None
    run_git(root, ["update-ref", "-m", "xp pull", ref, new, tip])
    return new
