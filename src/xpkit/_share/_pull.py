"""Pull a run's lineage from an untrusted store into this project: a working project after.

A store is shared with colleagues, machines and projects, so whatever it says is checked
before anything is written (:func:`_plan`): each run directory must be
``<results>/<stage>/<run name>`` (its run.lock agreeing, upstream run.locks too), every entry a
plain relative path that no other entry lies below, no entry a symlink; inputs go only where
a project keeps data (``_inputs.restorable``), never over a different file unless forced.

Then everything is staged (:class:`_Staging`): run directories downloaded into hidden
siblings and inputs into hidden files next to their place, every hash verified on the way,
all through ``_nofollow`` (no write ever goes through a symlink); then the code bundles are
fetched; only then is each staged item renamed into place and the ``latest`` links set. A
refusal anywhere before that leaves nothing behind: no file, no empty directory, no ref.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import xxhash
import yaml

from .._core._lock import RunLock, load_lock
from .._core._paths import LOCK, RunPaths, latest_link, point_latest
from .._core._progress import ProgressBar
from .._core._settings import Settings, load_settings
from .._core._yaml import load_yaml
from ..errors import (
    AmbiguousRunError,
    LockError,
    RunNotFoundError,
    StoreError,
    UnsafePathError,
)
from ._bundles import COMMIT, CodeReport, check_code, has_git, pull_code
from ._inputs import DATA, CurrentHashes, InputFile, expand, not_ignored, restorable
from ._nofollow import create_file, make_dirs, open_dir, remove_created
from ._storage import Store, copy_hashing, open_store, parallel, results_rel, run_dir, safe_relpath
from ._store import _ID, Entry, digests, marker, run_key, scan_dir, upstream_locks

__all__ = ["PullReport", "pull"]

_PULLING = ".xpkit-pull"  # suffix of what a pull stages next to its place


@dataclass
class PullReport:
    """What a pull did: per run ``copied``, ``linked``, ``present`` or ``differs``; inputs."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    code: CodeReport | None = None
    inputs: dict[str, int] = field(default_factory=dict)  # restored, linked, present, bytes
    skipped_inputs: list[str] = field(default_factory=list)  # "path: reason"
    latest: list[str] = field(default_factory=list)  # the latest links set
    rerun: list[str] = field(default_factory=list)  # how to run each stage brought again
    warnings: list[str] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass(frozen=True)
class _RunPlan:
    manifest: Mapping[str, Any]
    lock: RunLock
    stage: str
    name: str
    action: str  # fetch | present | differs
    differing: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def files(self) -> dict[str, Entry]:
        return {k: e for k, e in self.manifest["files"].items() if "hash" in e}


@dataclass(frozen=True)
class _InputPlan:
    file: InputFile
    action: str  # fetch | link | present
    size: int
    replace: bool = False  # a different file is there (--force)


def pull(
    run: str,
    *,
    store: str | os.PathLike[str] | None = None,
    link: bool = False,
    data: bool = False,
    force: bool = False,
    progress: bool | None = None,
) -> PullReport:
    """Bring a run and its whole lineage back from a store into this project.

    Run directories go to their recorded paths under the results directory (verified
    against the stored hashes), the code snapshot commits into the repository
    (``refs/xpkit/runs/<id>``, and the snapshot branch when it can move forward), and each
    pulled stage's ``latest`` link is set when it has none or names an older run. A run
    already here is left alone, reported when it differs. Everything is checked before
    anything is written; a refusal leaves nothing behind.

    Args:
        run: a unique prefix of the run id.
        store: a directory or an fsspec URL (default: ``[tool.xpkit] store``).
        link: symlink run directories (and inputs) to a filesystem store instead of copying.
        data: also restore the lineage's missing inputs at their recorded paths.
        force: with ``data``, replace an existing input whose content differs.
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        RunNotFoundError: no run (or several) in the store matches ``run``.
        UnsafePathError: a store entry or run.lock would write outside its place.
        StoreError: the run is incomplete or inconsistent in the store, a file fails its
            hash, or an input differs from an existing file (without ``force``).

    Example:
        >>> xp.pull("3fa9", store="/shared/xp-store", data=True)  # doctest: +SKIP
    """
    t0 = time.monotonic()
    settings = load_settings()
    st = open_store(store, settings)
    if link and not st.local:
        msg = f"--link needs a store on a filesystem, not {st.url}; pull without --link to copy"
        raise StoreError(msg)
    report = PullReport()
    runs, inputs = _plan(st, settings, run, link=link, data=data, force=force, report=report)
    commits = {p.id: p.manifest["code"]["commit"] for p in runs if p.manifest.get("code")}
    git = bool(commits) and has_git(settings.root)
    if git:
        check_code(settings.root, st, {p.id: p.manifest["code"] for p in runs if p.id in commits})
    elif commits:
        report.warnings.append(f"{settings.root} is not a git repository: code not pulled")
    with ProgressBar("pull", total=0, enabled=progress, in_bytes=True) as bar:
        staging = _Staging(st, settings, bar)
        try:
            for plan in runs:
                if plan.action == "fetch":
                    staging.run(plan, link=link)
            staging.inputs(inputs)
            if git:
                report.code = pull_code(settings.root, st, commits, branch=settings.branch)
            staging.commit()
        except BaseException:
            staging.rollback()
            raise
    _finish(settings, runs, inputs, report, link=link, data=data)
    report.duration_s = round(time.monotonic() - t0, 3)
    return report


# --------------------------------------------------------------------------- plan


def _plan(
    st: Store,
    settings: Settings,
    run: str,
    *,
    link: bool,
    data: bool,
    force: bool,
    report: PullReport,
) -> tuple[list[_RunPlan], list[_InputPlan]]:
    """Check everything the store says and decide what to do; writes nothing."""
    results = results_rel(settings)
    manifests = _stored_lineage(st, match_run(st, run))
    runs = [_plan_run(st, settings, m, results=results) for m in manifests]
    inputs: list[_InputPlan] = []
    if data:
        files = _lineage_inputs(runs, report)
        inputs = _plan_inputs(
            st, settings, files, results=results, link=link, force=force, report=report
        )
    return runs, inputs


def match_run(st: Store, prefix: str) -> str:
    """The stored run whose id is ``prefix`` or the one id starting with it.

    Raises:
        RunNotFoundError: no stored run matches.
        AmbiguousRunError: several do.
    """
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
    """The manifests of a stored run and of its whole lineage, upstream runs first.

    Iterative: a store can chain any number of runs, or make a cycle (it ends where it began).
    """
    out: dict[str, Mapping[str, Any]] = {}
    seen: set[str] = set()
    stack: list[tuple[str, str | None, Mapping[str, Any] | None]] = [(run_id, None, None)]
    while stack:
        rid, needed_by, done = stack.pop()
        if done is not None:
            out[rid] = done  # its upstream runs are in already
            continue
        if rid in seen:
            continue
        seen.add(rid)
        manifest = _stored_manifest(st, rid, needed_by)
        stack.append((rid, needed_by, manifest))
        stack += [(up, rid, None) for up in reversed(manifest["upstream"])]
    return list(out.values())


def _stored_manifest(st: Store, rid: str, needed_by: str | None) -> Mapping[str, Any]:
    data = st.read_bytes(run_key(rid, "manifest.json"))
    if data is None or st.read_bytes(run_key(rid, "COMPLETE")) != marker(data):
        by = f" (upstream of {needed_by})" if needed_by else ""
        msg = f"run {rid}{by} is not complete in store {st.url}; push it again"
        raise StoreError(msg)
    return _parse_manifest(data, rid)


def _parse_manifest(data: bytes, run_id: str) -> Mapping[str, Any]:
    """The manifest of ``run_id``, every entry in it checked."""
    what = f"store manifest of run {run_id}"
    try:
        manifest = json.loads(data)
        ok = manifest["id"] == run_id and isinstance(manifest["files"], dict)
        ok = ok and all(isinstance(u, str) and _ID.fullmatch(u) for u in manifest["upstream"])
        code = manifest.get("code")
        ok = ok and (code is None or bool(COMMIT.fullmatch(str(code["commit"]))))
    except (ValueError, KeyError, TypeError, RecursionError):
        ok = False
    if not ok:
        msg = f"{what} is not valid"
        raise StoreError(msg)
    assert isinstance(manifest, dict)
    files = manifest["files"]
    for rel, entry in files.items():
        safe_relpath(rel, what=what)
        _check_entry(entry, rel, what=what)
        parts = rel.split("/")
        above = next((p for i in range(1, len(parts)) if (p := "/".join(parts[:i])) in files), None)
        if above is not None and "dir" not in files[above]:
            msg = f"{what}: entry {rel!r} lies below the file {above!r}"
            raise StoreError(msg)
    return manifest


def _check_entry(entry: Any, rel: str, *, what: str) -> None:
    if isinstance(entry, dict) and "link" in entry:
        msg = f"unsafe entry {rel!r} in {what}: a symlink; a pull never makes a link a store names"
        raise UnsafePathError(msg)
    ok = isinstance(entry, dict) and (
        (isinstance(entry.get("size"), int) and isinstance(entry.get("hash"), str))
        or entry.get("dir") is True
    )
    if not ok:
        msg = f"{what}: entry {rel!r} is not a file or directory record"
        raise StoreError(msg)


def _plan_run(
    st: Store, settings: Settings, manifest: Mapping[str, Any], *, results: str
) -> _RunPlan:
    """What to do with one run; checks its stored run.lock; writes nothing."""
    run_id, rel = str(manifest["id"]), manifest["dir"]
    what = f"store manifest of run {run_id}"
    stage, name = run_dir(rel, stage=manifest.get("stage"), results=results, what=what)
    lock = _stored_lock(st, manifest)
    if (lock.id, lock.dir, lock.stage) != (run_id, rel, stage):
        msg = (
            f"stored run.lock of run {run_id} says id {lock.id!r}, dir {lock.dir!r}, stage "
            f"{lock.stage!r}; its manifest says dir {rel!r}, stage {stage!r}"
        )
        raise UnsafePathError(msg)
    _check_lock_dirs(lock.to_dict(), results=results, what=f"stored run.lock of run {run_id}")
    target = _existing(settings, stage, name)
    if target is None:
        return _RunPlan(manifest, lock, stage, name, "fetch")
    try:
        local_id = load_lock(RunPaths(target).lock).id
    except LockError:
        local_id = None
    if local_id != run_id:
        msg = f"{rel} exists here and is not run {run_id}; move it away to pull the run"
        raise StoreError(msg)
    if target.is_symlink():
        return _RunPlan(manifest, lock, stage, name, "present")  # linked by an earlier pull
    differing = _differing(target, manifest["files"], what=rel)
    action = "differs" if differing else "present"
    return _RunPlan(manifest, lock, stage, name, action, tuple(differing))


def _existing(settings: Settings, stage: str, name: str) -> Path | None:
    """The run directory if it exists here (a link only as a whole run, from --link)."""
    with contextlib.suppress(FileNotFoundError), open_dir(settings.results_path, [stage]) as fd:
        try:
            st_mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return None
        path = settings.results_path / stage / name
        if stat.S_ISDIR(st_mode) or stat.S_ISLNK(st_mode):
            return path
        msg = f"{path} exists here and is not a run directory; move it away to pull the run"
        raise StoreError(msg)
    return None


def _stored_lock(st: Store, manifest: Mapping[str, Any]) -> RunLock:
    run_id = str(manifest["id"])
    if "hash" not in manifest["files"].get(LOCK, {}):
        msg = f"run {run_id} in store {st.url} has no run.lock"
        raise StoreError(msg)
    data = st.read_bytes(run_key(run_id, "files/run.lock"))
    if (
        data is None
        or f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}" != manifest["files"][LOCK]["hash"]
    ):
        msg = f"run.lock of run {run_id} in store {st.url} is missing or does not match its hash"
        raise StoreError(msg)
    try:
        parsed = load_yaml(data)
    except (yaml.YAMLError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        msg = f"run.lock of run {run_id} in store {st.url} is not a YAML mapping"
        raise LockError(msg)
    return RunLock.from_dict(parsed, source=f"{st.url}/runs/{run_id}/files/run.lock")


def _check_lock_dirs(lock: Mapping[str, Any], *, results: str, what: str) -> None:
    """Every ``dir`` of a run.lock and of its upstream locks, at any depth, is a run's place."""
    todo, seen = [lock], set()  # YAML aliases can make the nesting a cycle
    while todo:
        one = todo.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        run_dir(one.get("dir"), stage=one.get("stage"), results=results, what=what)
        todo += upstream_locks(one)


def _differing(target: Path, entries: Mapping[str, Entry], *, what: str) -> list[str]:
    """Paths where the local run directory differs from the manifest (extra files too)."""
    try:
        local = scan_dir(target, what=what)
    except UnsafePathError:
        return ["(a symlink pointing out)"]
    sized = [
        r for r, e in entries.items() if "hash" in e and local.get(r, {}).get("size") == e["size"]
    ]
    hashes = digests(target, sized)  # through the hash cache: unchanged files are not read

    def same(rel: str) -> bool:
        want, have = entries.get(rel, {}), local.get(rel, {})
        return (want.get("dir") and have.get("dir")) or hashes.get(rel, "") == want.get("hash")

    return [rel for rel in sorted(set(local) | set(entries)) if not same(rel)]


def _lineage_inputs(runs: Sequence[_RunPlan], report: PullReport) -> list[InputFile]:
    """The input files of the lineage; one version per path (the nearest run's)."""
    by_path: dict[str, InputFile] = {}
    for run in runs:
        inputs = run.manifest.get("inputs")
        if inputs is None:
            report.warnings.append(
                f"run {run.id} was pushed without its inputs list; push it again"
            )
            continue
        _check_inputs(inputs, run.lock.data or {}, run.id)
        for f in expand(inputs, run.id):
            old = by_path.get(f.path)
            if old is not None and old.hash != f.hash:
                report.skipped_inputs.append(
                    f"{f.path}: run {old.run} read another version ({old.hash}); "
                    f"restoring the one of run {f.run}"
                )
            by_path[f.path] = f
    return list(by_path.values())


def _check_inputs(inputs: Any, data: Mapping[str, Any], run_id: str) -> None:
    """The manifest's inputs are the run.lock's ``data``: same names, paths and hashes."""
    ok = isinstance(inputs, Mapping) and all(
        isinstance(e, Mapping)
        and isinstance(data.get(name), Mapping)
        and (e.get("path"), e.get("hash")) == (data[name].get("path"), data[name].get("hash"))
        for name, e in inputs.items()
    )
    if not ok:
        msg = f"store manifest of run {run_id}: its inputs are not the data its run.lock recorded"
        raise StoreError(msg)


def _plan_inputs(
    st: Store,
    settings: Settings,
    files: Sequence[InputFile],
    *,
    results: str,
    link: bool,
    force: bool,
    report: PullReport,
) -> list[_InputPlan]:
    objects, strays = st.sizes(DATA), set(st.strays(DATA))
    wanted = []
    for f in files:
        reason = restorable(f.path, results=results)
        if reason is None and f.key[len(DATA) + 1 :] in strays:
            msg = f"{st.url}/{f.key} is a symlink: refusing to go through it (input {f.path})"
            raise UnsafePathError(msg)
        if reason is None and f.key[len(DATA) + 1 :] not in objects:
            reason = "not in the store (push it with --data)"
        if reason is not None:
            report.skipped_inputs.append(f"{f.path}: {reason}")
        else:
            wanted.append(f)
    visible = not_ignored(settings.root, [f.path for f in wanted])
    current = CurrentHashes(settings.root)
    plans = []
    for f in wanted:
        if f.path in visible:
            report.skipped_inputs.append(f"{f.path}: not ignored by git (part of the code)")
            continue
        action = _input_action(settings, current, f, link=link, force=force)
        there = os.path.lexists(settings.root / f.path)
        plans.append(_InputPlan(f, action, objects[f.key[len(DATA) + 1 :]], replace=there))
    return plans


def _input_action(
    settings: Settings, current: CurrentHashes, f: InputFile, *, link: bool, force: bool
) -> str:
    """fetch, link or present; refuses a different existing file (unless ``force``)."""
    local = settings.root / f.path
    if local.is_file() and current.of(f) == f.hash:
        return "present"  # read through the user's links if need be: nothing to write
    _check_parents(settings.root, f.path)
    if not (local.exists() or local.is_symlink()):
        return "link" if link else "fetch"
    if not force:
        msg = (
            f"input {f.path} exists here and differs from the version run {f.run} read "
            f"({f.hash}); pass --force to replace it"
        )
        raise StoreError(msg)
    if local.is_dir() and not local.is_symlink():
        msg = f"input {f.path} is a directory here; move it away to restore the file"
        raise StoreError(msg)
    return "link" if link else "fetch"


def _check_parents(root: Path, rel: str) -> None:
    """Refuse an input whose directories here include a symlink or a file."""
    parts = rel.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        path = root.joinpath(*parts[:i])
        if path.is_symlink():
            msg = f"input {rel}: {path} is a symlink: refusing to write through it"
            raise UnsafePathError(msg)
        if not path.exists():
            return
        if not path.is_dir():
            msg = f"input {rel}: {path} is not a directory"
            raise StoreError(msg)


# --------------------------------------------------------------------------- staging


class _Staging:
    """Everything a pull writes, staged first; renamed into place only when all is verified."""

    def __init__(self, st: Store, settings: Settings, bar: ProgressBar) -> None:
        self.st, self.settings, self.bar = st, settings, bar
        self.created: list[Path] = []  # directories made, for a rollback
        self.staged: list[Path] = []  # hidden staged copies, for a rollback
        self.moves: list[Callable[[], None]] = []  # what commit() does, in order

    def run(self, plan: _RunPlan, *, link: bool) -> None:
        top = self.settings.results_path
        if not top.is_dir():  # the results directory itself may be a link the user made
            make_dirs(self.settings.root, results_rel(self.settings), self.created)
        make_dirs(top, [plan.stage], self.created)
        if link:
            source = self._linked_files(plan)
            self.moves.append(lambda: self._place_link(plan, source))
            return
        tmp_name = f".{plan.name}.{secrets.token_hex(4)}{_PULLING}"
        make_dirs(top, [plan.stage, tmp_name], self.staged)
        tmp = top / plan.stage / tmp_name
        self.bar.grow(sum(e["size"] for e in plan.files.values()))
        for rel, entry in plan.manifest["files"].items():
            if entry.get("dir"):
                make_dirs(tmp, rel, [])
        parallel(lambda rel: self._download(plan, tmp, rel), list(plan.files))
        self.moves.append(lambda: self._place_dir(plan, tmp_name))

    def _download(self, plan: _RunPlan, tmp: Path, rel: str) -> None:
        entry = plan.files[rel]
        digest = self._copy(
            run_key(plan.id, f"files/{rel}"), tmp, rel, what=f"{rel} of run {plan.id}"
        )
        if digest != entry["hash"]:
            msg = (
                f"{rel} of run {plan.id} in store {self.st.url} does not match its hash; "
                "push it again"
            )
            raise StoreError(msg)
        self.bar.advance(entry["size"])

    def _copy(self, key: str, top: Path, rel: str, *, what: str) -> str:
        """Download ``key`` to the new file ``top/rel``, hashing it on the way."""
        try:
            with self.st.open_read(key) as src, create_file(top, rel, created=[]) as dst:
                return copy_hashing(src, dst)
        except FileNotFoundError:
            msg = f"{what} is missing from store {self.st.url}; push it again"
            raise StoreError(msg) from None

    def _linked_files(self, plan: _RunPlan) -> Path:
        """The run's files in the store, checked: only what the manifest lists, no links."""
        key = run_key(plan.id, "files")
        source = self.st.local_dir(key)
        assert source is not None
        found = {rel: (kind, size) for rel, kind, size in self.st.entries(key)}
        for rel, (kind, size) in found.items():
            if kind == "link":
                msg = f"{rel} in the store's copy of run {plan.id} is a symlink; --link refuses it"
                raise UnsafePathError(msg)
            if kind != "dir" and (kind, size) != ("file", plan.files.get(rel, {}).get("size")):
                msg = f"{rel} in the store's copy of run {plan.id} is not what its manifest lists"
                raise StoreError(msg)
        missing = [k for k in plan.files if k not in found]
        if missing:
            msg = (
                f"{missing[0]} of run {plan.id} is missing from store {self.st.url}; push it again"
            )
            raise StoreError(msg)
        return source

    def inputs(self, plans: Sequence[_InputPlan]) -> None:
        self.bar.grow(sum(p.size for p in plans if p.action == "fetch"))
        for p in plans:
            if p.action == "link":
                self._stage_input_link(p)
        parallel(self._stage_input, [p for p in plans if p.action == "fetch"])

    def _stage_input(self, p: _InputPlan) -> None:
        root = self.settings.root
        *parent, name = p.file.path.split("/")
        make_dirs(root, parent, self.created)
        tmp_name = f".{name}.{secrets.token_hex(4)}{_PULLING}"
        tmp_rel = "/".join([*parent, tmp_name])
        self.staged.append(root / tmp_rel)
        digest = self._copy(p.file.key, root, tmp_rel, what=f"input {p.file.path}")
        if digest != p.file.hash:
            msg = (
                f"input {p.file.path} in store {self.st.url} does not match its hash {p.file.hash}"
            )
            raise StoreError(msg)
        self.bar.advance(p.size)
        self.moves.append(lambda: self._place_input(parent, tmp_name, name, p))

    def _stage_input_link(self, p: _InputPlan) -> None:
        *folder, name = p.file.key.split("/")
        source = self.st.local_dir("/".join(folder))
        assert source is not None
        h = xxhash.xxh3_128()
        with self.st.open_read(p.file.key) as f:  # a regular file, reached through no link
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if f"xxh3_128:{h.hexdigest()}" != p.file.hash:
            msg = (
                f"input {p.file.path} in store {self.st.url} does not match its hash {p.file.hash}"
            )
            raise StoreError(msg)
        *parent, local_name = p.file.path.split("/")
        make_dirs(self.settings.root, parent, self.created)
        self.moves.append(lambda: self._place_input_link(parent, local_name, source / name, p))

    # ------------------------------------------------------------------ commit / rollback

    def commit(self) -> None:
        for move in self.moves:
            move()

    def rollback(self) -> None:
        for path in reversed(self.staged):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        remove_created(self.created)

    def _place_dir(self, plan: _RunPlan, tmp_name: str) -> None:
        with open_dir(self.settings.results_path, [plan.stage]) as fd:
            _absent(fd, plan.name, plan.manifest["dir"])
            os.rename(tmp_name, plan.name, src_dir_fd=fd, dst_dir_fd=fd)
        self.staged.remove(self.settings.results_path / plan.stage / tmp_name)

    def _place_link(self, plan: _RunPlan, source: Path) -> None:
        with open_dir(self.settings.results_path, [plan.stage]) as fd:
            _absent(fd, plan.name, plan.manifest["dir"])
            os.symlink(source, plan.name, target_is_directory=True, dir_fd=fd)

    def _place_input(self, parent: list[str], tmp_name: str, name: str, p: _InputPlan) -> None:
        with open_dir(self.settings.root, parent) as fd:
            if not p.replace:
                _absent(fd, name, p.file.path)
            os.replace(tmp_name, name, src_dir_fd=fd, dst_dir_fd=fd)
        self.staged.remove(self.settings.root.joinpath(*parent, tmp_name))

    def _place_input_link(self, parent: list[str], name: str, source: Path, p: _InputPlan) -> None:
        tmp_name = f".{name}.{secrets.token_hex(4)}{_PULLING}"
        with open_dir(self.settings.root, parent) as fd:
            if not p.replace:
                _absent(fd, name, p.file.path)
            os.symlink(source, tmp_name, dir_fd=fd)
            os.replace(tmp_name, name, src_dir_fd=fd, dst_dir_fd=fd)


def _absent(fd: int, name: str, shown: str) -> None:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    msg = f"{shown} appeared here while pulling; pull again"
    raise StoreError(msg)


# --------------------------------------------------------------------------- finish


def _finish(
    settings: Settings,
    runs: Sequence[_RunPlan],
    inputs: Sequence[_InputPlan],
    report: PullReport,
    *,
    link: bool,
    data: bool,
) -> None:
    fetched = "linked" if link else "copied"
    for plan in runs:
        state = fetched if plan.action == "fetch" else plan.action
        report.runs.append(
            {
                "id": plan.id,
                "stage": plan.stage,
                "dir": plan.manifest["dir"],
                "state": state,
                "differing": list(plan.differing),
            }
        )
    if report.code is not None and report.code.missing:
        report.warnings.append(f"code commits not in the store: {', '.join(report.code.missing)}")
    report.latest = _set_latest(settings, runs, report)
    report.rerun = [_rerun_hint(plan) for plan in runs if plan.action == "fetch"]
    report.inputs = _counts(inputs, link=link) if data else {}


def _counts(inputs: Sequence[_InputPlan], *, link: bool) -> dict[str, int]:
    out = {"restored": 0, "linked": 0, "present": 0, "bytes": 0}
    for p in inputs:
        if p.action == "present":
            out["present"] += 1
        else:
            out["linked" if p.action == "link" else "restored"] += 1
            out["bytes"] += p.size if p.action == "fetch" else 0
    return out


def _set_latest(settings: Settings, runs: Sequence[_RunPlan], report: PullReport) -> list[str]:
    """Point each pulled stage's ``latest`` at its newest pulled run, unless it names a newer."""
    newest: dict[str, _RunPlan] = {}
    for plan in runs:
        if plan.stage not in newest or _when(plan.lock.started) > _when(
            newest[plan.stage].lock.started
        ):
            newest[plan.stage] = plan
    done = []
    for stage, plan in newest.items():
        stage_dir = settings.results_path / stage
        current = _latest_started(stage_dir)
        if current is not None and current >= _when(plan.lock.started):
            continue
        try:
            point_latest(stage_dir / plan.name)
        except OSError as e:
            report.warnings.append(f"{latest_link(stage_dir)} not set: {e.strerror or e}")
            continue
        done.append(f"{settings.relative(latest_link(stage_dir))} -> {plan.name}")
    return done


def _latest_started(stage_dir: Path) -> float | None:
    """When the run ``latest`` names started (None: no link, or it names nothing readable)."""
    link = latest_link(stage_dir)
    if not link.is_symlink() and not link.exists():
        return None
    try:
        return _when(load_lock(RunPaths(link).lock).started)
    except LockError:
        return None


def _when(started: str) -> float:
    """A run.lock's ``started`` as a timestamp (unreadable: the oldest)."""
    try:
        return datetime.fromisoformat(started).timestamp()
    except (TypeError, ValueError):
        return float("-inf")


def _rerun_hint(plan: _RunPlan) -> str:
    """How to run a pulled run again: exactly (``xp rerun``), or its command on today's code."""
    argv = list(plan.lock.argv)
    short = plan.id[:8]
    if argv and argv[0].endswith(".py") and not os.path.isabs(argv[0]):
        today = f"python {shlex.join(argv)}"
        return f"{plan.stage}: xp rerun {short} --verify   (today's code: {today})"
    return f"{plan.stage}: xp rerun {short} --verify"
