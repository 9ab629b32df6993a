"""The head cache of listings under other processes adding, removing and rewriting runs."""

from __future__ import annotations

import os
import shutil
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
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Path:
    """A project whose results/train holds 20 runs (or the number given) written an hour ago."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XPKIT_ROOT", str(tmp_path))
    clear_settings_cache()
    train = tmp_path / "results" / "train"
    for i in range(getattr(request, "param", 20)):
        d = train / f"r{i:03d}"
        d.mkdir(parents=True)
        lock = RunLock(id=f"r{i:03d}", stage="train", dir=str(d), status="completed",
                       config={"lr": 0.1}, metrics={"acc": 0.5})  # fmt: skip
        write_lock(d / "run.lock", lock)
        past = time.time_ns() - HOUR_NS
        os.utime(d / "run.lock", ns=(past, past))
    return tmp_path


@pytest.mark.parametrize("project", [20, 100], indirect=True)  # 100: columns coded
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
    coded = RunIndex(_index_file(project)).table.coded
    assert ("config.lr" in coded) == (len(truth) >= 64)


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


def _index_file(project: Path) -> Path:
    return project / "results" / ".xpkit" / "runs.marshal"


def test_a_damaged_index_file_is_never_trusted(project: Path) -> None:
    """Cut short anywhere, bytes flipped, a foreign header, a section of the wrong shape,
    paths that do not decode: every listing still equals a full read, and nothing raises."""
    import marshal
    import struct

    from xpkit._catalog._runindex import _HEADER, _MAGIC

    train = project / "results" / "train"
    truth = _truth(train)
    assert _listed() == truth
    good = _index_file(project).read_bytes()
    size = struct.unpack("<Q", good[16:24])[0]
    section = marshal.loads(good[24 : 24 + size])

    def framed(changed: dict[str, object]) -> bytes:
        data = marshal.dumps({**section, **changed})
        return _HEADER.pack(_MAGIC, len(data)) + data + good[24 + size :]

    def recoded(stored: tuple[object, ...]) -> bytes:
        """config.lr (0.1 in every run) as a coded column stored as given."""
        plain = {k: v for k, v in section["columns"].items() if k != "config.lr"}
        return framed({"columns": plain, "coded": {"config.lr": stored}})

    assert section["columns"]["config.lr"] == [0.1] * 20
    assert recoded(([0.1], b"\x00" * 20, 1))  # as it would be stored
    damaged = [good[:n] for n in (0, 10, 24, 100, 24 + size, len(good) - 7)]
    damaged += [good[:200] + bytes(b ^ 0xFF for b in good[200:260]) + good[260:]]
    damaged += [b"xpkit runindex 6" + good[16:], good[:16] + struct.pack("<Q", 10**12) + good[24:]]
    damaged += [
        framed({"found": b"\x00garbage"}),
        framed({"found": marshal.dumps((["x"], [(1, 2, 3)]), 0)}),
        framed({"found": marshal.dumps([("x", "a\0b", [(1, 2, 3)])], 0)}),
        framed({"found": marshal.dumps([("x", ["a"], [(1, 2, 3)])], 0)}),
        framed({"shape": section["shape"][:-1]}),
        framed({"at": list(reversed(section["at"]))}),
        framed({"columns": {"id": [1]}}),
        recoded(([0.1], b"\x01" * 20, 1)),  # a code beyond the values
        recoded(([0.1], b"\x00" * 19, 1)),  # a row short
        recoded(([1, True], b"\x00\x01" * 10, 1)),  # 1 == True: not a column it codes
        recoded(([[0.1]], b"\x00" * 20, 1)),
        recoded(([0.1], b"\x00" * 20, 3)),
        framed({"coded": {"id": (["a"], b"\x00" * 20, 1)}}),  # also a plain column
        framed({"coded": []}),
        framed({"errors": {"x": "no"}}),
    ]
    for blob in damaged:
        _index_file(project).write_bytes(blob)
        assert _listed() == truth
        assert [r.config for r in xp.runs()]  # heads come back whole, or are read again


def test_runs_made_from_the_cache_have_their_whole_head(project: Path) -> None:
    """A Run made from a cached row has the head its run.lock has: nested config, src,
    data, metrics, tasks and keys this version does not know."""
    from xpkit._catalog._head import read_head

    lock_path = project / "results" / "train" / "r000" / "run.lock"
    lock = load_lock(lock_path).replace(
        config={"model": {"depth": 3, "widths": [1, 2]}, "lr": 0.1},
        src={"commit": "c" * 40, "dirty": True},
        data={"raw": {"path": "data/raw", "hash": "xxh3_128:ab"}},
        tasks={"total": 3, "done": 3, "failed": 0},
        extra={"sweep": {"id": "s1", "point": 1, "total": 2}, "future_key": [1]},
    )
    write_lock(lock_path, lock)
    past = time.time_ns() - HOUR_NS
    os.utime(lock_path, ns=(past, past))
    xp.runs()  # reads and caches
    for _ in range(2):
        cached = {os.path.realpath(r.dir): r for r in xp.runs()}
        run = cached[str(lock_path.parent)]
        assert run._brief == read_head(lock_path)
        assert run.config.model.widths == [1, 2]


def test_a_listing_of_one_stage_keeps_the_others_cached(project: Path) -> None:
    """Listing results/train after a change there keeps the heads of the other stages."""
    from xpkit._catalog._runindex import RunIndex

    other = project / "results" / "prepare" / "p000"
    other.mkdir(parents=True)
    write_lock(other / "run.lock", RunLock(id="p000", stage="prepare", dir=str(other),
                                           status="completed"))  # fmt: skip
    past = time.time_ns() - HOUR_NS
    os.utime(other / "run.lock", ns=(past, past))
    assert len(xp.runs()) == 21
    new = project / "results" / "train" / "r999"
    new.mkdir()
    write_lock(new / "run.lock", RunLock(id="r999", stage="train", dir=str(new),
                                         status="completed"))  # fmt: skip
    os.utime(new / "run.lock", ns=(past, past))
    assert len(xp.runs("results/train")) == 21
    index = RunIndex(_index_file(project))
    index._decode()
    assert {os.path.basename(os.path.dirname(lock)) for lock in index._locks} >= {"p000", "r999"}
    assert len(xp.runs()) == 22


def test_a_broken_lock_stays_skipped_until_it_changes(project: Path) -> None:
    """A lock that cannot be read is skipped with the same message from the cache, and
    listed once it is repaired."""
    lock_path = project / "results" / "train" / "r003" / "run.lock"
    good = lock_path.read_text()
    lock_path.write_text("xpkit: 1\nid: [broken\n")
    past = time.time_ns() - HOUR_NS
    os.utime(lock_path, ns=(past, past))
    first = xp.runs()
    again = xp.runs()
    assert len(first) == len(again) == 19
    assert first.skipped == again.skipped
    assert len(again.skipped) == 1
    assert str(lock_path) in again.skipped[0]
    lock_path.write_text(good)
    os.utime(lock_path, ns=(past + 10**9, past + 10**9))
    repaired = xp.runs()
    assert (len(repaired), repaired.skipped) == (20, [])


def test_a_listing_right_after_a_write_is_never_stale(project: Path) -> None:
    """A lock rewritten in place within its mtime tick, between two listings: the second
    listing shows the new content (a head of a lock this recent is never cached)."""
    lock_path = project / "results" / "train" / "r001" / "run.lock"
    write_lock(lock_path, load_lock(lock_path).replace(metrics={"acc": 0.25}))
    assert {r.id: r.metrics for r in xp.runs()}["r001"] == {"acc": 0.25}
    st = lock_path.stat()
    with lock_path.open("r+") as f:  # same inode, same size
        f.write(lock_path.read_text().replace("0.25", "0.75"))
    os.utime(lock_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    listed = xp.runs()
    assert {r.id: r.metrics for r in listed}["r001"] == {"acc": 0.75}
    assert listed.where("metrics.acc > 0.5")[0].id == "r001"


def test_unchanged_runs_listed_again_are_one_comparison(project: Path) -> None:
    """A second listing of the same unchanged runs, walked or named one by one in any order,
    finds the index's runs and stamps equal in one comparison (no lookup per run)."""
    from xpkit._catalog._runs import _find
    from xpkit._core._settings import load_settings

    train = project / "results" / "train"
    named = [str(d) for d in sorted(train.iterdir(), reverse=True)]
    for paths, removed in ((None, None), (named, None), (None, None), (None, "r005")):
        if removed:  # by hand: the listing after drops it from the index
            shutil.rmtree(train / removed)
            named.remove(str(train / removed))
        first = xp.runs(paths)
        found = _find(paths, settings=load_settings())
        index = RunIndex(_index_file(project))
        rows, skipped = index.lookup(found)
        assert index._unchanged
        assert (len(rows), skipped) == (len(named), [])
        ids = [index.table.column("id")[r] for r in rows]
        assert ids == [os.path.basename(d) for d in found.dirs()]
        assert sorted(ids) == sorted(r.id for r in first)
