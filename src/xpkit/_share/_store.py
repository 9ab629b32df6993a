"""Push a run's whole lineage (run directories, code, inputs) to a store; list a store.

Store layout (a directory, or any fsspec URL)::

    runs/<id>/manifest.json    id, stage, dir, status, dates, upstream ids, code commit and
                               bundle, every file of the run directory (relpath → {size,
                               hash} | {dir}), and its inputs (data key → path, hash, files)
    runs/<id>/files/<relpath>  the run directory's files, as they are
    runs/<id>/COMPLETE         the manifest's hash, written last: the run is whole
    code/<name>.json           a git bundle's refs, prerequisites and file (see _bundles.py)
    data/<hex[:2]>/<hex>       input files (``push --data``), named by their xxh3-128 hash
    tmp/                       writes in flight on a filesystem store, renamed when whole

Listing ``runs/`` is the index. A push keeps one invariant at every moment: a file present
under ``files/`` has the content the current ``manifest.json`` names. So it first removes
COMPLETE and every stored file whose entry changes, then writes the new manifest, then uploads
what is missing (each upload hashed as it is sent: a file that changed meanwhile is refused),
checks the listing, and writes COMPLETE. A push killed anywhere is finished by the next one,
which sends only what is missing; nothing looks complete before it is. Concurrent pushers of
the same runs write the same objects: none deletes what another is writing.

A symlink in a run directory is stored as the file it points to (it must stay inside the
run): a store holds no links, and a pull never makes one on a store's say-so. The pull is in
``_pull.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from .._catalog._run import Run
from .._catalog._runs import resolve_run, resolve_runs
from .._core._lock import load_lock
from .._core._paths import LOCK, RunPaths, is_write_temp
from .._core._progress import ProgressBar
from .._core._settings import Settings, load_settings
from ..errors import DataError, LockError, RunNotFoundError, StoreError, UnsafePathError
from ._bundles import push_code
from ._inputs import DATA, PushedInputs, expand, push_inputs, recorded_inputs
from ._storage import Store, open_store, parallel, results_rel, run_dir, safe_relpath

__all__ = [
    "PushReport",
    "StoredRun",
    "digests",
    "hash_file",
    "list_store",
    "marker",
    "push",
    "run_key",
    "scan_dir",
]

FORMAT = 1
_CHUNK_BYTES = 1 << 20
_TMP_AGE_S = 24 * 3600  # a temporary object this old was left by a killed writer

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # run ids as run.lock may hold them

Entry = dict[str, Any]  # {"size", "hash"} | {"dir": True}


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
    inputs: str = "none"  # of its whole lineage: "stored", "missing N", "none", "unknown"
    input_bytes: int = 0


@dataclass
class PushReport:
    """What a push sent: per run, files and bytes sent and already stored."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    bundles: list[str] = field(default_factory=list)
    inputs: PushedInputs | None = None
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


def run_key(run_id: str, name: str) -> str:
    """The store key of ``name`` in the store entry of run ``run_id``."""
    return f"runs/{safe_relpath(run_id, what='a run id')}/{name}"


def hash_file(path: Path) -> str:
    """``xxh3_128:<hex>`` of a file's bytes, streamed."""
    h = xxhash.xxh3_128()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return f"xxh3_128:{h.hexdigest()}"


def marker(manifest: bytes) -> bytes:
    """The COMPLETE marker of a manifest: its hash."""
    return f"xxh3_128:{xxhash.xxh3_128_hexdigest(manifest)}\n".encode()


# --------------------------------------------------------------------------- push


def push(
    runs: Iterable[str | os.PathLike[str] | Run],
    *,
    store: str | os.PathLike[str] | None = None,
    data: bool = False,
    git_remote: str | None = None,
    progress: bool | None = None,
) -> PushReport:
    """Copy runs and their whole lineage (run directories and code commits) to a store.

    Args:
        runs: run directories, ``Run`` objects, unique run id prefixes, or directories of
            runs (a stage's: every run below it).
        store: a directory or an fsspec URL (default: ``[tool.xpkit] store``).
        data: also push the input files the lineage's run.locks recorded (``data``), each
            as the version its run read; a file changed since is reported, not pushed.
        git_remote: also push each snapshot commit as ``refs/xpkit/runs/<id>`` to this remote.
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        StoreError: no store, or a run of the lineage is nowhere to be found.
        UnsafePathError: a run directory is not ``<results>/<stage>/<run name>``, or has a
            symlink pointing out of it.

    Example:
        >>> xp.push(["results/train/latest"], store="s3://bucket/xp", data=True)  # doctest: +SKIP
    """
    t0 = time.monotonic()
    settings = load_settings()
    st = open_store(store, settings)
    lineage = _lineage(resolve_runs(runs, settings=settings), settings, st)
    scans = {r.id: _scan(r) for r in lineage if r.path is not None}
    commits = {r.id: r.commit for r in lineage if r.path is not None and r.commit is not None}
    st.sweep_tmp(older_than_s=_TMP_AGE_S)
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
        if data:
            files = [f for run in lineage for f in _inputs_of(st, run)]
            report.inputs = push_inputs(st, settings, files, bar=bar)
    report.duration_s = round(time.monotonic() - t0, 3)
    return report


def _inputs_of(st: Store, run: _LocalRun) -> list[Any]:
    """The input files of a run of the lineage (from the store for a run only there)."""
    if run.path is not None:
        return expand(recorded_inputs(run.lock, run.path), run.id)
    data = st.read_bytes(run_key(run.id, "manifest.json"))
    with contextlib.suppress(ValueError, TypeError, KeyError, RecursionError, StoreError):
        return expand(json.loads(data or b"")["inputs"], run.id)
    return []


def _row(run: _LocalRun, state: str, **counts: int) -> dict[str, Any]:
    return {"id": run.id, "stage": run.lock.get("stage"), "dir": run.dir, "state": state, **counts}


def _lineage(roots: Sequence[Run], settings: Settings, st: Store) -> list[_LocalRun]:
    """Every run of the lineage of ``roots``, each once, upstream runs first."""
    out: dict[str, _LocalRun] = {}
    results = results_rel(settings)

    def visit(lock: Mapping[str, Any], path: Path | None) -> None:
        run_id = str(lock["id"])
        if run_id in out:
            return
        rel = lock["dir"]
        run_dir(rel, stage=lock.get("stage"), results=results, what=f"run.lock of run {run_id}")
        ups = upstream_locks(lock)
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


def upstream_locks(lock: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The run.locks of a run's upstream runs, as its own run.lock holds them."""
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
        if load_lock(RunPaths(path).lock).id == run_id:
            return path
    try:
        run = resolve_run(run_id, settings=settings)
    except RunNotFoundError:
        return None
    return run.dir if run.id == run_id else None


def _complete(st: Store, run_id: str) -> bool:
    manifest = st.read_bytes(run_key(run_id, "manifest.json"))
    return manifest is not None and st.read_bytes(run_key(run_id, "COMPLETE")) == marker(manifest)


def _scan(run: _LocalRun) -> dict[str, Entry]:
    """Every entry of a run directory: files hashed, links resolved to files, empty dirs kept."""
    assert run.path is not None
    top = run.path.resolve()
    what = f"run directory {run.dir}"
    entries = scan_dir(top, what=what)
    for rel in entries:
        safe_relpath(rel, what=what)
    if LOCK not in entries:
        msg = f"{what} has no run.lock"
        raise StoreError(msg)
    files = [rel for rel, e in entries.items() if "size" in e]
    hashes = digests(top, files)
    for rel in files:
        entries[rel]["hash"] = hashes[rel]
    return dict(sorted(entries.items()))


def digests(top: Path, files: Sequence[str]) -> Mapping[str, str]:
    """File hashes through the shared hash cache (unchanged files are not read again).

    The cached walk follows links as the scan does: a link's relpath gets its file's hash.
    """
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
        "inputs": recorded_inputs(lock, run.path) if run.path is not None else {},
        "bytes": sum(e.get("size", 0) for e in entries.values()),
        "files": entries,
    }
    return json.dumps(data, indent=1, sort_keys=False).encode()


def _send(
    st: Store, run: _LocalRun, manifest: bytes, entries: Mapping[str, Entry], bar: ProgressBar
) -> dict[str, Any]:
    """Make ``runs/<id>`` hold ``entries`` under ``manifest``; COMPLETE last."""
    assert run.path is not None
    marker_key, manifest_key = run_key(run.id, "COMPLETE"), run_key(run.id, "manifest.json")
    files = {k: e for k, e in entries.items() if "hash" in e}
    old = st.read_bytes(manifest_key)
    if old == manifest and st.read_bytes(marker_key) == marker(manifest):
        return _row(run, "unchanged", files=len(files), sent_files=0, sent_bytes=0)
    if _linked_from(st, run.id) == run.path.resolve():
        # the run dir is a --link into this very store: its files are the stored ones
        msg = (
            f"run {run.id} ({run.dir}) is linked from this store and differs from its manifest; "
            "pull a copy (without --link) to change a run"
        )
        raise StoreError(msg)
    old_files = _manifest_files(old)
    files_prefix = run_key(run.id, "files")
    st.remove([marker_key])
    present = st.sizes(files_prefix)
    stale = [k for k in present if k not in files or old_files.get(k) != files[k]]
    st.remove([f"{files_prefix}/{k}" for k in [*stale, *st.strays(files_prefix)]])
    st.write_bytes(manifest_key, manifest)
    stale_set = set(stale)
    kept = {k: n for k, n in present.items() if k not in stale_set}
    todo = [k for k, e in files.items() if kept.get(k) != e["size"]]
    bar.grow(sum(files[k]["size"] for k in todo))

    top = run.path

    def upload(rel: str) -> None:
        want = files[rel]["hash"]
        if st.put_file(top / rel, f"{files_prefix}/{rel}", expect=want) != want:
            msg = f"{run.dir}/{rel} changed while it was pushed; push again"
            raise StoreError(msg)
        bar.advance(files[rel]["size"])

    parallel(upload, todo)
    _check_sizes(st, run.id, files)
    st.write_bytes(marker_key, marker(manifest))
    sent = sum(files[k]["size"] for k in todo)
    return _row(run, "sent", files=len(files), sent_files=len(todo), sent_bytes=sent)


def _linked_from(st: Store, run_id: str) -> Path | None:
    """The real path of a run's files in a filesystem store (None: remote, or not there)."""
    try:
        return st.local_dir(run_key(run_id, "files"))
    except (OSError, StoreError):
        return None


def _manifest_files(data: bytes | None) -> dict[str, Entry]:
    try:
        files = json.loads(data or b"")["files"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return {}
    return files if isinstance(files, dict) else {}


def _check_sizes(st: Store, run_id: str, files: Mapping[str, Entry]) -> None:
    stored = st.sizes(run_key(run_id, "files"))
    wrong = [k for k, e in files.items() if stored.get(k) != e["size"]]
    if wrong:
        msg = (
            f"run {run_id} in store {st.url}: {len(wrong)} files missing or truncated ({wrong[0]})"
        )
        raise StoreError(msg)


def scan_dir(top: Path, *, what: str) -> dict[str, Entry]:
    """Entries of a local run directory without hashing: file sizes, empty directories.

    A symlink counts as the file it points to, which must lie inside ``top``. The temporary
    file of an atomic write left by a killed writer is no part of the run: never pushed.

    Raises:
        UnsafePathError: a symlink points out of ``top``, to a directory, or nowhere.
    """
    out: dict[str, Entry] = {}
    real_top = top.resolve()
    for dirpath, dirnames, filenames in os.walk(top):
        base = Path(dirpath)
        prefix = base.relative_to(top).as_posix()
        prefix = "" if prefix == "." else f"{prefix}/"
        if not dirnames and not filenames and prefix:
            out[prefix[:-1]] = {"dir": True}
        for name in [*dirnames, *(f for f in filenames if not is_write_temp(f))]:
            path = base / name
            if path.is_symlink():
                _check_link(path, real_top, f"{prefix}{name}", what=what)
            if path.is_file():
                out[f"{prefix}{name}"] = {"size": path.stat().st_size}
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
    return out


def _check_link(path: Path, top: Path, rel: str, *, what: str) -> None:
    target = path.resolve()
    if top in target.parents and target.is_file():
        return
    msg = (
        f"unsafe symlink {rel} -> {os.readlink(path)} in {what}: only links to a file inside "
        "the run directory can be shared (it is stored as that file)"
    )
    raise UnsafePathError(msg)


# --------------------------------------------------------------------------- ls


def _parse_stored(data: bytes | None) -> Mapping[str, Any] | None:
    try:
        m = json.loads(data or b"")
    except (ValueError, RecursionError):  # a store's junk: too deep to parse
        return None
    return m if isinstance(m, dict) and isinstance(m.get("files"), dict) else None


def _stored_run(run_id: str, m: Mapping[str, Any] | None, *, complete: bool) -> StoredRun:
    if m is None:
        return StoredRun(run_id, "?", "?", "", "?", 0, 0, complete=False, inputs="unknown")
    try:
        return StoredRun(
            id=run_id,
            stage=str(m.get("stage")),
            dir=str(m.get("dir")),
            started=str(m.get("started") or ""),
            status=str(m.get("status")),
            bytes=int(m.get("bytes") or 0),
            files=sum(1 for e in m["files"].values() if isinstance(e, dict) and "hash" in e),
            complete=complete,
        )
    except (ValueError, TypeError):
        return StoredRun(run_id, "?", "?", "", "?", 0, 0, complete=False, inputs="unknown")


def _inputs_state(
    run_id: str, manifests: Mapping[str, Mapping[str, Any] | None], objects: Mapping[str, int]
) -> tuple[str, int]:
    """Whether the inputs of a stored run's lineage are in the store, and their recorded size.

    ``stored``, ``missing N`` (files), ``none`` (no inputs), ``unknown`` (a run of the lineage
    was pushed by an older xpkit, or is not in the store), ``invalid``.
    """
    files: dict[str, Any] = {}
    sizes: dict[str, int] = {}  # data hash -> bytes: the same input read twice counts once
    todo, seen = [run_id], set()
    while todo:
        rid = todo.pop()
        m = manifests.get(rid)
        if rid in seen:
            continue
        seen.add(rid)
        if m is None or not isinstance(m.get("inputs"), dict):
            return "unknown", 0
        try:
            files.update((f.hash, f) for f in expand(m["inputs"], rid))
            sizes.update((e["hash"], int(e.get("bytes") or 0)) for e in m["inputs"].values())
        except (StoreError, UnsafePathError, TypeError, ValueError, AttributeError):
            return "invalid", 0
        todo += [u for u in m.get("upstream") or () if isinstance(u, str)]
    if not files:
        return "none", 0
    missing = [f for f in files.values() if f.key[len(DATA) + 1 :] not in objects]
    return (f"missing {len(missing)}" if missing else "stored"), sum(sizes.values())


def list_store(store: str | os.PathLike[str] | None = None) -> list[StoredRun]:
    """What a store holds: one record per run, oldest first.

    ``inputs`` tells whether the input files of the run's whole lineage are in the store
    (``push --data``); ``input_bytes`` is their size as the runs recorded it.

    Example:
        >>> [r.id for r in xp.list_store("/shared/xp-store") if r.complete]  # doctest: +SKIP
    """
    settings = load_settings()
    st = open_store(store, settings)
    objects = st.sizes(DATA)
    manifests: dict[str, Mapping[str, Any] | None] = {}
    complete: dict[str, bool] = {}
    for run_id in st.children("runs"):
        data = st.read_bytes(run_key(run_id, "manifest.json"))
        manifests[run_id] = _parse_stored(data)
        complete[run_id] = data is not None and st.read_bytes(
            run_key(run_id, "COMPLETE")
        ) == marker(data)
    runs = []
    for run_id, m in manifests.items():
        run = _stored_run(run_id, m, complete=complete[run_id])
        if m is not None:
            inputs, size = _inputs_state(run_id, manifests, objects)
            run = dataclasses.replace(run, inputs=inputs, input_bytes=size)
        runs.append(run)
    return sorted(runs, key=lambda r: (r.started, r.id))
