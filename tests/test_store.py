"""Push and pull: a run's whole lineage (run directories + code) through a store and back."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import xxhash

from helpers import SRC
from xpkit._core._lock import RunLock, load_lock, new_run_id, write_lock
from xpkit._core._settings import clear_settings_cache
from xpkit._record._git import snapshot
from xpkit._share._store import hash_file, list_store, pull, push
from xpkit.errors import StoreError, UnsafePathError


def git(cwd: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=check, capture_output=True, text=True)
    return out.stdout.strip()


def xp(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run(
        [sys.executable, "-m", "xpkit", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def isolate(mp: pytest.MonkeyPatch) -> None:
    """What conftest's per-test fixture does, for the module-scoped one below."""
    for kind in ("AUTHOR", "COMMITTER"):
        mp.setenv(f"GIT_{kind}_NAME", "Test")
        mp.setenv(f"GIT_{kind}_EMAIL", "test@example.com")
    mp.delenv("XPKIT_ROOT", raising=False)
    clear_settings_cache()


def make_repo(tmp_path: Path) -> tuple[Path, Path]:
    """Repo A with one pushed commit on main, and its bare origin."""
    origin, a = tmp_path / "origin.git", tmp_path / "A"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    git(tmp_path, "init", "-q", "-b", "main", str(a))
    (a / ".gitignore").write_text("results/\n__pycache__/\n")
    (a / "lib.py").write_text("VALUE = 1\n")
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "init")
    git(a, "remote", "add", "origin", str(origin))
    git(a, "push", "-q", "origin", "main")
    return a, origin


def clone(origin: Path, dest: Path) -> Path:
    git(origin.parent, "clone", "-q", str(origin), str(dest))
    return dest


def make_run(
    root: Path,
    rel: str,
    files: dict[str, bytes],
    *,
    upstream: dict[str, Any] | None = None,
    stage: str = "prepare",
) -> RunLock:
    """A run directory made by hand, with a real code snapshot of ``root``."""
    run_dir = root / rel
    for name, data in files.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(data)
    snap = snapshot(root, message=f"xpkit: {stage} {rel}")
    lock = RunLock(
        id=new_run_id(),
        stage=stage,
        dir=rel,
        status="completed",
        started="2026-01-02T03:04:05+00:00",
        src={"commit": snap.commit, "head": snap.head, "dirty": snap.dirty},
        upstream=upstream,
    )
    write_lock(run_dir / "run.lock", lock)
    return lock


def lineage(root: Path) -> tuple[RunLock, RunLock]:
    """prepare → train, made by hand in ``root``."""
    prep = make_run(root, "results/prepare/p1", {"out.txt": b"rows\n", "tasks/done/w.jsonl": b""})
    (root / "lib.py").write_text("VALUE = 2  # uncommitted\n")
    train = make_run(
        root,
        "results/train/t1",
        {"model.bin": b"weights", ".xpkit/state": b"{}"},
        upstream={"prep": prep.to_dict()},
        stage="train",
    )
    return prep, train


def tree(top: Path) -> dict[str, str]:
    return {
        p.relative_to(top).as_posix(): hash_file(p) for p in sorted(top.rglob("*")) if p.is_file()
    }


def test_pull_brings_lineage_and_code_into_a_fresh_clone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand-made prepare → train lineage pushed from A comes back whole in a clone B."""
    a, origin = make_repo(tmp_path)
    monkeypatch.chdir(a)
    prep, train = lineage(a)
    report = push([train.id], store=tmp_path / "store", git_remote="origin")
    assert [r["id"] for r in report.runs] == [prep.id, train.id]
    assert len(report.bundles) == 1
    remote_refs = git(a, "ls-remote", "origin", "refs/xpkit/runs/*")
    assert {line.split()[1] for line in remote_refs.splitlines()} == {
        f"refs/xpkit/runs/{prep.id}",
        f"refs/xpkit/runs/{train.id}",
    }

    b = clone(origin, tmp_path / "B")
    monkeypatch.chdir(b)
    head, status = git(b, "rev-parse", "HEAD"), git(b, "status", "--porcelain")
    pulled = pull(train.id[:6], store=tmp_path / "store")
    assert [r["state"] for r in pulled.runs] == ["copied", "copied"]
    for lock in (prep, train):
        assert tree(b / lock.dir) == tree(a / lock.dir)
        assert git(b, "rev-parse", f"refs/xpkit/runs/{lock.id}") == lock.src["commit"]  # type: ignore[index]
    assert (b / prep.dir / "tasks" / "done" / "w.jsonl").is_file()
    assert git(b, "rev-parse", "run_logs") == train.src["commit"]  # type: ignore[index]
    assert git(b, "show", f"{train.src['commit']}:lib.py") == "VALUE = 2  # uncommitted"  # type: ignore[index]
    assert (git(b, "rev-parse", "HEAD"), git(b, "status", "--porcelain")) == (head, status)

    again = pull(train.id, store=tmp_path / "store")
    assert [r["state"] for r in again.runs] == ["present", "present"]
    (b / train.dir / "model.bin").write_bytes(b"changed")
    differs = pull(train.id, store=tmp_path / "store")
    assert differs.runs[1]["state"] == "differs"
    assert differs.runs[1]["differing"] == ["model.bin"]
    assert (b / train.dir / "model.bin").read_bytes() == b"changed"


def test_push_sends_only_what_the_store_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second push sends nothing; a changed file is sent alone; a new run adds a small bundle."""
    a, _ = make_repo(tmp_path)
    monkeypatch.chdir(a)
    prep, train = lineage(a)
    store = tmp_path / "store"
    push([a / train.dir], store=store)
    second = push([a / train.dir], store=store)
    assert [r["state"] for r in second.runs] == ["unchanged", "unchanged"]
    assert second.bundles == []

    (a / train.dir / "model.bin").write_bytes(b"weights2")
    third = push([a / train.dir], store=store)
    assert [r["state"] for r in third.runs] == ["unchanged", "sent"]
    assert (third.runs[1]["sent_files"], third.runs[1]["sent_bytes"]) == (1, 8)
    assert (store / "runs" / train.id / "files" / "model.bin").read_bytes() == b"weights2"

    (a / "lib.py").write_text("VALUE = 3\n")
    other = make_run(a, "results/train/t2", {"m": b"x"}, upstream={"prep": prep.to_dict()})
    fourth = push([other.id], store=store)
    assert len(fourth.bundles) == 1
    meta = json.loads((store / "code" / f"{fourth.bundles[0]}.json").read_text())
    assert meta["prerequisites"], "the new bundle builds on the first one"


def test_push_of_a_stage_directory_sends_all_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xp push results/train: every train run, each with its lineage, the upstream once."""
    a, _ = make_repo(tmp_path)
    monkeypatch.chdir(a)
    prep, train = lineage(a)
    other = make_run(
        a, "results/train/t2", {"m": b"x"}, upstream={"prep": prep.to_dict()}, stage="train"
    )
    (a / "results" / "train" / "latest").symlink_to("t2")
    out = xp(a, "push", "results/train", "--store", str(tmp_path / "store")).stdout
    assert out.count(prep.id) == 1
    assert "pushed 3 runs" in out
    held = {r.id for r in list_store(tmp_path / "store") if r.complete}
    assert held == {prep.id, train.id, other.id}


def test_push_finds_a_moved_upstream_run_by_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream run moved away from its recorded dir is found by id and stored as recorded."""
    a, _ = make_repo(tmp_path)
    monkeypatch.chdir(a)
    prep, train = lineage(a)
    (a / prep.dir).rename(a / "results" / "prepare" / "moved")
    push([train.id], store=tmp_path / "store")
    manifest = json.loads((tmp_path / "store" / "runs" / prep.id / "manifest.json").read_text())
    assert manifest["dir"] == prep.dir
    shutil.rmtree(a / "results" / "prepare")
    with pytest.raises(StoreError, match=prep.id):
        push([train.id], store=tmp_path / "other")


def test_store_ls_lists_what_a_store_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """xp store ls shows each run's id, stage, dir, size and completeness."""
    a, _ = make_repo(tmp_path)
    monkeypatch.chdir(a)
    prep, train = lineage(a)
    push([train.id], store=tmp_path / "store")
    (tmp_path / "store" / "runs" / prep.id / "COMPLETE").unlink()
    runs = {r.id: r for r in list_store(tmp_path / "store")}
    assert runs[train.id].stage == "train"
    assert runs[train.id].complete
    assert not runs[prep.id].complete
    out = xp(a, "store", "ls", "--store", str(tmp_path / "store"), "--format", "json").stdout
    assert {r["id"]: r["dir"] for r in json.loads(out)} == {prep.id: prep.dir, train.id: train.dir}
    table = xp(a, "store", "ls", "--store", str(tmp_path / "store")).stdout
    assert train.dir in table
    assert "NO" in table


def test_no_store_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --store nor [tool.xpkit] store, push says so in one line."""
    a, _ = make_repo(tmp_path)
    monkeypatch.chdir(a)
    _, train = lineage(a)
    proc = xp(a, "push", train.id, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "no store given" in proc.stderr
    (a / "pyproject.toml").write_text('[tool.xpkit]\nstore = "../cfg-store"\n')
    xp(a, "push", train.id)
    assert (tmp_path / "cfg-store" / "runs" / train.id / "COMPLETE").is_file()


def test_pull_link_symlinks_run_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--link makes each run directory a symlink into a filesystem store."""
    a, origin = make_repo(tmp_path)
    monkeypatch.chdir(a)
    prep, train = lineage(a)
    push([train.id], store=tmp_path / "store")
    b = clone(origin, tmp_path / "B")
    monkeypatch.chdir(b)
    proc = xp(b, "pull", train.id, "--store", str(tmp_path / "store"), "--link")
    assert proc.stdout.count("linked") == 2
    for lock in (prep, train):
        assert (b / lock.dir).is_symlink()
        assert load_lock(b / lock.dir).id == lock.id
    assert (b / prep.dir).resolve() == (tmp_path / "store" / "runs" / prep.id / "files").resolve()
    rows = push([train.id], store=tmp_path / "store").runs
    assert [r["state"] for r in rows] == ["unchanged", "unchanged"]
    (b / train.dir / "model.bin").write_bytes(b"edited through the link")
    with pytest.raises(StoreError, match="linked from this store"):
        push([train.id], store=tmp_path / "store")
    assert (b / train.dir / "model.bin").read_bytes() == b"edited through the link"


def test_push_refuses_a_symlink_pointing_out_of_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link inside a run directory is pushed as a link; one pointing outside is refused."""
    a, _ = make_repo(tmp_path)
    monkeypatch.chdir(a)
    prep, _ = lineage(a)
    os.symlink("out.txt", a / prep.dir / "alias.txt")
    push([prep.id], store=tmp_path / "store")
    manifest = json.loads((tmp_path / "store" / "runs" / prep.id / "manifest.json").read_text())
    assert manifest["files"]["alias.txt"] == {"link": "out.txt"}
    os.symlink("../../../lib.py", a / prep.dir / "escape.py")
    with pytest.raises(UnsafePathError, match=r"escape\.py"):
        push([prep.id], store=tmp_path / "store2")
    assert not (tmp_path / "store2").exists()


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A lineage pushed from A to a store, and a clone B of A's origin (made once)."""
    tmp = tmp_path_factory.mktemp("pushed")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp)
        a, origin = make_repo(tmp)
        mp.chdir(a)
        prep, train = lineage(a)
        push([train.id], store=tmp / "store")
    return prep, train, clone(origin, tmp / "B"), tmp / "store"


def tamper(store: Path, run_id: str, change: Any) -> None:
    """Rewrite a stored run's manifest (and its COMPLETE marker, so that it looks whole)."""
    path = store / "runs" / run_id / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest, store / "runs" / run_id)
    data = json.dumps(manifest).encode()
    path.write_bytes(data)
    (path.parent / "COMPLETE").write_text(f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}\n")


def _file_entry(name: str, data: bytes) -> Any:
    def change(manifest: dict[str, Any], run_dir: Path) -> None:
        manifest["files"][name] = {"size": len(data), "hash": f"xxh3_128:{'0' * 32}"}

    return change


def _link_entry(name: str, target: str) -> Any:
    def change(manifest: dict[str, Any], run_dir: Path) -> None:
        manifest["files"][name] = {"link": target}

    return change


def _manifest_dir(value: str) -> Any:
    def change(manifest: dict[str, Any], run_dir: Path) -> None:
        manifest["dir"] = value

    return change


def _lock_dir(value: str) -> Any:
    def change(manifest: dict[str, Any], run_dir: Path) -> None:
        lock = run_dir / "files" / "run.lock"
        lock.write_text(lock.read_text().replace("dir: results/prepare/p1", f"dir: {value}"))
        size, digest = lock.stat().st_size, hash_file(lock)
        manifest["files"]["run.lock"] = {"size": size, "hash": digest}

    return change


@pytest.mark.parametrize(
    "change",
    [
        _file_entry("../../x", b"pwned"),
        _file_entry("/tmp/x", b"pwned"),
        _file_entry("a/../../../x", b"pwned"),
        _link_entry("evil", "../../../../x"),
        _link_entry("evil", "/etc/passwd"),
        _link_entry("evil", "sub/../../../.."),
        _manifest_dir("../outside"),
        _manifest_dir("/tmp/outside"),
        _manifest_dir(".git/hooks"),
        _lock_dir("../../outside"),
        ("train", _lock_dir("/tmp/outside")),
    ],
    ids=[
        "dotdot-file",
        "absolute-file",
        "inner-dotdot-file",
        "escaping-link",
        "absolute-link",
        "lexical-link",
        "dotdot-dir",
        "absolute-dir",
        "git-dir",
        "lock-dir",
        "upstream-lock-dir",
    ],
)
def test_pull_refuses_entries_that_write_outside_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pushed: Any, change: Any
) -> None:
    """A malicious store entry or run.lock is refused with UnsafePathError; nothing is written."""
    prep, train, b, template = pushed
    store = tmp_path / "store"
    shutil.copytree(template, store)
    which, change = change if isinstance(change, tuple) else ("prep", change)
    tamper(store, (prep if which == "prep" else train).id, change)
    monkeypatch.chdir(b)
    refs_before = git(b, "for-each-ref")
    before = sorted(p.relative_to(b.parent).as_posix() for p in b.parent.rglob("*"))
    with pytest.raises(UnsafePathError, match=r"unsafe|says"):
        pull(train.id, store=store)
    after = sorted(p.relative_to(b.parent).as_posix() for p in b.parent.rglob("*"))
    assert after == before
    assert git(b, "for-each-ref") == refs_before
    if which == "train":  # the command line says it in one line too
        proc = xp(b, "pull", train.id, "--store", str(store), check=False)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1


def test_pull_refuses_a_commit_that_is_not_a_sha(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pushed: Any
) -> None:
    """A manifest whose code commit is not a full sha (an option for git, say) is refused."""
    _, train, b, template = pushed
    store = tmp_path / "store"
    shutil.copytree(template, store)

    def change(manifest: dict[str, Any], run_dir: Path) -> None:
        manifest["code"]["commit"] = "--upload-pack=touch pwned"

    tamper(store, train.id, change)
    monkeypatch.chdir(b)
    with pytest.raises(StoreError, match="not valid"):
        pull(train.id, store=store)
    assert not (b / "results").exists()


def test_pull_refuses_a_file_that_fails_its_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored file whose bytes do not match the manifest is refused; no run dir appears."""
    a, origin = make_repo(tmp_path)
    monkeypatch.chdir(a)
    _, train = lineage(a)
    push([train.id], store=tmp_path / "store")
    (tmp_path / "store" / "runs" / train.id / "files" / "model.bin").write_bytes(b"WEIGHTS")
    b = clone(origin, tmp_path / "B")
    monkeypatch.chdir(b)
    with pytest.raises(StoreError, match="does not match its hash"):
        pull(train.id, store=tmp_path / "store")
    assert not (b / train.dir).exists()
    assert [p.name for p in (b / train.dir).parent.iterdir()] == []


def test_killed_push_is_completed_by_the_next_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push SIGKILLed half-way leaves no COMPLETE; the next push finishes a verified store."""
    a, _ = make_repo(tmp_path)
    monkeypatch.chdir(a)
    files = {f"shard/{i:04d}.bin": os.urandom(32 * 1024) for i in range(1500)}
    run = make_run(a, "results/big/r1", files, stage="big")
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "xpkit", "push", run.id, "--store", str(store)]
    proc = subprocess.Popen(cmd, cwd=a, env=env, stdout=subprocess.DEVNULL)
    shard = store / "runs" / run.id / "files" / "shard"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if shard.is_dir() and len(os.listdir(shard)) >= 100:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_store = store / "runs" / run.id
    sent = len(os.listdir(shard))
    assert 100 <= sent < len(files), "the push was killed half-way"
    assert not (run_store / "COMPLETE").exists()
    assert not any(r.complete for r in list_store(store))

    report = push([run.id], store=store)
    row = report.runs[0]
    assert row["state"] == "sent"
    assert row["sent_files"] <= len(files) + 1 - sent + 8  # only what was missing (+ in-flight)
    manifest = json.loads((run_store / "manifest.json").read_text())
    stored = tree(run_store / "files")
    assert stored == {k: e["hash"] for k, e in manifest["files"].items() if "hash" in e}
    assert stored == tree(a / run.dir)
    assert [r.complete for r in list_store(store)] == [True]


@pytest.fixture(scope="module")
def s3_server() -> Any:
    """A local S3-compatible server (moto) on a free port of 127.0.0.1; yields its endpoint."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    # port 0: the server binds a port the kernel picks, so no other process can take it
    # between choosing and binding (a taken port would leave start() waiting forever)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_store(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; botocore (under s3fs) finds the server through AWS_ENDPOINT_URL."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"xpkit-{new_run_id()}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/team/store"


def test_s3_store_round_trip_of_a_hand_made_lineage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_store: str
) -> None:
    """Push to and pull from an s3:// URL; a second push sends nothing; ls reads it."""
    a, origin = make_repo(tmp_path)
    monkeypatch.chdir(a)
    prep, train = lineage(a)
    assert [r["state"] for r in push([train.id], store=s3_store).runs] == ["sent", "sent"]
    assert [r["state"] for r in push([train.id], store=s3_store).runs] == ["unchanged"] * 2
    assert {r.id: r.complete for r in list_store(s3_store)} == {prep.id: True, train.id: True}
    b = clone(origin, tmp_path / "B")
    monkeypatch.chdir(b)
    with pytest.raises(StoreError, match="filesystem"):
        pull(train.id, store=s3_store, link=True)
    pulled = pull(train.id, store=s3_store)
    assert [r["state"] for r in pulled.runs] == ["copied", "copied"]
    assert tree(b / train.dir) == tree(a / train.dir)
    assert git(b, "rev-parse", "run_logs") == train.src["commit"]  # type: ignore[index]


PREPARE = """\
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class Config:
    n: int = 5


@xp.stage
def main(cfg: Config):
    rows = "".join(f"{i * i}\\n" for i in range(cfg.n))
    (Path(cfg.save_dir) / "rows.txt").write_text(rows)
"""

TRAIN = """\
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class Config:
    prep: str = ""
    scale: int = 2


@xp.stage(upstream=["prep"])
def main(cfg: Config):
    rows = (Path(cfg.prep) / "rows.txt").read_text().split()
    total = sum(int(r) * cfg.scale for r in rows)
    (Path(cfg.save_dir) / "model.txt").write_text(f"{total}\\n")
    return total
"""


def load_stage(path: Path) -> Any:
    """Import a stage script by path (a fresh module each time)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{path.stem}_{new_run_id()}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("kind", ["directory", "s3"])
def test_real_pipeline_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, kind: str
) -> None:
    """prepare → train in A, pushed; pulled into a clone B: same dirs, same code, same output."""
    from xpkit._record._git import checkout

    store = str(tmp_path / "store") if kind == "directory" else request.getfixturevalue("s3_store")
    a, origin = make_repo(tmp_path)
    (a / "prepare.py").write_text(PREPARE)
    (a / "train.py").write_text(TRAIN)
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "stages")
    git(a, "push", "-q", "origin", "main")
    (a / "train.py").write_text(TRAIN.replace("scale: int = 2", "scale: int = 3  # edited"))
    monkeypatch.chdir(a)
    prepare, train = load_stage(a / "prepare.py"), load_stage(a / "train.py")
    prepare()
    prep_run = prepare.last
    assert train(prep=prep_run.lock.dir) == 90
    train_run = train.last
    assert train_run.lock.upstream["prep"]["id"] == prep_run.id
    commit = train_run.lock.src["commit"]

    t0 = time.monotonic()
    xp(a, "push", train_run.id[:8], "--store", store)
    push_s = time.monotonic() - t0

    b = clone(origin, tmp_path / "B")
    monkeypatch.chdir(b)
    assert not (b / "results").exists()
    assert git(b, "cat-file", "-t", commit, check=False) != "commit"
    t0 = time.monotonic()
    xp(b, "pull", train_run.id[:8], "--store", store)
    pull_s = time.monotonic() - t0
    for run in (prep_run, train_run):
        assert tree(b / run.lock.dir) == tree(run.dir)
    worktree = checkout(b, commit, tmp_path / "train-code")
    assert (worktree / "train.py").read_bytes() == (a / "train.py").read_bytes()

    clear_settings_cache()
    again = load_stage(worktree / "train.py")
    assert again(prep=prep_run.lock.dir) == 90
    new_model = again.last.dir / "model.txt"
    assert new_model.parent.parent == b / "results" / "train"
    assert hash_file(new_model) == hash_file(train_run.dir / "model.txt")
    print(f"{kind}: push {push_s:.2f} s, pull {pull_s:.2f} s (2 runs)")
