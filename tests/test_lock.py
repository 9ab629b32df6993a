"""run.lock: the record, its YAML, atomic writes and validation on load."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import yaml

from xpkit._core._lock import (
    SCHEMA_VERSION,
    STATUSES,
    RunLock,
    dump_yaml,
    load_lock,
    load_yaml,
    new_run_id,
    write_lock,
)
from xpkit.errors import LockError, LockVersionError


def sample() -> RunLock:
    return RunLock(
        id=new_run_id(),
        stage="prep",
        dir="results/prep/250101-000000",
        status="failed",
        started="2025-01-01T00:00:00+00:00",
        argv=("prep.py", "a=1"),
        config={"a": 1, "nested": {"b": [1, 2]}},
        error={"type": "ValueError", "message": "x", "traceback": "Traceback\n  line\n"},
        env={"python": "3.11.7"},
        extra={"future_key": {"kept": True}},
    )


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    """A lock written and loaded back is equal, unknown keys kept in extra."""
    lock = sample()
    write_lock(tmp_path / "run.lock", lock)
    assert load_lock(tmp_path / "run.lock") == lock
    assert load_lock(tmp_path) == lock  # a run directory works too
    data = yaml.safe_load((tmp_path / "run.lock").read_text())
    assert list(data)[:5] == ["xpkit", "id", "stage", "dir", "status"]
    assert data["future_key"] == {"kept": True}
    assert "src" not in data  # empty sections are left out


def test_tracebacks_are_literal_blocks() -> None:
    """Multi-line strings are written as readable YAML literal blocks."""
    text = dump_yaml(sample().to_dict())
    assert "traceback: |" in text
    assert "  line\n" in text


def test_atomic_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    """Concurrent writers replace the file whole and leave no temporary file behind."""
    path = tmp_path / "run.lock"
    locks = [sample().replace(stage=f"s{i}") for i in range(8)]

    def writer(lock: RunLock) -> None:
        for _ in range(25):
            write_lock(path, lock)

    threads = [threading.Thread(target=writer, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.name for p in tmp_path.iterdir()] == ["run.lock"]
    assert load_lock(path).stage in {lock.stage for lock in locks}


def test_run_ids_are_12_hex_and_unique() -> None:
    """new_run_id gives 12 hex digits, distinct across many calls."""
    ids = {new_run_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in ids)


def test_missing_file_is_a_lock_error(tmp_path: Path) -> None:
    """A missing run.lock raises LockError naming the file."""
    with pytest.raises(LockError, match=r"run\.lock"):
        load_lock(tmp_path / "nowhere")


def test_truncated_lock_is_an_error_naming_the_file(tmp_path: Path) -> None:
    """A run.lock cut in the middle raises LockError with the file (and line when YAML broke)."""
    path = tmp_path / "run.lock"
    text = dump_yaml(sample().to_dict())
    path.write_text(text[: text.index("stage:")])
    with pytest.raises(LockError, match=r"run\.lock.*'stage'"):
        load_lock(path)
    path.write_text(text[: text.index("T00:00")])  # inside the quoted start time
    with pytest.raises(LockError) as info:
        load_lock(path)
    assert str(path) in str(info.value)
    assert "line" in str(info.value)


def test_garbage_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    """Invalid YAML names the file and line; non-mappings and non-locks are refused."""
    path = tmp_path / "run.lock"
    path.write_text("xpkit: 1\nid: abc\n  stage: : x\n")
    with pytest.raises(LockError, match=r"run\.lock: invalid YAML line 3"):
        load_lock(path)
    path.write_bytes(b"\x00\x01binary")
    with pytest.raises(LockError):
        load_lock(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(LockError, match="not a YAML mapping"):
        load_lock(path)
    path.write_text("id: a\nstage: b\n")
    with pytest.raises(LockError, match="schema version"):
        load_lock(path)


def test_newer_schema_raises_lock_version_error(tmp_path: Path) -> None:
    """A lock from a newer schema raises LockVersionError (a LockError) asking for an upgrade."""
    path = tmp_path / "run.lock"
    data = sample().to_dict()
    data["xpkit"] = SCHEMA_VERSION + 1
    path.write_text(dump_yaml(data))
    with pytest.raises(LockVersionError, match="upgrade xpkit"):
        load_lock(path)
    assert issubclass(LockVersionError, LockError)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("status", "done", "one of"),
        ("status", 3, "'status'"),
        ("argv", "prep.py a=1", "'argv'"),
        ("argv", ["ok", 3], "'argv\\[1\\]'"),
        ("config", [1, 2], "'config'"),
        ("metrics", "x", "'metrics'"),
        ("duration_s", "fast", "'duration_s'"),
        ("pid", True, "'pid'"),
    ],
)
def test_wrong_types_are_refused(tmp_path: Path, key: str, value: object, words: str) -> None:
    """Known keys of the wrong type raise LockError naming the key."""
    data = sample().to_dict()
    data[key] = value
    path = tmp_path / "run.lock"
    path.write_text(dump_yaml(data))
    with pytest.raises(LockError, match=words):
        load_lock(path)


def test_statuses_are_the_documented_ones() -> None:
    """The four statuses of DESIGN.md."""
    assert STATUSES == ("running", "completed", "failed", "interrupted")


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("env", {"packages": [1]}, "'env.packages' must be a mapping of package names to versions"),
        ("env", {"packages": {"numpy": [1]}}, "'env.packages.numpy' must be a string or a number"),
        ("env", {"gpu": ["A100"]}, "'env.gpu[0]' must be a mapping, got 'A100'"),
        ("src", {"files": 3}, "'src.files' must be a mapping of paths to blob shas, got 3"),
        ("src", {"commit": 12}, "'src.commit' must be a string, got 12"),
        ("src", {"dirty": "yes"}, "'src.dirty' must be true or false, got 'yes'"),
        ("data", {"x": [1]}, "'data.x' must be a mapping (path, hash, files, bytes), got [1]"),
        ("data", {"x": {"bytes": "big"}}, "'data.x.bytes' must be an integer, got 'big'"),
        ("upstream", {"k": 5}, "'upstream.k' must be a run.lock mapping, got 5"),
        ("upstream", {"k": {"id": "a"}}, "'upstream.k' is not a run.lock (no integer 'xpkit'"),
        ("metrics", {"a": [1]}, "'metrics.a' must be a number, got [1]"),
        ("metrics", {"a": True}, "'metrics.a' must be a number, got True"),
        ("tasks", {"total": "4"}, "'tasks.total' must be an integer, got '4'"),
        ("tasks", {"jobs": [None]}, "'tasks.jobs' must be a list of job ids, got [None]"),
        ("error", {"message": ["x"]}, "'error.message' must be a string, got ['x']"),
        ("sweep", {"point": "2"}, "'sweep.point' must be an integer, got '2'"),
        ("entry", {"qualname": 3}, "'entry.qualname' must be a string, got 3"),
        ("started", "yesterday", "'started' must be an ISO 8601 timestamp string, got 'yesterday'"),
        ("duration_s", float("inf"), "'duration_s' must be a finite number of seconds, got inf"),
        ("argv", ["a", None], "'argv' must be a list of strings, got ['a', None]"),
    ],
)
def test_nested_shapes_are_checked_once_when_read(
    tmp_path: Path, section: str, value: object, message: str
) -> None:
    """Below the top level, the keys readers use have the kind they expect, or LockError
    names the file and the full dotted key; unknown keys and None stay free."""
    data = sample().to_dict()
    data[section] = value
    path = tmp_path / "run.lock"
    path.write_text(dump_yaml(data))
    with pytest.raises(LockError) as info:
        load_lock(path)
    assert str(info.value).startswith(f"{path}: run.lock key {message}")
    data[section] = None  # unknown: always allowed
    path.write_text(dump_yaml(data))
    assert load_lock(path).id == data["id"]


def test_keys_the_schema_does_not_know_are_free(tmp_path: Path) -> None:
    """Sections of fixed fields take any other key, of any kind: newer writers add keys."""
    free = {"later": [1, {"x": None}]}
    lock = sample().replace(env=free, src=free, tasks=free, error=free, extra={"sweep": free})
    write_lock(tmp_path / "run.lock", lock)
    assert load_lock(tmp_path / "run.lock") == lock


def test_upstream_locks_are_checked_recursively(tmp_path: Path) -> None:
    """A bad section two upstream levels down is named by its whole path."""
    inner = sample().replace(env={"packages": [1]}).to_dict()
    middle = sample().replace(upstream={"raw": inner}).to_dict()
    path = tmp_path / "run.lock"
    path.write_text(dump_yaml(sample().replace(upstream={"prepared": middle}).to_dict()))
    with pytest.raises(LockError, match=r"key 'upstream\.prepared\.upstream\.raw\.env\.packages'"):
        load_lock(path)


def test_not_utf8_is_a_lock_error_with_the_offset(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 name the byte and its offset, as a LockError."""
    path = tmp_path / "run.lock"
    path.write_bytes(b"xpkit: 1\nid: caf\xe9\n")
    with pytest.raises(LockError) as info:
        load_lock(path)
    assert str(info.value) == f"{path}: not a run.lock (not UTF-8 text: byte 0xe9 at offset 16)"


def test_shared_values_are_written_without_aliases(tmp_path: Path) -> None:
    """A value met twice is written twice: no anchors, so readers never meet aliases."""
    env = {"python": "3.11", "packages": {"numpy": "2.0"}}
    lock = sample().replace(env=env, upstream={"prep": sample().replace(env=env).to_dict()})
    text = dump_yaml(lock.to_dict())
    assert "&" not in text
    assert "*id" not in text
    write_lock(tmp_path / "run.lock", lock)
    assert load_lock(tmp_path / "run.lock") == lock


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a: &x {b: *x}\n", "an alias makes a node contain itself"),
        (
            "".join(
                f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 8)
            ).replace("*l0", "1"),
            "aliases expand it to more than 1,000,000 values",
        ),
        ("a: " + "9" * 5000 + "\n", "Exceeds the limit (4300 digits) for integer string"),
    ],
)
def test_load_yaml_refuses_what_would_hang_or_crash_a_reader(text: str, why: str) -> None:
    """A recursive alias, a billion laughs, a 5000-digit integer: yaml.YAMLError, at once."""
    with pytest.raises(yaml.YAMLError, match=re.escape(why)):
        load_yaml(text)
    assert load_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}  # aliases are fine
