"""The inputs of a lineage in a store: the data files its run.locks recorded, by content.

A run's ``data`` section names each input's project-relative ``path`` and xxh3-128 ``hash``;
a directory's per-file hashes are in the run's manifests (``_data.load_manifest``). A push
records them in the run's store manifest (``inputs``), and ``--data`` uploads each file as
``data/<hex[:2]>/<hex>``, named by the hash the run recorded: deduplicated across runs,
stages and pushes, and never a version that differs from the one the run read.

A pull restores inputs only where a project keeps data (see :func:`restorable`), verifying
every hash, and never replaces a different existing file unless forced.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from .._core._progress import ProgressBar
from .._core._settings import Settings
from .._record._hashing import PREFIX
from ..errors import DataError, GitError, StoreError
from ._storage import Store, parallel, safe_relpath

__all__ = [
    "CurrentHashes",
    "InputFile",
    "PushedInputs",
    "expand",
    "object_key",
    "push_inputs",
    "recorded_inputs",
    "restorable",
]

_HASH = re.compile(r"xxh3_128:[0-9a-f]{32}")
DATA = "data"  # the store's prefix of input objects
# names a pull never writes, whatever a store says: code, environments, hooks, caches
_CODE_SUFFIXES = frozenset(
    {".py", ".pyc", ".pyo", ".pyd", ".pth", ".so", ".dylib", ".dll", ".exe"}
    | {".sh", ".bash", ".zsh", ".fish", ".ps1", ".bat", ".cmd"}
)
_CODE_DIRS = frozenset({"__pycache__", "site-packages", "dist-packages", "node_modules"})


@dataclass(frozen=True)
class InputFile:
    """One input file of a run: where the project keeps it and the hash the run read."""

    path: str  # project-relative (absolute when outside the project)
    hash: str
    run: str  # the id of the run that recorded it
    name: str  # its data key
    root: str = ""  # the recorded data path it lies in (a directory), or "" for itself

    @property
    def entry(self) -> tuple[str, str]:
        """``(data path, relpath in it)``: how hashing the data path finds this file."""
        return (self.root, self.path[len(self.root) + 1 :]) if self.root else (self.path, "")

    @property
    def key(self) -> str:
        """The store key of its content."""
        return object_key(self.hash)


@dataclass
class PushedInputs:
    """What ``push --data`` did with the inputs of a lineage."""

    sent_files: int = 0
    sent_bytes: int = 0
    stored_files: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: reason"


def object_key(digest: str) -> str:
    """``data/<hex[:2]>/<hex>`` of an ``xxh3_128:<hex>`` hash."""
    hexdigest = digest.removeprefix(PREFIX)
    return f"{DATA}/{hexdigest[:2]}/{hexdigest}"


def recorded_inputs(lock: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The ``inputs`` of a run's store manifest: its data entries with their files' hashes."""
    from .._record._data import load_manifest

    section = lock.get("data")
    out: dict[str, Any] = {}
    for name, entry in (section or {}).items() if isinstance(section, Mapping) else ():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("hash"), str):
            continue  # not hashed (its error is in run.lock): nothing to move
        files = load_manifest(run_dir, str(name))
        out[str(name)] = {
            "path": entry.get("path"),
            "hash": entry["hash"],
            "bytes": entry.get("bytes"),
            "files": files,
        }
    return out


def expand(inputs: Any, run_id: str) -> list[InputFile]:
    """The files of a manifest's ``inputs``, each checked against the hash the run recorded.

    Raises:
        StoreError: an entry is malformed, or a directory's files do not make its hash.
    """
    if not isinstance(inputs, Mapping):
        msg = f"store manifest of run {run_id}: inputs are not a mapping"
        raise StoreError(msg)
    out: list[InputFile] = []
    for name, entry in inputs.items():
        out += _entry_files(str(name), entry, run_id)
    return out


def _entry_files(name: str, entry: Any, run_id: str) -> list[InputFile]:
    what = f"input {name!r} of run {run_id} in the store"
    ok = isinstance(entry, Mapping) and isinstance(entry.get("path"), str) and entry["path"]
    ok = ok and isinstance(entry.get("hash"), str) and _HASH.fullmatch(entry["hash"])
    files = entry.get("files") if isinstance(entry, Mapping) else None
    ok = ok and (files is None or isinstance(files, Mapping))
    if not ok:
        msg = f"{what} is not a path and hash record"
        raise StoreError(msg)
    path = str(entry["path"]).rstrip("/")
    if files is None:
        return [InputFile(path, entry["hash"], run_id, name)]
    if not all(isinstance(h, str) and _HASH.fullmatch(h) for h in files.values()):
        msg = f"{what} lists a file hash that is not xxh3_128"
        raise StoreError(msg)
    if _dir_hash(files) != entry["hash"]:
        msg = f"{what}: its files do not make the directory hash {entry['hash']}"
        raise StoreError(msg)
    for rel in files:
        safe_relpath(str(rel), what=what)
    return [InputFile(f"{path}/{rel}", h, run_id, name, path) for rel, h in files.items()]


def _dir_hash(files: Mapping[str, str]) -> str:
    """A directory's hash from its files' (the design's format, section 4)."""
    h = xxhash.xxh3_128()
    for rel in sorted(files):
        h.update(f"{rel}\t{files[rel].removeprefix(PREFIX)}\n".encode("utf-8", "surrogateescape"))
    return f"{PREFIX}{h.hexdigest()}"


def restorable(path: str, *, results: str) -> str | None:
    """Why a pull does not write input ``path`` (None: it may).

    Inputs live where a project keeps data: not outside it, not in the results directory
    (outputs travel with their runs), and never as code, hooks or environments (hidden
    directories such as ``.git`` or ``.venv``, ``__pycache__``, ``.py``/``.pth``/``.so``...).

    Raises:
        UnsafePathError: ``path`` is relative but not plain (``..``, empty components).
    """
    if os.path.isabs(path):
        return "outside the project"
    parts = safe_relpath(path, what="the inputs of a stored run").split("/")
    if path == results or path.startswith(f"{results}/"):
        return "inside the results directory (it travels with its run)"
    if any(p.startswith(".") or p in _CODE_DIRS for p in parts):
        return "in a hidden or code directory"
    if os.path.splitext(parts[-1])[1].lower() in _CODE_SUFFIXES:
        return "a code file"
    return None


def not_ignored(root: Path, paths: Sequence[str]) -> set[str]:
    """The ``paths`` that git does not ignore (tracked or visible): they belong to the code."""
    from .._record._git import run_git

    if not paths:
        return set()
    stdin = "".join(f"{p}\0" for p in paths).encode("utf-8", "surrogateescape")
    try:
        out = run_git(root, ["check-ignore", "--stdin", "-z"], stdin, ok=(0, 1))
    except GitError:
        return set()  # not a git work tree: nothing to tell
    ignored = {p for p in out.decode("utf-8", "surrogateescape").split("\0") if p}
    return set(paths) - ignored


class CurrentHashes:
    """The hashes input files have here now: each data path hashed once (cached on disk)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._records: dict[str, tuple[str | None, dict[str, str]]] = {}

    def of(self, f: InputFile) -> str | None:
        """The file's current hash; None when it is missing or unreadable."""
        top, rel = f.entry
        digest, files = self._hash(top)
        return files.get(rel) if rel else digest

    def _hash(self, top: str) -> tuple[str | None, dict[str, str]]:
        from .._record._hashing import hash_path

        if top not in self._records:
            try:
                record = hash_path(self.root / top)
                self._records[top] = (record.hash, record.manifest or {})
            except DataError:
                self._records[top] = (None, {})
        return self._records[top]


def push_inputs(
    st: Store, settings: Settings, files: Iterable[InputFile], *, bar: ProgressBar | None = None
) -> PushedInputs:
    """Upload the inputs the store lacks, each only as the version its run recorded."""
    report = PushedInputs()
    stored = st.sizes(DATA)
    current = CurrentHashes(settings.root)
    todo: dict[str, InputFile] = {}
    for f in files:
        if f.key[len(DATA) + 1 :] in stored or f.hash in todo:
            report.stored_files += f.hash not in todo
            continue
        reason = _local_problem(settings, current, f)
        if reason:
            report.skipped.append(f"{f.path}: {reason}")
        else:
            todo[f.hash] = f

    if bar is not None:
        bar.grow(sum((settings.root / f.path).stat().st_size for f in todo.values()))

    def upload(f: InputFile) -> int | None:
        local = settings.root / f.path
        if st.put_file(local, f.key, expect=f.hash) != f.hash:
            return None
        size = local.stat().st_size
        if bar is not None:
            bar.advance(size)
        return size

    sent = parallel(upload, list(todo.values()))
    for f, size in zip(todo.values(), sent, strict=True):
        if size is None:
            report.skipped.append(f"{f.path}: changed while being pushed; not pushed")
        else:
            report.sent_files += 1
            report.sent_bytes += size
    return report


def _local_problem(settings: Settings, current: CurrentHashes, f: InputFile) -> str | None:
    """Why this clone cannot push ``f`` (None: it can)."""
    if os.path.isabs(f.path):
        return "outside the project; not pushed"
    local = settings.root / f.path
    if local.is_dir():
        return "a directory whose file list the run did not keep; not pushed"
    if not local.is_file():
        return "not in this clone; not pushed"
    now = current.of(f)
    if now != f.hash:
        return f"changed since run {f.run} read it ({now} now); not pushed as that version"
    return None
