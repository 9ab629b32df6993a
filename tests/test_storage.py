"""The store backends: atomic, verified writes; nothing read or written through a symlink."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from xpkit._core._settings import load_settings
from xpkit._share._storage import LocalStore, Store, open_store
from xpkit._share._store import hash_file
from xpkit.errors import UnsafePathError


@pytest.fixture(params=["directory", "s3", "fsspec-filesystem"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A directory store, an S3 one (atomic PUT) and an fsspec filesystem (temp key + move)."""
    monkeypatch.chdir(tmp_path)
    urls = {"directory": str(tmp_path / "store"), "fsspec-filesystem": f"local://{tmp_path}/st"}
    url = urls.get(request.param) or request.getfixturevalue("s3_store")
    return open_store(url, load_settings())


def test_put_file_publishes_only_the_expected_bytes(store: Store, tmp_path: Path) -> None:
    """An upload whose bytes differ from the expected hash (the file changed) leaves nothing."""
    local = tmp_path / "f.bin"
    local.write_bytes(b"version 1")
    expected = hash_file(local)
    assert store.put_file(local, "runs/x/files/f.bin", expect=expected) == expected
    assert store.read_bytes("runs/x/files/f.bin") == b"version 1"
    local.write_bytes(b"version 2")
    sent = store.put_file(local, "data/ab/cd", expect=expected)
    assert sent == hash_file(local) != expected
    assert store.read_bytes("data/ab/cd") is None
    assert store.sizes("tmp") == {}
    with store.open_read("runs/x/files/f.bin") as f:
        assert f.read() == b"version 1"


def test_local_store_never_goes_through_a_symlink(tmp_path: Path) -> None:
    """Reads, writes, listings and removals below the root refuse or skip planted links."""
    store, elsewhere = LocalStore(tmp_path / "store"), tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret").write_bytes(b"secret")
    store.write_bytes("runs/a/manifest.json", b"{}")
    (store.root / "runs" / "b").symlink_to(elsewhere, target_is_directory=True)
    (store.root / "runs" / "a" / "leak").symlink_to(elsewhere / "secret")
    with pytest.raises(UnsafePathError, match=r"runs/b is a symlink"):
        store.read_bytes("runs/b/secret")
    with pytest.raises(UnsafePathError, match=r"runs/a/leak is a symlink"):
        store.read_bytes("runs/a/leak")
    with pytest.raises(UnsafePathError, match=r"runs/b is a symlink"):
        store.write_bytes("runs/b/planted", b"x")
    assert store.children("runs") == ["a"]
    assert store.sizes("runs") == {"a/manifest.json": 2}
    assert store.strays("runs/a") == ["leak"]
    store.remove(["runs/a/leak"])
    assert sorted(p.name for p in elsewhere.iterdir()) == ["secret"]
    assert (elsewhere / "secret").read_bytes() == b"secret"


def test_sweep_removes_only_old_temporary_files(tmp_path: Path) -> None:
    """A killed writer's temporary file goes after a day; a writer's in flight stays."""
    store = LocalStore(tmp_path / "store")
    store.write_bytes("k", b"v")
    old, fresh = store.root / "tmp" / "old.1", store.root / "tmp" / "fresh.2"
    old.write_bytes(b"left by a killed push")
    fresh.write_bytes(b"being written")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (day_ago, day_ago))
    store.sweep_tmp(older_than_s=24 * 3600)
    assert sorted(p.name for p in (store.root / "tmp").iterdir()) == ["fresh.2"]
