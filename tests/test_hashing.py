"""Tests of data hashing: format, cache, walk edge cases, the data recorder, ``xp hash``."""

from __future__ import annotations

import functools
import json
import logging
import marshal
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import xxhash
import yaml
from omegaconf import OmegaConf

from xpkit._cli._hash_cli import hash_command
from xpkit._core._paths import RunPaths
from xpkit._core._settings import Settings
from xpkit._record import _data, _hashing
from xpkit._record._data import DataRecorder, diff_manifests, load_manifest, manifest_path
from xpkit._record._hashing import HashRecord, hash_one, hash_path
from xpkit.errors import DataError

HOUR_NS = 3600 * 10**9


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _age(root: Path) -> None:
    """Date every file an hour back, so that the cache trusts it (see _RACY_NS)."""
    past = time.time_ns() - HOUR_NS
    for dirpath, _, names in os.walk(root):
        for name in names:
            os.utime(Path(dirpath, name), ns=(past, past))


def _expected(root: Path) -> str:
    """The directory hash of DESIGN.md section 4, computed independently."""
    pairs = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            pairs.append(
                (path.relative_to(root).as_posix(), xxhash.xxh3_128_hexdigest(path.read_bytes()))
            )
    text = "".join(f"{rel}\t{hexdigest}\n" for rel, hexdigest in sorted(pairs))
    return "xxh3_128:" + xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small tree with nested, empty, hidden, unicode and order-sensitive names."""
    root = tmp_path / "data"
    _write(
        root,
        {
            "a.txt": b"alpha",
            "a-b": b"dash sorts before slash",
            "a/b": b"in a directory",
            "sub/b.bin": bytes(range(256)) * 40,
            "sub/deeper/empty-file": b"",
            ".hidden": b"h",
            "ünï/çödé 字.txt": "données".encode(),
        },
    )
    (root / "empty" / "nested").mkdir(parents=True)
    _age(root)
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "hash-cache.sqlite"


def test_file_hash_is_xxh3_128_of_its_bytes(tmp_path: Path) -> None:
    """A file's hash is xxh3_128 of its bytes, with files=1 and no manifest."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    record = hash_path(path, cache=False, jobs=1)
    assert record.hash == "xxh3_128:" + xxhash.xxh3_128_hexdigest(b"hello")
    assert (record.files, record.bytes, record.manifest) == (1, 5, None)
    assert record.to_lock() == {"path": str(path), "hash": record.hash, "files": 1, "bytes": 5}


def test_big_file_is_streamed_to_the_same_hash(tmp_path: Path) -> None:
    """A file larger than one read chunk hashes like its bytes in one piece."""
    data = os.urandom(1 << 20) * 9 + b"tail"
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert hash_path(path, cache=False, jobs=1).hash == "xxh3_128:" + xxhash.xxh3_128_hexdigest(
        data
    )


def test_directory_hash_follows_the_design_format(tree: Path, cache: Path) -> None:
    """Nested, empty, hidden and unicode files count; empty directories do not."""
    record = hash_path(tree, cache=cache, jobs=1)
    assert record.hash == _expected(tree)
    assert record.files == 7
    assert record.bytes == sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    assert record.manifest is not None
    assert list(record.manifest)[:3] == [".hidden", "a-b", "a.txt"]
    assert record.manifest["sub/deeper/empty-file"] == "xxh3_128:" + xxhash.xxh3_128_hexdigest(b"")


def test_workers_and_in_process_agree(tmp_path: Path) -> None:
    """Many files read by worker processes hash exactly as when read in this process."""
    root = tmp_path / "many"
    _write(root, {f"d{i % 7}/f{i}.bin": os.urandom(i % 97) for i in range(8200)})
    threads = set()

    def progress(done: int, total: int) -> None:
        threads.add(threading.current_thread().name)

    # From 8000 files on, worker processes read; threads here collect their answers.
    in_workers = hash_path(root, cache=False, jobs=2, progress=progress)
    assert threads - {threading.current_thread().name}
    assert in_workers == hash_path(root, cache=False, jobs=1)
    assert in_workers.hash == _expected(root)


def test_unchanged_tree_is_not_read_again(tree: Path, cache: Path) -> None:
    """Same-size new content with the old mtime_ns is not seen: the file was not read."""
    first = hash_path(tree, cache=cache, jobs=1)
    path = tree / "sub" / "b.bin"
    st = path.stat()
    with path.open("r+b") as f:
        f.write(b"\xff" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = hash_path(tree, cache=cache, jobs=1)
    assert again.hash == first.hash
    assert again.cached_files == again.files == 7
    assert hash_path(tree, cache=False, jobs=1).hash != first.hash


def test_each_change_is_seen(tree: Path, cache: Path) -> None:
    """Touching re-reads (same hash); editing, adding, deleting, renaming change the hash."""
    base = hash_path(tree, cache=cache, jobs=1)
    target = tree / "a.txt"
    os.utime(target, ns=(time.time_ns() - HOUR_NS // 2,) * 2)
    touched = hash_path(tree, cache=cache, jobs=1)
    assert touched.hash == base.hash
    assert touched.cached_files == 6
    hashes = {base.hash}
    for change in (
        lambda: target.write_bytes(b"beta!"),
        lambda: (tree / "new.txt").write_bytes(b"new"),
        lambda: (tree / "a-b").unlink(),
        lambda: (tree / "new.txt").rename(tree / "renamed.txt"),
    ):
        change()
        record = hash_path(tree, cache=cache, jobs=1)
        assert record.hash == _expected(tree)
        hashes.add(record.hash)
    assert len(hashes) == 5


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Walks with jobs >= 2 hand their stats to a checker process, however small the cache."""
    monkeypatch.setattr(_hashing, "_CHECK_MIN_ROW_BYTES", 0)


def test_each_change_is_seen_by_the_stat_checker(tree: Path, cache: Path, checked: None) -> None:
    """With stats checked in a second process: an edit keeping size, mtime moved, is re-read;
    edits, additions, deletions of files and of whole directories change the hash."""
    base = hash_path(tree, cache=cache, jobs=2)
    assert hash_path(tree, cache=cache, jobs=2).cached_files == base.files
    target = tree / "sub" / "b.bin"
    st = target.stat()
    target.write_bytes(b"\x01" * st.st_size)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_NS))
    edited = hash_path(tree, cache=cache, jobs=2)
    assert edited.hash == _expected(tree) != base.hash
    assert edited.cached_files == base.files - 1
    assert edited.manifest is not None
    assert edited.manifest["sub/b.bin"] == "xxh3_128:" + xxhash.xxh3_128_hexdigest(
        target.read_bytes()
    )
    for change in (
        lambda: (tree / "a" / "b").unlink(),
        lambda: _write(tree, {"sub/deeper/new": b"new"}) or _age(tree / "sub" / "deeper"),
        lambda: [p.unlink() for p in (tree / "sub" / "deeper").iterdir()],
    ):
        change()
        record = hash_path(tree, cache=cache, jobs=2)
        assert record.hash == _expected(tree)
        assert hash_path(tree, cache=cache, jobs=2).cached_files == record.files


def test_stat_checker_that_dies_is_replaced_by_this_process(tree: Path) -> None:
    """A checker whose process is killed still answers: what it was not told is checked here."""
    from xpkit._record._hashworker import StatChecker

    past = time.time_ns() - HOUR_NS
    files = [tree / "a.txt", tree / ".hidden"]
    row = {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino, b"") for p in files}
    os.utime(files[1], ns=(past - HOUR_NS, past - HOUR_NS))
    checker = StatChecker()
    assert checker._proc is not None
    checker._proc.kill()
    checker._proc.wait()
    checker.check(str(tree), ["a.txt", ".hidden", "gone"], marshal.dumps(row))
    assert checker.finish() == {str(tree): [".hidden", "gone"]}


def test_closed_stat_checker_leaves_no_process(tree: Path) -> None:
    """close() (what a failing walk calls) ends the worker at once, answered or not."""
    from xpkit._record._hashworker import StatChecker

    checker = StatChecker()
    proc = checker._proc
    assert proc is not None
    checker.check(str(tree), ["a.txt"], marshal.dumps({}))
    checker.close()
    assert proc.poll() is not None
    checker.close()  # idempotent


def test_hash_record_manifest_is_built_on_demand(tree: Path) -> None:
    """The manifest comes from the ordered listing, once; records compare without it."""
    record = hash_path(tree, cache=False, jobs=1)
    assert record.listing is not None
    assert record.manifest is record.manifest
    assert list(record.manifest or {}) == record.listing[0]


def test_recent_files_are_not_cached(tmp_path: Path, cache: Path) -> None:
    """A file modified within the last seconds is read again next time (racily clean)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "fresh").write_bytes(b"x")
    hash_path(tmp_path / "d", cache=cache, jobs=1)
    assert hash_path(tmp_path / "d", cache=cache, jobs=1).cached_files == 0


def test_include_and_exclude_globs(tree: Path, cache: Path) -> None:
    """Globs without '/' match names at any depth; with '/' the whole relpath."""
    only_bin = hash_path(tree, include=["*.bin"], cache=cache, jobs=1)
    assert only_bin.manifest is not None
    assert list(only_bin.manifest) == ["sub/b.bin"]
    some = hash_path(tree, exclude=["sub", ".*", "ünï/*"], cache=cache, jobs=1)
    assert some.manifest is not None
    assert list(some.manifest) == ["a-b", "a.txt", "a/b"]
    # Filtered walks add to the cache and drop nothing: sub/b.bin and the three above.
    assert hash_path(tree, cache=cache, jobs=1).cached_files == 4


def test_symlinks_are_followed_and_loops_skipped(
    tree: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Links to files and directories hash as their targets; a loop is skipped with a warning."""
    (tree / "link.txt").symlink_to(tree / "a.txt")
    (tree / "linkdir").symlink_to(tree / "sub")
    (tree / "sub" / "up").symlink_to(tree)
    record = hash_path(tree, cache=cache, jobs=1)
    assert record.manifest is not None
    assert record.manifest["link.txt"] == record.manifest["a.txt"]
    assert record.manifest["linkdir/b.bin"] == record.manifest["sub/b.bin"]
    assert "sub/up (symlink loop)" in record.skipped
    assert not any(rel.startswith("sub/up/") for rel in record.manifest)
    assert "symlink loop" in caplog.text


def test_special_and_broken_entries_are_skipped(
    tree: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A FIFO, a socket and a broken link are left out, each with a warning."""
    base = hash_path(tree, cache=cache, jobs=1).hash
    os.mkfifo(tree / "pipe")
    (tree / "dangling").symlink_to(tree / "nowhere")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tree / "sock"))
        record = hash_path(tree, cache=cache, jobs=1)
    assert record.hash == base
    assert set(record.skipped) == {
        "pipe (not a regular file)",
        "sock (not a regular file)",
        "dangling (broken symlink)",
    }
    assert "skipped" in caplog.text


def test_file_vanishing_mid_walk_is_skipped(
    tree: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file deleted between the walk and its read is left out with a warning."""

    def delete_once(done: int, total: int) -> None:
        victim = tree / "a.txt"
        if victim.exists():
            victim.unlink()

    record = hash_path(tree, cache=cache, jobs=1, progress=delete_once)
    assert record.hash == _expected(tree)
    assert "a.txt (vanished)" in record.skipped
    assert "vanished" in caplog.text


def test_missing_path_is_a_data_error(tmp_path: Path) -> None:
    """A missing path raises DataError (a FileNotFoundError) naming it."""
    with pytest.raises(DataError, match=r"does not exist: .*nope") as info:
        hash_path(tmp_path / "nope", cache=False)
    assert isinstance(info.value, FileNotFoundError)


def test_unreadable_file_is_a_data_error_naming_it(tree: Path, cache: Path) -> None:
    """A file that cannot be read raises DataError naming the file."""
    if os.geteuid() == 0:  # root reads through chmod 000; /proc/self/mem fails with EIO
        (tree / "sub" / "bad").symlink_to("/proc/self/mem")
    else:
        (tree / "sub" / "bad").write_bytes(b"secret")
        (tree / "sub" / "bad").chmod(0)
    with pytest.raises(DataError, match=r"cannot read data file .*sub/bad"):
        hash_path(tree, cache=cache, jobs=1)


def test_corrupt_cache_is_rebuilt(
    tree: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage in the cache file: a warning, the file moved aside, a fresh cache built."""
    expected = hash_path(tree, cache=cache, jobs=1).hash
    cache.write_bytes(b"this is not a database" * 100)
    assert hash_path(tree, cache=cache, jobs=1).hash == expected
    assert "corrupt" in caplog.text
    assert Path(f"{cache}.corrupt").exists()
    assert hash_path(tree, cache=cache, jobs=1).cached_files == 7


def test_cache_survives_concurrent_writers(tmp_path: Path, cache: Path) -> None:
    """Processes hashing overlapping trees at once all succeed and fill one cache."""
    root = tmp_path / "shared"
    _write(root, {f"d{i % 4}/f{i}": os.urandom(64) for i in range(1200)})
    _age(root)
    targets = [root, root / "d0", root / "d1", root, root / "d2", root]
    work = functools.partial(hash_path, cache=cache, jobs=1)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        records = pool.map(work, targets)
    assert {r.hash for r in records if r.path == str(root)} == {_expected(root)}
    assert hash_path(root, cache=cache, jobs=1).cached_files == 1200


# --- the data recorder ---------------------------------------------------------------


def _plan(tmp_path: Path, config: dict[str, Any], data: tuple[str, ...]) -> SimpleNamespace:
    settings = Settings(root=tmp_path, hash_cache="cache.sqlite")
    stage = SimpleNamespace(name="prep", data=data)
    return SimpleNamespace(stage=stage, config=OmegaConf.create(config), settings=settings)


def _run(plan: SimpleNamespace, name: str) -> SimpleNamespace:
    """A stand-in of the run in progress: ``published`` keeps what run.lock got early."""
    run_dir = plan.settings.root / "results" / "prep" / name
    run_dir.mkdir(parents=True)
    logger = logging.getLogger(f"xpkit.test.{name}")
    published: dict[str, Any] = {}
    return SimpleNamespace(
        plan=plan, paths=RunPaths(run_dir), logger=logger,
        published=published, publish=published.__setitem__,
    )  # fmt: skip


def _record_run(plan: SimpleNamespace, name: str) -> tuple[SimpleNamespace, dict[str, Any]]:
    recorder = DataRecorder()
    recorder.prepare(plan)
    run = _run(plan, name)
    recorder.start(run)
    section = recorder.finish(run)
    run.paths.lock.write_text(yaml.safe_dump({"id": name, "data": section}))
    return run, section


def test_recorder_prepare_rejects_missing_keys_and_paths(tmp_path: Path) -> None:
    """A data key missing from the config or naming no path is a one-line DataError."""
    with pytest.raises(DataError, match="'raw' of the stage is not in the config"):
        DataRecorder().prepare(_plan(tmp_path, {"other": 1}, ("raw",)))
    with pytest.raises(DataError, match=r"data path of 'io.raw' does not exist: .*absent"):
        DataRecorder().prepare(
            _plan(tmp_path, {"io": {"raw": str(tmp_path / "absent")}}, ("io.raw",))
        )


def test_recorder_start_does_not_wait_for_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start() returns while the hash is still running; finish() waits for it.

    The hash is held at a gate until start() has returned: a start() that waited for it
    would come back only once the gate gives up, with the hash done.
    """
    data = tmp_path / "data"
    _write(data, {"a.bin": b"a" * 1000, "sub/b.bin": b"b"})
    gate, entered = threading.Event(), threading.Event()

    def gated_hash(*args: Any, **kwargs: Any) -> HashRecord:
        entered.set()
        gate.wait(timeout=30)
        return hash_one(*args, **kwargs)

    monkeypatch.setattr(_data, "hash_one", gated_hash)
    plan = _plan(tmp_path, {"raw": str(data)}, ("raw",))
    recorder = DataRecorder()
    recorder.prepare(plan)
    run = _run(plan, "260101-000000")
    recorder.start(run)
    busy = not recorder._futures["raw"].done()
    gate.set()
    section = recorder.finish(run)
    assert busy
    assert entered.is_set()
    assert section["raw"]["hash"] == hash_path(data, cache=False, jobs=1).hash
    assert section["raw"]["path"] == "data"
    assert section["raw"]["bytes"] == 1001


def test_recorder_finish_records_tracks_and_reports_changes(
    tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """finish() gives run.lock entries, writes manifests and warns about changed data."""
    root = tree.parent
    plan = _plan(root, {"raw": "data"}, ("raw",))
    cwd = os.getcwd()
    os.chdir(root)  # data paths in the config are relative to the working directory
    try:
        first, section = _record_run(plan, "260101-000000")
        assert section == {"raw": hash_path(tree, cache=False).to_lock() | {"path": "data"}}
        (tree / "a.txt").write_bytes(b"edited")
        (tree / "added").write_bytes(b"+")
        recorder = DataRecorder()
        recorder.prepare(plan)
        second = _run(plan, "260101-000001")
        recorder.start(second)
        recorder.track("data/a.txt", "data/a.txt")
        section2 = recorder.finish(second)
    finally:
        os.chdir(cwd)
    assert section2["data/a.txt"]["files"] == 1
    assert section2["raw"]["hash"] == _expected(tree)
    message = "data 'raw' changed since run 260101-000000: 1 added, 0 removed, 1 modified"
    assert message in caplog.text
    a, b = load_manifest(first.paths.dir, "raw"), load_manifest(second.paths.dir, "raw")
    assert a is not None
    assert b is not None
    assert diff_manifests(a, b) == (["added"], [], ["a.txt"])
    assert load_manifest(second.paths.dir, "data/a.txt") is None


def test_manifest_names_are_safe_and_distinct(tmp_path: Path) -> None:
    """Data names with slashes or odd characters map to distinct files in manifests/."""
    paths = RunPaths(tmp_path)
    names = ["raw", "data/raw", "data_raw", "../x", "a b"]
    files = [manifest_path(paths, n) for n in names]
    assert len(set(files)) == len(names)
    assert all(f.parent == paths.manifests for f in files)
    assert files[0].name == "raw.tsv.gz"


# --- xp hash -------------------------------------------------------------------------


def test_hash_command_prints_lines_and_json(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``xp hash`` prints ``hash files bytes path`` lines, or a JSON array."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    record = hash_path(tree, cache=False)
    assert hash_command([str(tree), str(tree / "a.txt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [record.hash, "7", str(record.bytes), str(tree)]
    assert (tmp_path / "xdg" / "xpkit" / "hash-cache.sqlite").exists()
    assert hash_command([str(tree), "--json", "--no-cache", str(tree / "a.txt"), "--jobs=2"]) == 0
    first, second = json.loads(capsys.readouterr().out)
    assert first == record.to_lock()
    assert second["files"] == 1


def test_hash_command_missing_path_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing path is a one-line error and exit status 2."""
    assert hash_command([str(tmp_path / "nope"), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "nope" in err


def test_hashing_import_is_light() -> None:
    """Importing the hashing modules loads neither sqlite3 nor rich."""
    import xpkit

    code = "import sys, xpkit._record._hashing, xpkit._record._data"
    code += "; print(*(m in sys.modules for m in MODS))"
    code = code.replace("MODS", "('sqlite3', 'rich')")
    src = str(Path(xpkit.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_record_equality_ignores_bookkeeping() -> None:
    """Two records of the same content compare equal whatever came from the cache."""
    a = HashRecord("p", "xxh3_128:00", 1, 2, None, cached_files=1)
    assert a == HashRecord("p", "xxh3_128:00", 1, 2, None, cached_files=0)
    assert hash(a)
