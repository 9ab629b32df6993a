"""Fault injection: corrupt files, hostile records, killed writers, stale git locks, read-only
results. Real runs of real stages (in subprocesses), then every command that reads what broke:
each gives its exit status and one exact line, never a traceback, and loses nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import xxhash
import yaml

import xpkit as xp
from helpers import SRC, import_project
from xpkit._catalog._run import Run
from xpkit._cli._main import main as xp_main
from xpkit._core._lock import RunLock, load_lock, write_lock
from xpkit._core._paths import RunPaths, is_write_temp
from xpkit._core._settings import clear_settings_cache
from xpkit._core._yaml import dump_yaml
from xpkit._record import _git
from xpkit.errors import LockError

PIPELINE = """
import sys
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class PrepareConfig:
    n: int = 3


@xp.stage(name="prepare")
def prepare(cfg: PrepareConfig):
    (Path(cfg.save_dir) / "rows.txt").write_text("\\n".join(map(str, range(cfg.n))))
    xp.log_metrics({"rows": cfg.n})


@dataclass
class TrainConfig:
    prepared: str = "results/prepare/latest"
    lr: float = 0.01


@xp.stage(name="train", upstream=["prepared"])
def train(cfg: TrainConfig):
    xp.log_metrics({"acc": 0.5 + cfg.lr})


@dataclass
class SquareConfig:
    x: int = 0


@xp.stage(name="square")
def square(cfg: SquareConfig):
    xp.log_metrics({"square": cfg.x * cfg.x})


if __name__ == "__main__":
    xp.run({"prepare": prepare, "train": train, "square": square}[sys.argv.pop(1)])
"""

# corrupt kind -> what the file becomes is made by ``corrupt``; the detail every reader says
KINDS = ("binary", "not-utf8", "env", "src", "data", "upstream", "metrics")
DETAILS = {
    "binary": "not a run.lock (not UTF-8 text: byte 0x80 at offset 128)",
    "env": "run.lock key 'env.packages' must be a mapping of package names to versions, got [1]",
    "src": "run.lock key 'src.files' must be a mapping of paths to blob shas, got 3",
    "data": "run.lock key 'data.x' must be a mapping (path, hash, files, bytes), got [1]",
    "upstream": "run.lock key 'upstream.k' must be a run.lock mapping, got 5",
    "metrics": "run.lock key 'metrics.a' must be a number, got [1]",
}
# the sections a listing reads (xp ls, xp.runs): a bad env or upstream does not hide the run
HEAD_KINDS = frozenset({"binary", "not-utf8", "src", "data", "metrics"})


def corrupt(lock: Path, kind: str) -> str:
    """Damage ``lock`` in the way ``kind`` names; return the detail readers must say."""
    text = lock.read_text()
    if kind == "binary":
        lock.write_bytes(bytes(range(256)))
        return DETAILS[kind]
    if kind == "not-utf8":  # a hand edit saved as Latin-1
        raw = text.encode() + "note: café\n".encode("latin-1")
        lock.write_bytes(raw)
        return not_utf8_detail(raw)
    data = yaml.safe_load(text)
    section, key, value = {
        "env": ("env", "packages", [1]),
        "src": ("src", "files", 3),
        "data": ("data", "x", [1]),
        "upstream": ("upstream", "k", 5),
        "metrics": ("metrics", "a", [1]),
    }[kind]
    data[section] = {**(data.get(section) or {}), key: value}
    lock.write_text(dump_yaml(data))
    return DETAILS[kind]


def not_utf8_detail(raw: bytes) -> str:
    """What readers say of a lock with a Latin-1 e-acute in it."""
    offset = raw.index(b"\xe9")
    return f"not a run.lock (not UTF-8 text: byte 0xe9 at offset {offset})"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_TRACKING": "0"}


def script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python pipe.py ARGS`` in the project (a real stage script)."""
    return subprocess.run(
        [sys.executable, "pipe.py", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git project where real stage scripts ran: prepare, two trains on it, a map of 4."""
    root = tmp_path_factory.mktemp("faults") / "proj"
    root.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / "pipe.py").write_text(textwrap.dedent(PIPELINE))
    (root / "tasks.jsonl").write_text("".join(json.dumps({"x": i}) + "\n" for i in range(4)))
    subprocess.run([*git, "add", "."], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
    for args in (["prepare"], ["train"], ["train", "lr=0.1"], ["square", "--tasks", "tasks.jsonl"]):
        done = script(*args, cwd=root)
        assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def proj(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh copy of the base project as the working directory."""
    root = tmp_path / "proj"
    shutil.copytree(base, root, symlinks=True)
    monkeypatch.chdir(root)
    clear_settings_cache()
    yield root
    clear_settings_cache()


def run_dir(root: Path, stage: str, index: int = -1) -> Path:
    """The ``index``-th run directory of ``stage``, oldest first."""
    dirs = sorted(p for p in (root / "results" / stage).iterdir() if not p.is_symlink())
    return dirs[index]


def xp_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    """``xp ARGS`` in this process: (exit status, stderr lines, stdout)."""
    capsys.readouterr()
    clear_settings_cache()
    status = xp_main(list(args))
    out = capsys.readouterr()
    return status, out.err.splitlines(), out.out


# -- a corrupt run.lock through every command that reads it ---------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_run_lock_through_every_command(
    proj: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A train run and the map run damaged alike. ls warns and lists the rest (or lists them:
    it reads no env/upstream); show, diff, lineage, push, tasks: status 2 and one line;
    checkout reads only src.commit, so only what hides it fails."""
    bad, good = run_dir(proj, "train"), run_dir(proj, "train", 0)
    mapped = run_dir(proj, "square")
    lock = bad / "run.lock"
    detail = corrupt(lock, kind)
    mapped_detail = corrupt(mapped / "run.lock", kind)

    status, err, out = xp_cli(capsys, "ls")
    assert status == 0
    if kind in HEAD_KINDS:
        assert err == [
            f"xp ls: warning: skipped {d.relative_to(proj)}/run.lock: {why}"
            for d, why in ((mapped, mapped_detail), (bad, detail))
        ]
    else:
        assert err == []
        assert out.count(" train ") == 2
    assert load_lock(good).id in out

    for args in (["show", str(bad)], ["diff", str(bad), str(good)], ["lineage", str(bad)]):
        status, err, _ = xp_cli(capsys, *args)
        assert (status, err) == (2, [f"xp {args[0]}: error: {lock}: {detail}"])

    status, err, _ = xp_cli(capsys, "push", str(bad), "--store", str(proj / "store"))
    assert (status, err) == (2, [f"xp push: error: {lock}: {detail}"])
    assert not (proj / "store" / "runs").exists()  # nothing half-pushed

    status, err, _ = xp_cli(capsys, "tasks", str(mapped))
    assert (status, err) == (2, [f"xp tasks: error: {mapped / 'run.lock'}: {mapped_detail}"])

    status, err, out = xp_cli(capsys, "checkout", str(bad), str(proj.parent / "co"))
    if kind in ("binary", "not-utf8"):
        assert (status, err) == (2, [f"xp checkout: error: {lock}: {detail}"])
    else:  # the snapshot commit is still recorded and readable
        assert (status, err) == (0, [])
        assert Path(out.strip(), "pipe.py").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_run_lock_through_the_python_api(proj: Path, kind: str) -> None:
    """xp.runs() skips (and says why) what it cannot list; Run properties raise LockError
    with the same one-line message, never another exception."""
    bad = run_dir(proj, "train")
    lock = bad / "run.lock"
    detail = corrupt(lock, kind)
    found = xp.runs()
    if kind in HEAD_KINDS:
        assert found.skipped == [f"{lock}: {detail}"]
        assert bad not in [r.dir for r in found]
    else:
        assert found.skipped == []
        assert xp.Run(bad).stage == "train"
    with pytest.raises(LockError) as info:
        xp.Run(bad).lock  # noqa: B018 - reading the property is the test
    assert str(info.value) == f"{lock}: {detail}"
    with pytest.raises(LockError):
        xp.Run(bad).upstream  # noqa: B018 - reading the property is the test
    assert len(found.records()) == len(found)


@pytest.mark.parametrize("kind", ["binary", "env"])
def test_stage_whose_upstream_is_corrupt_is_a_one_line_error(proj: Path, kind: str) -> None:
    """A stage script consuming a run with a bad run.lock: exit 2, one line, no run made."""
    upstream = run_dir(proj, "prepare")
    lock = upstream / "run.lock"
    detail = corrupt(lock, kind)
    before = sorted((proj / "results" / "train").iterdir())
    done = script("train", f"prepared={upstream.relative_to(proj)}")
    assert done.returncode == 2
    spec = str(upstream.relative_to(proj))
    assert done.stderr.splitlines() == [f"error: upstream prepared = {spec!r}: {lock}: {detail}"]
    assert sorted((proj / "results" / "train").iterdir()) == before


def test_every_kind_of_corrupt_upstream_refuses_the_library_call(
    proj: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train(prepared=RUN)`` raises UpstreamError naming the file for every corruption."""
    monkeypatch.syspath_prepend(str(proj))
    monkeypatch.delitem(sys.modules, "pipe", raising=False)
    import pipe  # the copy's own script, imported as a module

    upstream = run_dir(proj, "prepare")
    lock = upstream / "run.lock"
    original = lock.read_bytes()
    for kind in KINDS:
        lock.write_bytes(original)
        detail = corrupt(lock, kind)
        with pytest.raises(xp.XpkitError) as info:
            pipe.train(prepared=str(upstream))
        assert str(info.value) == f"upstream prepared = {str(upstream)!r}: {lock}: {detail}"


def test_hostile_yaml_is_refused_in_one_line(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recursive alias, a billion laughs and a 5000-digit integer: one line each, at once."""
    bad = run_dir(proj, "train")
    lock = bad / "run.lock"
    head = "xpkit: 1\nid: abc\nstage: train\ndir: results/train/x\nstatus: completed\n"
    laughs = "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" if i else "l0: &l0 [1, 2]\n"
        for i in range(9)
    )
    cases = {
        "recursive": (head + "config: &c {self: *c}\n", "an alias makes a node contain itself"),
        "laughs": (head + laughs, "aliases expand it to more than 1,000,000 values"),
    }
    for text, why in cases.values():
        lock.write_text(text)
        status, err, _ = xp_cli(capsys, "show", str(bad))
        assert (status, err) == (2, [f"xp show: error: {lock}: invalid YAML: {why}"])
    lock.write_text(head + "pid: " + "9" * 5000 + "\n")
    status, err, _ = xp_cli(capsys, "show", str(bad))
    assert status == 2
    assert err == [
        f"xp show: error: {lock}: invalid YAML: Exceeds the limit (4300 digits) "
        "for integer string conversion: value has 5000 digits; use sys.set_int_max_str_digits() "
        "to increase the limit"
    ]
    status, err, _ = xp_cli(capsys, "ls")
    assert status == 0
    assert len(err) == 1
    assert err[0].startswith(f"xp ls: warning: skipped {lock.relative_to(proj)}: invalid YAML")


def test_a_real_cli_process_prints_one_line_for_binary_garbage(proj: Path) -> None:
    """The installed entry point, in its own process: no traceback reaches the terminal."""
    bad = run_dir(proj, "train")
    lock = bad / "run.lock"
    detail = corrupt(lock, "binary")
    done = subprocess.run(
        [sys.executable, "-m", "xpkit", "show", str(bad)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr.splitlines()) == (2, [f"xp show: error: {lock}: {detail}"])


# -- xp log goes on with the other runs -----------------------------------------------------


def test_xp_log_skips_corrupt_runs_and_syncs_the_others(proj: Path) -> None:
    """Each bad run is one 'skipped' line; every good run is synced; exit status 1."""
    mlflow = pytest.importorskip("mlflow")
    store = f"sqlite:///{proj.parent / 'mlflow.db'}"
    bad = {run_dir(proj, "train"): "binary", run_dir(proj, "prepare"): "env"}
    details = {d: corrupt(d / "run.lock", kind) for d, kind in bad.items()}
    done = subprocess.run(
        [sys.executable, "-m", "xpkit", "log", "-q"],
        env={**_env(), "MLFLOW_TRACKING_URI": store},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("xp log:")]
    assert sorted(lines) == sorted(
        f"xp log: skipped {d}: {d / 'run.lock'}: {detail}" for d, detail in details.items()
    )
    assert "Traceback" not in done.stderr
    client = mlflow.MlflowClient(tracking_uri=store)
    synced = {
        run.data.tags["xpkit.run_id"]
        for exp in client.search_experiments()
        for run in client.search_runs([exp.experiment_id])
    }
    good = [run_dir(proj, "train", 0), run_dir(proj, "square")]
    assert synced == {load_lock(d).id for d in good}


def test_xp_log_on_a_read_only_results_directory_is_one_line(proj: Path) -> None:
    """A read-only bind mount of results/: exit 2, one line naming .mlflow.lock, nothing lost."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    results = proj / "results"
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    subprocess.run(["mount", "--bind", str(results), str(results)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(results)], check=True)
        done = subprocess.run(
            [sys.executable, "-m", "xpkit", "log"],
            env={**_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{results / 'mlflow.db'}"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        subprocess.run(["umount", str(results)], check=True)
    assert (done.returncode, done.stderr.splitlines()) == (
        2,
        [
            "xp log: error: cannot sync into MLflow: cannot write results/.mlflow.lock "
            "(Read-only file system)"
        ],
    )
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before


# -- a hostile store entry ------------------------------------------------------------------


def test_pull_of_a_corrupt_stored_run_lock_is_one_line(
    proj: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stored run.lock with ill-typed sections, made consistent with its manifest: store ls
    lists it, pull refuses it in one line and writes nothing into the clone."""
    store = tmp_path / "store"
    run = run_dir(proj, "train")
    run_id = load_lock(run).id
    status, err, _ = xp_cli(capsys, "push", str(run), "--store", str(store))
    assert (status, err) == (0, [])
    entry = store / "runs" / run_id
    detail = corrupt(entry / "files" / "run.lock", "env")
    manifest = json.loads((entry / "manifest.json").read_text())
    stored = (entry / "files" / "run.lock").read_bytes()
    manifest["files"]["run.lock"].update(
        size=len(stored), hash=f"xxh3_128:{xxhash.xxh3_128_hexdigest(stored)}"
    )
    text = json.dumps(manifest).encode()
    (entry / "manifest.json").write_bytes(text)
    (entry / "COMPLETE").write_bytes(f"xxh3_128:{xxhash.xxh3_128_hexdigest(text)}\n".encode())

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(proj), str(clone)], check=True)
    monkeypatch.chdir(clone)
    status, err, out = xp_cli(capsys, "store", "ls", "--store", str(store))
    assert (status, err) == (0, [])
    assert run_id in out
    status, err, _ = xp_cli(capsys, "pull", run_id, "--store", str(store))
    where = f"{store}/runs/{run_id}/files/run.lock"
    assert (status, err) == (2, [f"xp pull: error: {where}: {detail}"])
    assert not (clone / "results").exists()


# -- the task files of a mapped run ---------------------------------------------------------


def _resume_lines(proj: Path, mapped: Path) -> tuple[int, list[str]]:
    done = script("square", "--resume", str(mapped.relative_to(proj)))
    return done.returncode, done.stderr.splitlines()


def test_todo_line_not_utf8_on_resume_is_one_line(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume and xp tasks: exit 2 and one line naming the file and line; run.lock kept."""
    mapped = run_dir(proj, "square")
    todo = RunPaths(mapped).todo
    lines = todo.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"i": 2, "task": {"x": "caf\xe9"}}\n'
    todo.write_bytes(b"".join(lines))
    lock_before = (mapped / "run.lock").read_bytes()
    expected = f"{todo} line 3: not UTF-8 text (byte 0xe9)"
    assert _resume_lines(proj, mapped) == (2, [f"error: {expected}"])
    assert (mapped / "run.lock").read_bytes() == lock_before  # the run was not started again
    status, err, _ = xp_cli(capsys, "tasks", str(mapped))
    assert (status, err) == (2, [f"xp tasks: error: {expected}"])


def test_bad_task_index_on_resume_is_one_line(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A todo line holding another index than its place: one line, not a traceback."""
    mapped = run_dir(proj, "square")
    todo = RunPaths(mapped).todo
    todo.write_text(todo.read_text().replace('{"i": 1,', '{"i": 7,'))
    lock_before = (mapped / "run.lock").read_bytes()
    expected = f"{todo} line 2: expected task 1, got 7"
    assert _resume_lines(proj, mapped) == (2, [f"error: {expected}"])
    assert (mapped / "run.lock").read_bytes() == lock_before
    status, err, _ = xp_cli(capsys, "tasks", str(mapped))
    assert (status, err) == (2, [f"xp tasks: error: {expected}"])


def test_done_records_of_the_wrong_shape_are_skipped(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hand-edited done records (a string error, a bool index, bytes that are not UTF-8, JSON
    nested too deep) never crash xp tasks; the genuine records still count."""
    mapped = run_dir(proj, "square")
    done_file = next(RunPaths(mapped).done.glob("*.jsonl"))
    hostile = [
        b'{"i": 0, "status": "failed", "error": "boom"}',
        b'{"i": true, "status": "ok"}',
        b'{"i": 1, "status": "failed", "time": 1e999}',
        b"\xff\xfe not utf-8",
        b"[" * 5000,
        b'{"i": 99999999999999999999999, "status": "ok"}',
    ]
    with done_file.open("ab") as f:
        f.write(b"\n".join(hostile) + b"\n")
    status, err, out = xp_cli(capsys, "tasks", str(mapped), "--failed")
    assert (status, err) == (0, [])
    assert "tasks  4 total · 4 done · 0 failed · 0 left  (100.0%)" in out.splitlines()


def test_metric_history_skips_torn_and_foreign_lines(proj: Path) -> None:
    """Lines that are torn, not UTF-8, nested too deep or not metric records are skipped."""
    run = Run(run_dir(proj, "prepare"))
    with run.paths.metrics.open("ab") as f:
        f.write(b'{"time": 1.0, "step": 1, "metrics": {"rows": 4}}\n')
        f.write(b'{"time": 2.0, "step": 2, "metrics": {"rows": caf\xe9}}\n')
        f.write(b"[" * 5000 + b"\n")
        f.write(b'{"time": 3.0, "metrics": [1]}\n')
        f.write(b'"just a string"\n')
        f.write(b'{"time": 4.0, "step": 4, "metr')  # torn by a kill
    history = list(run.metric_history())
    assert [h["metrics"] for h in history] == [{"rows": 3}, {"rows": 4}]


def test_checkout_into_a_file_is_one_line(proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``xp checkout RUN some_file.py``: status 2, one line; the file is untouched."""
    run = run_dir(proj, "train")
    commit = load_lock(run).src["commit"]  # type: ignore[index]  # recorded by the real run
    status, err, _ = xp_cli(capsys, "checkout", str(run), "pipe.py")
    assert (status, err) == (
        2,
        [
            f"xp checkout: error: cannot check out {commit[:12]} into {proj / 'pipe.py'}: "
            "it is a file, not a directory"
        ],
    )
    assert (proj / "pipe.py").read_text() == textwrap.dedent(PIPELINE)


# -- temporary files of atomic writes -------------------------------------------------------


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from xpkit._core._paths import atomic_path

with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_text("half a lock")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temp_file_of_a_killed_write_is_never_listed_and_cleaned_next_write(proj: Path) -> None:
    """kill -9 inside an atomic write of run.lock: the temp stays hidden from Run.files()
    and readers, and the next write of the lock removes it; a live writer's temp is kept."""
    run = Run(run_dir(proj, "train"))
    files_before = run.files()
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(run.paths.lock)], env=_env(), check=False
    )
    assert done.returncode == -signal.SIGKILL
    left = [p for p in run.dir.iterdir() if p.name.startswith(".run.lock")]
    assert len(left) == 1
    assert is_write_temp(left[0].name)
    old_style = run.dir / ".config.yaml.12345.7f3a.tmp"  # named as before hosts were in names
    old_style.write_text("x")
    os.utime(old_style, (time.time() - 7200, time.time() - 7200))
    live = run.dir / f".run.log~{os.uname().nodename}~{os.getpid()}~1.tmp"  # this process
    live.write_text("being written")
    assert run.files() == files_before
    assert xp.Run(run.dir).status == "completed"

    lock = load_lock(run.paths.lock)
    subprocess.run([sys.executable, "-c", WRITE_LOCK, str(run.paths.lock)], env=_env(), check=True)
    assert not left[0].exists()
    assert not old_style.exists()
    assert live.exists()
    assert load_lock(run.paths.lock) == lock.replace(status="completed")


WRITE_LOCK = """
import sys
from pathlib import Path
from xpkit._core._lock import load_lock, write_lock

path = Path(sys.argv[1])
write_lock(path, load_lock(path))
"""


# -- a stale ref lock left by a killed git --------------------------------------------------

STAGE = """
from dataclasses import dataclass
import xpkit as xp

@dataclass
class Config:
    x: int = 1

@xp.stage(name="train")
def train(cfg: Config):
    return cfg.x
"""


def _commits(repo: Path) -> set[str]:
    out = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch-check=%(objectname) %(objecttype)"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.endswith(" commit")}


@pytest.fixture
def stage_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A git repo with a committed stage module, run once (run_logs exists)."""
    module = import_project(tmp_path, monkeypatch, "faulty", STAGE)
    subprocess.run(["git", "add", "."], check=True)
    subprocess.run(["git", "commit", "-qm", "init"], check=True)
    module.train()
    return module


def test_stale_ref_lock_is_one_warning_and_the_run_keeps_its_git_state(
    stage_repo: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refs/heads/run_logs.lock an hour old: no update-ref waits on it (git's own trace
    shows none), one commit object per run (the recorded one), one warning naming the file;
    src keeps commit, head and branch; removing the file lets the next run publish."""
    ref_lock = tmp_path / ".git" / "refs" / "heads" / "run_logs.lock"
    ref_lock.write_text("")
    os.utime(ref_lock, (time.time() - 3600, time.time() - 3600))
    tip = (tmp_path / ".git" / "refs" / "heads" / "run_logs").read_text().strip()
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout
    before = _commits(tmp_path)
    trace = tmp_path.parent / "git-trace.log"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    (tmp_path / "new.py").write_text("y = 2\n")  # a changed tree: a new snapshot is needed
    stage_repo.train()
    monkeypatch.delenv("GIT_TRACE")

    src = stage_repo.train.last.lock.src
    assert src["head"] == head.strip()
    assert src["branch"] in ("master", "main")
    new = _commits(tmp_path) - before
    assert new == {src["commit"]}  # one commit object, not one per retry
    assert "update-ref" not in trace.read_text()
    log = stage_repo.train.last.paths.log.read_text()
    warned = [line.split("] ", 1)[1] for line in log.splitlines() if "run_logs.lock" in line]
    assert len(warned) == 1
    assert re.fullmatch(
        f"code snapshot {src['commit'][:12]} is not on branch 'run_logs': "
        f"{re.escape(str(ref_lock))} is a stale lock left by a killed git 1h0[0-9]m ago: "
        "remove that file",
        warned[0],
    )
    assert (
        src["error"]
        == warned[0].removeprefix(f"code snapshot {src['commit'][:12]} is ")[
            : -len(": remove that file")
        ]
    )
    assert (tmp_path / ".git" / "refs" / "heads" / "run_logs").read_text().strip() == tip
    _, _, shown = xp_cli(capsys, "show", str(stage_repo.train.last.dir))
    assert f"{src['commit'][:12]} on {src['branch']} (dirty); {src['error']}" in shown

    ref_lock.unlink()
    stage_repo.train()
    published = stage_repo.train.last.lock.src
    assert "error" not in published
    tip = (tmp_path / ".git" / "refs" / "heads" / "run_logs").read_text().strip()
    assert tip == published["commit"]


def test_a_young_ref_lock_may_be_live_an_old_one_is_stale(tmp_path: Path) -> None:
    """The bound: a lock file younger than it (or stamped ahead by another clock) may belong
    to a running git; an older one is stale and says its age."""
    lock = tmp_path / "run_logs.lock"
    assert _git._stale_lock(lock) == ""  # no file
    lock.write_text("")
    now = time.time()
    os.utime(lock, (now + 30, now + 30))
    assert _git._stale_lock(lock) == ""
    os.utime(lock, (now - 3600, now - 3600))
    assert re.fullmatch(
        f"{re.escape(str(lock))} is a stale lock left by a killed git 1h0[0-9]m ago",
        _git._stale_lock(lock),
    )


def test_write_lock_keeps_working_after_a_sweep(tmp_path: Path) -> None:
    """Writing one file many times in one process sweeps its directory once, and every
    write still lands whole, leaving no temporary file."""
    path = tmp_path / "run.lock"
    lock = RunLock(id="abc", stage="s", dir="results/s/x", started="2025-01-01T00:00:00+00:00")
    for i in range(20):
        write_lock(path, lock.replace(stage=f"s{i}"))
    assert [p.name for p in tmp_path.iterdir()] == ["run.lock"]
    assert load_lock(path).stage == "s19"


@pytest.mark.parametrize("pid", [0, -1, 10**30])
def test_a_running_lock_with_a_pid_no_process_can_have_reads_interrupted(
    proj: Path, pid: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """pid 0 or -1 (os.kill would signal a process group) and a pid beyond the kernel's range
    (os.kill overflows): the run is interrupted, not running forever, and nothing crashes."""
    run = run_dir(proj, "train")
    data = yaml.safe_load((run / "run.lock").read_text())
    data.update(status="running", pid=pid, host=os.uname().nodename)
    (run / "run.lock").write_text(dump_yaml(data))
    assert xp.Run(run).status == "interrupted"
    status, err, out = xp_cli(capsys, "ls", "--where", "status == interrupted", "-f", "json")
    assert (status, err) == (0, [])
    assert [r["id"] for r in json.loads(out)] == [data["id"]]


DATA_STAGE = """
from dataclasses import dataclass
import xpkit as xp

@dataclass
class Config:
    raw: str = "raw"

@xp.stage(name="prep", data=["raw"])
def prep(cfg: Config):
    return None
"""


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not gzip"])
def test_damaged_data_manifest_leaves_xp_diff_with_the_hashes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    """A per-file manifest cut short, bit-flipped or replaced: xp diff still shows the data
    hashes that differ, says the file lists are unreadable, and exits 0."""
    module = import_project(tmp_path, monkeypatch, "dataprep", DATA_STAGE)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.txt").write_text("a")
    module.prep()
    first = module.prep.last
    (tmp_path / "raw" / "b.txt").write_text("b")
    module.prep()
    second = module.prep.last
    manifest = next((second.dir / ".xpkit" / "manifests").iterdir())
    raw = manifest.read_bytes()
    manifest.write_bytes(
        {
            "truncated": raw[:20],
            "corrupt": raw[:12] + bytes(b ^ 0xFF for b in raw[12:-8]) + raw[-8:],
            "not gzip": b"plain text",
        }[damage]
    )
    status, err, out = xp_cli(capsys, "diff", str(first.dir), str(second.dir))
    assert (status, err) == (0, [])
    data = out[out.index("\ndata\n") + 1 :].splitlines()[1:3]
    assert data[0].startswith("  raw: xxh3_128:")
    assert data[1] == "    (no readable file manifests: only the hash is known to differ)"
