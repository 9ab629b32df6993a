"""Push a run's whole lineage (run directories and code) to a store; pull it back anywhere.

Store layout (a directory, or any fsspec URL)::

    runs/<id>/manifest.json    id, stage, dir, status, dates, upstream ids, code commit and
                               bundle, and every entry of the run directory:
                               relpath → {size, hash} | {link} | {dir}
    runs/<id>/files/<relpath>  the run directory's files, as they are
    runs/<id>/COMPLETE         the manifest's hash, written last: the run is whole
    code/<name>.bundle         git bundles of the snapshot commits (see _bundles.py)
    code/<name>.json           a bundle's refs and prerequisites, written after it

Listing ``runs/`` is the index. A push keeps one invariant at every moment: a file present
under ``files/`` has the content the current ``manifest.json`` names. So it first removes
COMPLETE and every stored file whose entry changes, then writes the new manifest, then uploads
what is missing, checks the listing, and writes COMPLETE. A push killed anywhere is finished
by the next one, which sends only what is missing; nothing looks complete before it is.

A pull checks every path (store entries, the run.lock's ``dir`` and its upstreams' ``dir``,
symlink targets) before writing anything: all stay inside the project, else
:class:`UnsafePathError`. Each run directory is downloaded into a hidden sibling, verified
against the manifest's hashes and renamed into place, so a failed pull leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash
import yaml

from .._catalog._run import Run
from .._catalog._runs import resolve_run, resolve_runs
from .._core._lock import RunLock, load_lock
from .._core._progress import ProgressBar
from .._core._settings import Settings, load_settings
from .._core._yaml import load_yaml
from ..errors import (
    AmbiguousRunError,
    DataError,
    LockError,
    RunNotFoundError,
    StoreError,
    UnsafePathError,
)
from ._bundles import COMMIT, CodeReport, has_git, pull_code, push_code
from ._storage import (
    Store,
    link_target,
    open_store,
    parallel,
    project_dir,
    safe_relpath,
)

__all__ = ["PullReport", "PushReport", "StoredRun", "list_store", "pull", "push"]

FORMAT = 1
_CHUNK_BYTES = 1 << 20

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # run ids as run.lock may hold them

Entry = dict[str, Any]  # {"size", "hash"} | {"link"} | {"dir": True}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class StoredRun:
    """One run held by a store, as ``xp store ls`` shows it."""

    id: str
    stage: str
    dir: str
    started: str
    status: str
    bytes: int
    files: int
    complete: bool


@dataclass
class PushReport:
    """What a push sent: per run, files and bytes sent and already stored."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    bundles: list[str] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass
class PullReport:
    """What a pull did: per run ``copied``, ``linked``, ``present`` or ``differs``."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    code: CodeReport | None = None
    warnings: list[str] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass(frozen=True)
class _LocalRun:
    """A run of the lineage found in this project."""

    id: str
    dir: str  # relative to the project root, as recorded
    path: Path | None  # None: not here, but already complete in the store
    lock: Mapping[str, Any]
    upstream: tuple[str, ...]

    @property
    def commit(self) -> str | None:
        src = self.lock.get("src")
        commit = src.get("commit") if isinstance(src, Mapping) else None
        return commit if isinstance(commit, str) and commit else None


# --------------------------------------------------------------------------- helpers


def _run_key(run_id: str, name: str) -> str:
    return f"runs/{safe_relpath(run_id, what='a run id')}/{name}"


def hash_file(path: Path) -> str:
    """``xxh3_128:<hex>`` of a file's bytes, streamed."""
    h = xxhash.xxh3_128()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return f"xxh3_128:{h.hexdigest()}"


def _marker(manifest: bytes) -> bytes:
    return f"xxh3_128:{xxhash.xxh3_128_hexdigest(manifest)}\n".encode()


# --------------------------------------------------------------------------- push


def push(
    runs: Iterable[str | os.PathLike[str] | Run],
    *,
    store: str | os.PathLike[str] | None = None,
    git_remote: str | None = None,
    progress: bool | None = None,
) -> PushReport:
    """Copy runs and their whole lineage (run directories and code commits) to a store.

    Args:
        runs: run directories, ``Run`` objects, unique run id prefixes, or directories of
            runs (a stage's: every run below it).
        store: a directory or an fsspec URL (default: ``[tool.xpkit] store``).
        git_remote: also push each snapshot commit as ``refs/xpkit/runs/<id>`` to this remote.
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        StoreError: no store, or a run of the lineage is nowhere to be found.
        UnsafePathError: a run directory is outside the project or has a symlink pointing out.

    Example:
        >>> xp.push(["results/train/latest"], store="s3://bucket/xp")  # doctest: +SKIP
    """
    t0 = time.monotonic()
    settings = load_settings()
    st = open_store(store, settings)
    lineage = _lineage(resolve_runs(runs, settings=settings), settings, st)
    scans = {r.id: _scan(r) for r in lineage if r.path is not None}
    commits = {r.id: r.commit for r in lineage if r.path is not None and r.commit is not None}
    report = PushReport()
    holders, bundle = push_code(settings.root, st, commits, git_remote=git_remote)
    report.bundles = [bundle] if bundle else []
    with ProgressBar("push", total=0, enabled=progress, in_bytes=True) as bar:
        for run in lineage:
            if run.path is None:
                report.runs.append(_row(run, "in store"))
                continue
            code = {"commit": run.commit, "bundle": holders.get(run.commit)} if run.commit else None
            manifest = _manifest(run, scans[run.id], code)
            report.runs.append(_send(st, run, manifest, scans[run.id], bar))
    report.duration_s = round(time.monotonic() - t0, 3)
    return report


def _row(run: _LocalRun, state: str, **counts: int) -> dict[str, Any]:
    return {"id": run.id, "stage": run.lock.get("stage"), "dir": run.dir, "state": state, **counts}


def _lineage(roots: Sequence[Run], settings: Settings, st: Store) -> list[_LocalRun]:
    """Every run of the lineage of ``roots``, each once, upstream runs first."""
    out: dict[str, _LocalRun] = {}

    def visit(lock: Mapping[str, Any], path: Path | None) -> None:
        run_id = str(lock["id"])
        if run_id in out:
            return
        rel = project_dir(lock["dir"], what=f"run.lock of run {run_id}")
        ups = _upstream_locks(lock)
        if path is None:
            path = _locate(run_id, rel, settings)
        if path is None and not _complete(st, run_id):
            msg = (
                f"upstream run {run_id} ({rel}) is neither in this project nor complete in the "
                f"store {st.url}; pull or restore it first"
            )
            raise StoreError(msg)
        for up in ups if path is not None else ():
            visit(up, None)
        out[run_id] = _LocalRun(run_id, rel, path, lock, tuple(str(u["id"]) for u in ups))

    for run in roots:
        visit(run.lock.to_dict(), run.dir)
    return list(out.values())


def _upstream_locks(lock: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    section = lock.get("upstream")
    if not isinstance(section, Mapping):
        return []
    return [
        v
        for v in section.values()
        if isinstance(v, Mapping) and isinstance(v.get("id"), str) and "dir" in v
    ]


def _locate(run_id: str, rel: str, settings: Settings) -> Path | None:
    """The run directory of ``run_id``: at its recorded ``dir``, else found by id."""
    path = settings.root / rel
    with contextlib.suppress(LockError):
        if load_lock(path / "run.lock").id == run_id:
            return path
    try:
        run = resolve_run(run_id, settings=settings)
    except RunNotFoundError:
        return None
    return run.dir if run.id == run_id else None


def _complete(st: Store, run_id: str) -> bool:
    manifest = st.read_bytes(_run_key(run_id, "manifest.json"))
    return manifest is not None and st.read_bytes(_run_key(run_id, "COMPLETE")) == _marker(manifest)


def _scan(run: _LocalRun) -> dict[str, Entry]:
    """Every entry of a run directory: files hashed, links checked, empty dirs kept."""
    assert run.path is not None
    top = run.path.resolve()
    what = f"run directory {run.dir}"
    entries = _scan_dir(top)
    for rel, entry in entries.items():
        safe_relpath(rel, what=what)
        if "link" in entry:
            entry["link"] = link_target(rel, entry["link"], what=what, top=top)
    if "run.lock" not in entries:
        msg = f"{what} has no run.lock"
        raise StoreError(msg)
    files = [rel for rel, e in entries.items() if "size" in e]
    links = any("link" in e for e in entries.values())
    digests = _digests(top, files, links=links)
    for rel in files:
        entries[rel]["hash"] = digests[rel]
    return dict(sorted(entries.items()))


def _digests(top: Path, files: Sequence[str], *, links: bool) -> Mapping[str, str]:
    """File hashes through the shared hash cache (unchanged files are not read again).

    The cached walk follows links, so a directory holding links is hashed file by file.
    """
    if not links:
        from .._record._hashing import hash_path

        with contextlib.suppress(DataError):
            manifest = hash_path(top).manifest or {}
            if all(rel in manifest for rel in files):
                return manifest
    return {rel: hash_file(top / rel) for rel in files}


def _manifest(run: _LocalRun, entries: Mapping[str, Entry], code: Any) -> bytes:
    lock = run.lock
    data = {
        "xpkit_store": FORMAT,
        "id": run.id,
        "stage": lock.get("stage"),
        "dir": run.dir,
        "status": lock.get("status"),
        "started": lock.get("started"),
        "ended": lock.get("ended"),
        "upstream": list(run.upstream),
        "code": code,
        "bytes": sum(e.get("size", 0) for e in entries.values()),
        "files": entries,
    }
    return json.dumps(data, indent=1, sort_keys=False).encode()


def _send(
    st: Store, run: _LocalRun, manifest: bytes, entries: Mapping[str, Entry], bar: ProgressBar
) -> dict[str, Any]:
    """Make ``runs/<id>`` hold ``entries`` under ``manifest``; COMPLETE last."""
    assert run.path is not None
    marker_key, manifest_key = _run_key(run.id, "COMPLETE"), _run_key(run.id, "manifest.json")
    files = {k: e for k, e in entries.items() if "hash" in e}
    old = st.read_bytes(manifest_key)
    if old == manifest and st.read_bytes(marker_key) == _marker(manifest):
        return _row(run, "unchanged", files=len(files), sent_files=0, sent_bytes=0)
    source = st.local_path(_run_key(run.id, "files"))
    if source is not None and run.path.resolve() == source.resolve():
        # the run dir is a --link into this very store: its files are the stored ones
        msg = (
            f"run {run.id} ({run.dir}) is linked from this store and differs from its manifest; "
            "pull a copy (without --link) to change a run"
        )
        raise StoreError(msg)
    old_files = _manifest_files(old)
    files_prefix = _run_key(run.id, "files")
    st.remove([marker_key])
    present = st.sizes(files_prefix)
    stale = [k for k in present if k not in files or old_files.get(k) != files[k]]
    st.remove([f"{files_prefix}/{k}" for k in stale])
    st.write_bytes(manifest_key, manifest)
    stale_set = set(stale)
    kept = {k: n for k, n in present.items() if k not in stale_set}
    todo = [k for k, e in files.items() if kept.get(k) != e["size"]]
    bar.grow(sum(files[k]["size"] for k in todo))

    def upload(rel: str) -> None:
        st.put_file(run.path / rel, f"{files_prefix}/{rel}")  # type: ignore[operator]
        bar.advance(files[rel]["size"])

    parallel(upload, todo)
    _check_sizes(st, run.id, files)
    st.write_bytes(marker_key, _marker(manifest))
    sent = sum(files[k]["size"] for k in todo)
    return _row(run, "sent", files=len(files), sent_files=len(todo), sent_bytes=sent)


def _manifest_files(data: bytes | None) -> dict[str, Entry]:
    try:
        files = json.loads(data or b"")["files"]
    except (ValueError, KeyError, TypeError):
        return {}
    return files if isinstance(files, dict) else {}


def _check_sizes(st: Store, run_id: str, files: Mapping[str, Entry]) -> None:
    stored = st.sizes(_run_key(run_id, "files"))
    wrong = [k for k, e in files.items() if stored.get(k) != e["size"]]
    if wrong:
        msg = (
            f"run {run_id} in store {st.url}: {len(wrong)} files missing or truncated ({wrong[0]})"
        )
        raise StoreError(msg)


# --------------------------------------------------------------------------- pull


@dataclass(frozen=True)
class _PullPlan:
    manifest: Mapping[str, Any]
    target: Path
    action: str  # fetch | present | differs
    differing: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return str(self.manifest["id"])


def pull(
    run: str,
    *,
    store: str | os.PathLike[str] | None = None,
    link: bool = False,
    progress: bool | None = None,
) -> PullReport:
    """Bring a run and its whole lineage back from a store into this project.

    Run directories go to their recorded paths (verified against the stored hashes), the
    code snapshot commits into the repository (``refs/xpkit/runs/<id>``, and the snapshot
    branch when it can move forward). A run already here is left alone, reported when it
    differs. Every path is checked before anything is written.

    Args:
        run: a unique prefix of the run id.
        store: a directory or an fsspec URL (default: ``[tool.xpkit] store``).
        link: symlink run directories to a filesystem store instead of copying.
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        RunNotFoundError: no run (or several) in the store matches ``run``.
        UnsafePathError: a store entry or run.lock would write outside the project.
        StoreError: the run is incomplete in the store, or a file fails verification.

    Example:
        >>> xp.pull("3fa9", store="/shared/xp-store", link=True)  # doctest: +SKIP
    """
    t0 = time.monotonic()
    settings = load_settings()
    st = open_store(store, settings)
    if link and st.local_path("runs") is None:
        msg = f"--link needs a store on a filesystem, not {st.url}; pull without --link to copy"
        raise StoreError(msg)
    manifests = _stored_lineage(st, _match(st, run))
    plans = [_plan_pull(st, settings, m, link=link) for m in manifests]
    _check_nesting(plans)
    report = PullReport()
    commits = {p.id: p.manifest["code"]["commit"] for p in plans if p.manifest.get("code")}
    if commits and has_git(settings.root):
        report.code = pull_code(settings.root, st, commits, branch=settings.branch)
        if report.code.missing:
            report.warnings.append(
                f"code commits not in the store: {', '.join(report.code.missing)}"
            )
    elif commits:
        report.warnings.append(f"{settings.root} is not a git repository: code not pulled")
    with ProgressBar("pull", total=0, enabled=progress, in_bytes=True) as bar:
        for plan in plans:
            action = plan.action
            if action == "fetch":
                action = "linked" if link else "copied"
                (_link_run if link else _copy_run)(st, plan, bar)
            report.runs.append(_pulled(plan, action))
    report.duration_s = round(time.monotonic() - t0, 3)
    return report


def _pulled(plan: _PullPlan, state: str) -> dict[str, Any]:
    m = plan.manifest
    return {"id": plan.id, "stage": m.get("stage"), "dir": m["dir"], "state": state,
            "differing": list(plan.differing)}  # fmt: skip


def _match(st: Store, prefix: str) -> str:
    ids = [i for i in st.children("runs") if _ID.fullmatch(i)]
    if prefix in ids:
        return prefix
    matches = [i for i in ids if i.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        some = ", ".join(matches[:5])
        msg = f"run id prefix {prefix!r} matches {len(matches)} runs in {st.url}: {some}"
        raise AmbiguousRunError(msg)
    msg = f"no run with id prefix {prefix!r} in store {st.url}"
    raise RunNotFoundError(msg)


def _stored_lineage(st: Store, run_id: str) -> list[Mapping[str, Any]]:
    """The manifests of a stored run and of its whole lineage, upstream runs first."""
    out: dict[str, Mapping[str, Any]] = {}

    def visit(rid: str, needed_by: str | None) -> None:
        if rid in out:
            return
        data = st.read_bytes(_run_key(rid, "manifest.json"))
        if data is None or st.read_bytes(_run_key(rid, "COMPLETE")) != _marker(data):
            by = f" (upstream of {needed_by})" if needed_by else ""
            msg = f"run {rid}{by} is not complete in store {st.url}; push it again"
            raise StoreError(msg)
        manifest = _parse_manifest(data, rid)
        for up in manifest["upstream"]:
            visit(up, rid)
        out[rid] = manifest

    visit(run_id, None)
    return list(out.values())


def _parse_manifest(data: bytes, run_id: str) -> Mapping[str, Any]:
    """The manifest of ``run_id``, every path in it checked."""
    what = f"store manifest of run {run_id}"
    try:
        manifest = json.loads(data)
        ok = manifest["id"] == run_id and isinstance(manifest["files"], dict)
        ok = ok and all(isinstance(u, str) and _ID.fullmatch(u) for u in manifest["upstream"])
        code = manifest.get("code")
        ok = ok and (code is None or bool(COMMIT.fullmatch(str(code["commit"]))))
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        msg = f"{what} is not valid"
        raise StoreError(msg)
    assert isinstance(manifest, dict)
    project_dir(manifest["dir"], what=what)
    links = []
    for rel, entry in manifest["files"].items():
        safe_relpath(rel, what=what)
        _check_entry(entry, rel, what=what)
        if "link" in entry:
            link_target(rel, entry["link"], what=what)
            links.append(rel)
    for rel in manifest["files"]:
        if any(rel.startswith(f"{link}/") for link in links):
            msg = f"unsafe path {rel!r} in {what}: it lies below the symlink {rel.split('/')[0]}"
            raise UnsafePathError(msg)
    return manifest


def _check_entry(entry: Any, rel: str, *, what: str) -> None:
    ok = isinstance(entry, dict) and (
        (isinstance(entry.get("size"), int) and isinstance(entry.get("hash"), str))
        or isinstance(entry.get("link"), str)
        or entry.get("dir") is True
    )
    if not ok:
        msg = f"{what}: entry {rel!r} is not a file, link or directory record"
        raise StoreError(msg)


def _plan_pull(
    st: Store, settings: Settings, manifest: Mapping[str, Any], *, link: bool
) -> _PullPlan:
    """What to do with one run; checks its stored run.lock; writes nothing."""
    run_id, rel = str(manifest["id"]), str(manifest["dir"])
    lock = _stored_lock(st, manifest)
    if lock.id != run_id or lock.dir != rel:
        msg = (
            f"stored run.lock of run {run_id} says id {lock.id!r}, dir {lock.dir!r}; "
            f"its manifest says dir {rel!r}"
        )
        raise UnsafePathError(msg)
    _check_lock_dirs(lock.to_dict(), what=f"stored run.lock of run {run_id}")
    target = settings.root / rel
    if not (target.exists() or target.is_symlink()):
        return _PullPlan(manifest, target, "fetch")
    try:
        local_id = load_lock(target / "run.lock").id
    except LockError:
        local_id = None
    if local_id != run_id:
        msg = f"{rel} exists here and is not run {run_id}; move it away to pull the run"
        raise StoreError(msg)
    if target.is_symlink() and link:
        return _PullPlan(manifest, target, "present")
    differing = _differing(target, manifest["files"])
    return _PullPlan(manifest, target, "differs" if differing else "present", tuple(differing))


def _stored_lock(st: Store, manifest: Mapping[str, Any]) -> RunLock:
    run_id = str(manifest["id"])
    if "hash" not in manifest["files"].get("run.lock", {}):
        msg = f"run {run_id} in store {st.url} has no run.lock"
        raise StoreError(msg)
    data = st.read_bytes(_run_key(run_id, "files/run.lock"))
    if (
        data is None
        or f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}" != manifest["files"]["run.lock"]["hash"]
    ):
        msg = f"run.lock of run {run_id} in store {st.url} is missing or does not match its hash"
        raise StoreError(msg)
    try:
        parsed = load_yaml(data)
    except yaml.YAMLError:
        parsed = None
    if not isinstance(parsed, dict):
        msg = f"run.lock of run {run_id} in store {st.url} is not a YAML mapping"
        raise LockError(msg)
    return RunLock.from_dict(parsed, source=f"{st.url}/runs/{run_id}/files/run.lock")


def _check_lock_dirs(lock: Mapping[str, Any], *, what: str) -> None:
    """Every ``dir`` of a run.lock and of its upstream locks, recursively, stays inside."""
    project_dir(lock.get("dir"), what=what)
    for up in _upstream_locks(lock):
        _check_lock_dirs(up, what=what)


def _check_nesting(plans: Sequence[_PullPlan]) -> None:
    """Refuse a run directory inside another one of the same pull (it could be a link)."""
    dirs = {str(p.manifest["dir"]) for p in plans}
    for rel in dirs:
        parts = rel.split("/")
        outer = next((d for i in range(1, len(parts)) if (d := "/".join(parts[:i])) in dirs), None)
        if outer is not None:
            msg = (
                f"unsafe path {rel!r} in store: a run directory inside the run directory {outer!r}"
            )
            raise UnsafePathError(msg)


def _differing(target: Path, entries: Mapping[str, Entry]) -> list[str]:
    """Paths where the local run directory differs from the manifest (extra files too)."""
    local = _scan_dir(target)
    return [
        rel
        for rel in sorted(set(local) | set(entries))
        if _differs(target, rel, entries.get(rel), local.get(rel))
    ]


def _differs(top: Path, rel: str, want: Entry | None, have: Entry | None) -> bool:
    if want is None or have is None or want.get("link") != have.get("link"):
        return True
    if "hash" not in want:
        return False
    return bool(have.get("size") != want["size"] or hash_file(top / rel) != want["hash"])


def _scan_dir(top: Path) -> dict[str, Entry]:
    """Entries of a local directory without hashing (sizes and link targets)."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        base = Path(dirpath)
        prefix = base.relative_to(top).as_posix()
        prefix = "" if prefix == "." else f"{prefix}/"
        if not dirnames and not filenames and prefix:
            out[prefix[:-1]] = {"dir": True}
        for name in [*dirnames, *filenames]:
            path = base / name
            if path.is_symlink():
                out[f"{prefix}{name}"] = {"link": os.readlink(path)}
            elif path.is_file():
                out[f"{prefix}{name}"] = {"size": path.stat().st_size}
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
    return out


def _copy_run(st: Store, plan: _PullPlan, bar: ProgressBar) -> None:
    """Download into a hidden sibling, verify every hash, then rename into place."""
    run_id, entries = plan.id, plan.manifest["files"]
    plan.target.parent.mkdir(parents=True, exist_ok=True)
    for left in plan.target.parent.glob(f".{glob.escape(plan.target.name)}.*.xpkit-pull"):
        shutil.rmtree(left, ignore_errors=True)  # left by a pull that was killed
    tmp = plan.target.with_name(f".{plan.target.name}.{secrets.token_hex(4)}.xpkit-pull")
    files = [k for k, e in entries.items() if "hash" in e]
    bar.grow(sum(entries[k]["size"] for k in files))

    def download(rel: str) -> None:
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        st.get_file(_run_key(run_id, f"files/{rel}"), dest)
        if hash_file(dest) != entries[rel]["hash"]:
            msg = f"{rel} of run {run_id} in store {st.url} does not match its hash; push it again"
            raise StoreError(msg)
        bar.advance(entries[rel]["size"])

    try:
        tmp.mkdir()
        parallel(download, files)
        for rel, entry in entries.items():
            if entry.get("dir"):
                (tmp / rel).mkdir(parents=True, exist_ok=True)
            elif "link" in entry:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(entry["link"], tmp / rel)
        os.rename(tmp, plan.target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _link_run(st: Store, plan: _PullPlan, bar: ProgressBar) -> None:
    """Symlink the run directory to its files in a filesystem store (sizes checked)."""
    files = {k: e for k, e in plan.manifest["files"].items() if "hash" in e}
    _check_sizes(st, plan.id, files)
    source = st.local_path(_run_key(plan.id, "files"))
    assert source is not None
    plan.target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, plan.target, target_is_directory=True)


# --------------------------------------------------------------------------- ls


def _stored_run(run_id: str, data: bytes | None, *, complete: bool) -> StoredRun:
    try:
        m = json.loads(data or b"")
        files = sum(1 for e in m["files"].values() if "hash" in e)
        return StoredRun(
            id=run_id,
            stage=str(m.get("stage")),
            dir=str(m.get("dir")),
            started=str(m.get("started") or ""),
            status=str(m.get("status")),
            bytes=int(m.get("bytes") or 0),
            files=files,
            complete=complete,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return StoredRun(run_id, "?", "?", "", "?", 0, 0, complete=False)


def list_store(store: str | os.PathLike[str] | None = None) -> list[StoredRun]:
    """What a store holds: one record per run, oldest first.

    Example:
        >>> [r.id for r in xp.list_store("/shared/xp-store") if r.complete]  # doctest: +SKIP
    """
    settings = load_settings()
    st = open_store(store, settings)
    runs = []
    for run_id in st.children("runs"):
        data = st.read_bytes(_run_key(run_id, "manifest.json"))
        complete = data is not None and st.read_bytes(_run_key(run_id, "COMPLETE")) == _marker(data)
        runs.append(_stored_run(run_id, data, complete=complete))
    return sorted(runs, key=lambda r: (r.started, r.id))
