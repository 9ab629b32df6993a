"""The head cache of listings under other processes adding, removing and rewriting runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import xpkit as xp
from helpers import SRC
from xpkit._catalog._runindex import RunIndex
from xpkit._core._lock import RunLock, load_lock, write_lock
from xpkit._core._settings import clear_settings_cache

HOUR_NS = 3600 * 10**9

WRITER = """
import random, shutil, sys, time
from pathlib import Path
from xpkit._core._lock import RunLock, load_lock, write_lock

root, seed, until = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(seed)
n = 0
while time.time() < until:
    runs = sorted(p for p in root.iterdir() if (p / "run.lock").is_file())
    action = rng.choice(["add", "rewrite", "rewrite", "rewrite", "remove"])
    if action == "add" or not runs:
        n += 1
        d = root / f"w{seed}-{n:04d}"
        d.mkdir()
        write_lock(d / "run.lock", RunLock(id=f"w{seed}n{n:04d}", stage="train",
            dir=str(d), status="running", config={"lr": 0.1}, metrics={"acc": 0.1111}))
    elif action == "rewrite":
        d = rng.choice(runs)
        try:
            lock = load_lock(d / "run.lock")
            # same size on purpose: only the content and the (maybe reused) inode change
            acc = f"0.{rng.randrange(1000, 9999)}"
            write_lock(d / "run.lock", lock.replace(metrics={"acc": float(acc)}))
        except Exception:
            pass  # removed meanwhile by another writer
    else:
        shutil.rmtree(rng.choice(runs), ignore_errors=True)
"""

LISTER = """
import sys, time
import xpkit as xp

until = float(sys.argv[1])
while time.time() < until:
    xp.runs()
"""


def _truth(root: Path) -> dict[str, tuple[str, str, object]]:
    """Every run under ``root`` read in full: dir -> (id, status, metrics)."""
    out = {}
    for lock_path in sorted(root.rglob("run.lock")):
        lock = load_lock(lock_path)
        out[str(lock_path.parent)] = (lock.id, lock.status, lock.metrics)
    return out


def _listed() -> dict[str, tuple[str, str, object]]:
    clear_settings_cache()
    return {os.path.realpath(r.dir): (r.id, r.status, r.metrics) for r in xp.runs()}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose results/train holds 20 runs written an hour ago."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XPKIT_ROOT", str(tmp_path))
    clear_settings_cache()
    train = tmp_path / "results" / "train"
    for i in range(20):
        d = train / f"r{i:03d}"
        d.mkdir(parents=True)
        lock = RunLock(id=f"r{i:03d}", stage="train", dir=str(d), status="completed",
                       config={"lr": 0.1}, metrics={"acc": 0.5})  # fmt: skip
        write_lock(d / "run.lock", lock)
        past = time.time_ns() - HOUR_NS
        os.utime(d / "run.lock", ns=(past, past))
    return tmp_path


def test_listings_stay_true_while_other_processes_add_remove_and_rewrite(
    project: Path,
) -> None:
    """Three writers and two listers share one results directory for three seconds; every
    listing afterwards, from the index they left, equals a full read of every run.lock."""
    train = project / "results" / "train"
    env = {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_ROOT": str(project)}
    until = str(time.time() + 3)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(train), str(seed), until], env=env)
        for seed in range(3)
    ]
    procs += [
        subprocess.Popen([sys.executable, "-c", LISTER, until], cwd=project, env=env)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    truth = _truth(train)
    assert len(truth) > 0
    assert _listed() == truth
    assert _listed() == truth  # from the index the first listing wrote
    past = time.time_ns() - HOUR_NS
    for lock_path in train.rglob("run.lock"):
        os.utime(lock_path, ns=(past, past))
    assert _listed() == truth  # now cached
    assert (project / "results" / ".xpkit" / "runs.marshal").is_file()
    assert _listed() == truth


def test_a_lock_rewritten_in_the_same_tick_is_never_served_stale(tmp_path: Path) -> None:
    """Same size, same mtime_ns, same inode (an in-place rewrite within one timestamp
    tick): the head of a lock written just now is not cached, so the rewrite is seen."""
    lock_path = tmp_path / "run.lock"
    write_lock(lock_path, RunLock(id="a", stage="s", dir="d", status="completed",
                                  metrics={"acc": 0.25}))  # fmt: skip
    index = RunIndex(tmp_path / "index")
    assert index.head(str(lock_path)).metrics == {"acc": 0.25}
    st = lock_path.stat()
    with lock_path.open("r+") as f:  # same inode, same size
        f.write(lock_path.read_text().replace("0.25", "0.75"))
    os.utime(lock_path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same tick
    assert index.head(str(lock_path)).metrics == {"acc": 0.75}
    index.save()
    assert RunIndex(tmp_path / "index").head(str(lock_path)).metrics == {"acc": 0.75}


def test_a_damaged_index_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    """Garbage, a foreign version or entries of the wrong shape: heads are read again."""
    lock_path = tmp_path / "run.lock"
    write_lock(lock_path, RunLock(id="a", stage="s", dir="d", status="completed"))
    past = time.time_ns() - HOUR_NS
    os.utime(lock_path, ns=(past, past))
    st = lock_path.stat()
    stamp = [st.st_mtime_ns, st.st_size, st.st_ino]
    import marshal

    for blob in (
        b"\x00garbage",
        marshal.dumps({"version": 1, "entries": {}}),
        marshal.dumps({"version": 4, "entries": {str(lock_path): [*stamp, {"lock": 5}]}}),
        marshal.dumps({"version": 4, "entries": {str(lock_path): [*stamp, ["x"]]}}),
        marshal.dumps({"version": 4, "entries": {str(lock_path): [*stamp, {"lock": {}}]}}),
    ):
        (tmp_path / "index").write_bytes(blob)
        assert RunIndex(tmp_path / "index").head(str(lock_path)).id == "a"
