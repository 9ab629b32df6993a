"""The ``data`` section of run.lock: hashing a run's data in the background, and manifests.

A directory's manifest (relpath -> file hash) is kept next to run.lock, gzipped, in
``.xpkit/manifests/<name>.tsv.gz``, so that the data of two runs can be compared file by
file long after the data itself changed: see :func:`load_manifest` and
:func:`diff_manifests`.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import threading
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from .._core._paths import RunPaths, atomic_write_bytes
from .._core._threads import leave_signals_to_main
from .._core._yaml import load_yaml
from ..errors import DataError
from ._hashing import PREFIX, HashRecord, cache_path_of, hash_one, jobs_of

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from .._core._settings import Settings
    from ._plan import RecordingRun, RunPlan

__all__ = ["DataRecorder", "diff_manifests", "load_manifest", "manifest_path"]

_ABSENT = object()
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n"}
_UNESCAPE = re.compile(r"\\(.)")


class DataRecorder:
    """``data``: the hash of every data path of the stage, and of ``xp.track_data`` paths.

    Hashing starts with the run, in one background thread, and never delays the body;
    run.lock gets each entry as soon as its hash is known, and ``finish`` waits for the
    rest. A path that cannot be hashed is recorded with ``hash: None`` and an ``error``
    message, and logged as an error.
    """

    key = "data"

    def __init__(self) -> None:
        self._paths: dict[str, str] = {}
        self._futures: dict[str, Future[HashRecord]] = {}
        self._entries: dict[str, dict[str, Any]] = {}
        self._entries_mutex = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._run: RecordingRun | None = None
        self._settings: Settings | None = None
        self._log = logging.getLogger("xpkit.hashing")

    def prepare(self, plan: RunPlan) -> None:
        """Check that every data key of the stage names an existing path.

        Raises:
            DataError: a key is not in the config, is empty, or its path does not exist.
        """
        from omegaconf import OmegaConf

        self._settings = plan.settings
        for key in plan.stage.data:
            value = OmegaConf.select(plan.config, key, default=_ABSENT)
            if value is _ABSENT:
                msg = f"data key {key!r} of the stage is not in the config"
                raise DataError(msg)
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                msg = f"data key {key!r} must be a file or directory path, got {value!r}"
                raise DataError(msg)
            if not os.path.exists(value):
                msg = f"data path of {key!r} does not exist: {value}"
                raise DataError(msg)
            self._paths[key] = os.path.abspath(value)  # as the body's open() would see it

    def start(self, run: RecordingRun) -> None:
        """Start hashing every data path in a background thread."""
        from concurrent.futures import ThreadPoolExecutor

        self._run = run
        self._settings = run.plan.settings
        self._log = run.logger
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="xpkit-data", initializer=leave_signals_to_main
        )
        for name, path in self._paths.items():
            self._submit(name, path)

    def track(self, name: str, path: str | os.PathLike[str]) -> None:
        """Add a data path found while the run runs, and start hashing it.

        Raises:
            DataError: the path does not exist.
        """
        if not os.path.exists(path):
            msg = f"tracked data path does not exist: {os.fspath(path)}"
            raise DataError(msg)
        path = os.path.abspath(path)
        if self._paths.get(name) == path and name in self._futures:
            return
        self._paths[name] = path
        if self._pool is not None:
            self._submit(name, path)

    def finish(self, run: RecordingRun) -> dict[str, Any]:
        """Wait for the hashes; say what changed since the last run."""
        if self._pool is not None:
            self._pool.shutdown()  # every hash done, and published
        section = {name: self._entries[name] for name in self._futures}
        _report_changes(run, section)
        return section

    def _submit(self, name: str, path: str) -> None:
        assert self._pool is not None
        future = self._pool.submit(self._hash, path)
        with self._entries_mutex:
            self._futures[name] = future
        future.add_done_callback(lambda f: self._publish(name, f))

    def _hash(self, path: str) -> HashRecord:
        settings = self._settings
        cache = cache_path_of(settings) if settings is not None else None
        return hash_one(
            path,
            include=None,
            exclude=None,
            cache_path=cache,
            jobs=jobs_of(settings),
            progress=None,
            log=self._log,
        )

    def _publish(self, name: str, future: Future[HashRecord]) -> None:
        """Record one hash as soon as it is known: run.lock holds it even if the run dies."""
        run = self._run
        assert run is not None
        entry = _entry(run, name, self._paths[name], future)
        with self._entries_mutex:
            if self._futures.get(name) is not future:
                return  # tracked again since: the newer hash wins
            self._entries[name] = entry
            done = {k: self._entries[k] for k in self._futures if k in self._entries}
            try:
                run.publish(self.key, done)
            except OSError as e:  # the final run.lock still gets it
                run.logger.warning("could not record data %r in run.lock yet: %s", name, e)


def _entry(run: RecordingRun, name: str, path: str, future: Future[HashRecord]) -> dict[str, Any]:
    """The run.lock entry of one path; its manifest written to the run directory."""
    relative = run.plan.settings.relative(path)
    try:
        record = future.result()
        if record.manifest is not None:
            write_manifest(run.paths, name, record.manifest)
    except (OSError, ValueError) as e:
        run.logger.error("could not hash data %r: %s", name, e)
        return {"path": relative, "hash": None, "files": None, "bytes": None, "error": str(e)}
    return {**record.to_lock(), "path": relative}


def manifest_path(run_paths: RunPaths, name: str) -> Path:
    """The manifest file of data ``name``: a safe file name, unique per name."""
    safe = _UNSAFE.sub("_", name).strip("._") or "data"
    if safe != name:
        safe += "-" + xxhash.xxh3_64_hexdigest(name.encode("utf-8", "surrogateescape"))[:8]
    return run_paths.manifests / f"{safe}.tsv.gz"


def write_manifest(run_paths: RunPaths, name: str, manifest: dict[str, str]) -> Path:
    """Write ``relpath<TAB>hexdigest`` lines, gzipped, atomically; return the file."""
    path = manifest_path(run_paths, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{_escape(rel)}\t{h.removeprefix(PREFIX)}\n" for rel, h in manifest.items()]
    data = "".join(lines).encode("utf-8", "surrogateescape")
    atomic_write_bytes(path, gzip.compress(data, compresslevel=1, mtime=0))
    return path


def load_manifest(run_dir: str | os.PathLike[str], name: str) -> dict[str, str] | None:
    """The manifest of data ``name`` in a run directory (relpath -> hash), None if absent.

    Raises:
        ValueError: the manifest is damaged (truncated, not gzip, corrupt), naming the file.

    Example:
        >>> added, removed, modified = diff_manifests(
        ...     load_manifest("results/prepare/a", "raw"), load_manifest("results/prepare/b", "raw")
        ... )  # doctest: +SKIP
    """
    path = manifest_path(RunPaths(Path(run_dir)), name)
    try:
        data = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        msg = f"{path}: damaged manifest ({e})"
        raise ValueError(msg) from None
    manifest: dict[str, str] = {}
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        rel, _, hexdigest = line.rpartition("\t")
        manifest[_unescape(rel)] = PREFIX + hexdigest
    return manifest


def diff_manifests(a: dict[str, str], b: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """``(added, removed, modified)`` relpaths, sorted, going from manifest ``a`` to ``b``."""
    added = sorted(b.keys() - a.keys())
    removed = sorted(a.keys() - b.keys())
    modified = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    return added, removed, modified


def _escape(relpath: str) -> str:
    if "\\" in relpath or "\t" in relpath or "\n" in relpath:
        return "".join(_ESCAPES.get(c, c) for c in relpath)
    return relpath


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return _UNESCAPE.sub(lambda m: {"t": "\t", "n": "\n"}.get(m[1], m[1]), text)


def _report_changes(run: RecordingRun, section: dict[str, Any]) -> None:
    """Warn about each data whose hash differs from the previous run of the stage."""
    previous = _previous_run(run.paths.dir)
    if previous is None:
        return
    before_dir, before = previous
    for name, entry in section.items():
        old = before.get(name)
        if not isinstance(old, dict) or entry["hash"] is None or old.get("hash") == entry["hash"]:
            continue
        run.logger.warning(
            "data %r changed since run %s%s", name, before_dir.name, _counts(before_dir, run, name)
        )


def _counts(before_dir: Path, run: RecordingRun, name: str) -> str:
    """``": 2 added, 0 removed, 1 modified"`` when both runs kept a manifest, else ``""``."""
    try:
        a = load_manifest(before_dir, name)
        b = load_manifest(run.paths.dir, name)
    except (OSError, EOFError, ValueError):
        return ""
    if a is None or b is None:
        return ""
    added, removed, modified = diff_manifests(a, b)
    return f": {len(added)} added, {len(removed)} removed, {len(modified)} modified"


def _previous_run(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest sibling run directory before ``run_dir`` with a readable run.lock.

    Returns the directory and the ``data`` section of its run.lock.
    """
    import yaml

    try:
        siblings = [p for p in run_dir.parent.iterdir() if p.name < run_dir.name]
    except OSError:
        return None
    for candidate in sorted(siblings, key=lambda p: p.name, reverse=True):
        if candidate.is_symlink() or not candidate.is_dir():
            continue
        try:
            lock = load_yaml(RunPaths(candidate).lock.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(lock, dict):
            data = lock.get("data")
            return candidate, data if isinstance(data, dict) else {}
    return None
