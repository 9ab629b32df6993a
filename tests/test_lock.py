"""run.lock: the record, its YAML, atomic writes and validation on load."""

from __future__ import annotations

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
    with pytest.raises(LockError, match=r"run\.lock line 3"):
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
        ("argv", ["ok", 3], "'argv'"),
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
