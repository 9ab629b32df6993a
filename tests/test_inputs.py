"""Inputs through a store: ``push --data`` / ``pull --data`` restore a project that runs.

The realistic project is ``examples/pipeline`` (prepare → train → evaluate) in a git repo
whose ``data/`` is gitignored, as a user keeps raw data: a clone has the code, not the data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SRC, clone, git, make_repo, xp
from xpkit._core._lock import load_lock
from xpkit._share._pull import pull
from xpkit._share._store import list_store, push

PIPELINE = Path(__file__).resolve().parents[1] / "examples" / "pipeline"


def script(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python <stage>.py ARGS`` in ``cwd``, as a user runs it; must succeed."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def pipeline_project(tmp_path: Path) -> tuple[Path, Path]:
    """The example pipeline as a git project A (data gitignored), with its bare origin."""
    a, origin = make_repo(tmp_path)
    for name in ("prepare.py", "train.py", "evaluate.py", "pyproject.toml"):
        shutil.copy(PIPELINE / name, a / name)
    shutil.copytree(PIPELINE / "data", a / "data")
    (a / ".gitignore").write_text("results/\n__pycache__/\ndata/\n")
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "pipeline")
    git(a, "push", "-q", "origin", "main")
    return a, origin


def latest(project: Path, stage: str) -> Path:
    return (project / "results" / stage / "latest").resolve()


@pytest.mark.parametrize("kind", ["directory", "s3"])
def test_fresh_clone_pulls_train_with_its_inputs_and_runs_the_pipeline(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    """A clone pulls a train run with --data: train.py runs with its defaults, and prepare.py
    re-runs on the restored raw data with the same data hash."""
    store = str(tmp_path / "store") if kind == "directory" else request.getfixturevalue("s3_store")
    a, origin = pipeline_project(tmp_path)
    script(a, "prepare.py")
    script(a, "train.py")
    prep_a, train_a = load_lock(latest(a, "prepare")), load_lock(latest(a, "train"))
    out = xp(a, "push", "results/train/latest", "--store", store).stdout
    assert "inputs:" not in out
    assert {r.id: r.inputs for r in list_store(store)} == {
        prep_a.id: "missing 1",
        train_a.id: "missing 1",
    }
    out = xp(a, "push", "results/train/latest", "--store", store, "--data").stdout
    assert "inputs: 1 file, 7.8 KB sent, 0 already stored" in out
    table = xp(a, "store", "ls", "--store", store).stdout
    assert table.count("stored (7.8 KB)") == 2

    b = clone(origin, tmp_path / "B")
    assert not (b / "data").exists()
    pulled = xp(b, "pull", train_a.id[:8], "--store", store, "--data").stdout
    assert "inputs: 1 restored (7.8 KB), 0 linked, 0 already here" in pulled
    assert f"latest: results/train/latest -> {Path(train_a.dir).name}" in pulled
    assert "re-run train: xp rerun " in pulled
    assert "(today's code: python train.py" in pulled
    assert (b / "data" / "houses.csv").read_bytes() == (a / "data" / "houses.csv").read_bytes()

    script(b, "train.py")  # default upstream: results/prepare/latest, the pulled run
    train_b = load_lock(latest(b, "train"))
    assert train_b.upstream["prep"]["id"] == prep_a.id
    model = "model.json"
    assert (latest(b, "train") / model).read_bytes() == (a / train_a.dir / model).read_bytes()
    script(b, "prepare.py")
    prep_b = load_lock(latest(b, "prepare"))
    assert prep_b.id != prep_a.id
    assert prep_b.data["raw"]["hash"] == prep_a.data["raw"]["hash"]


def test_push_data_sends_each_version_once_and_never_a_changed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs are deduplicated across runs and pushes; a file changed since its run is
    reported and not pushed under the old hash."""
    a, _ = pipeline_project(tmp_path)
    monkeypatch.chdir(a)
    script(a, "prepare.py")
    script(a, "prepare.py", "seed=1")  # a second run reading the same raw data
    store = tmp_path / "store"
    first = push(["results/prepare"], store=store, data=True).inputs
    assert first is not None
    assert (first.sent_files, first.stored_files, first.skipped) == (1, 0, [])
    again = push(["results/prepare"], store=store, data=True).inputs
    assert again is not None
    assert (again.sent_files, again.stored_files) == (0, 2)
    assert len(list((store / "data").rglob("*"))) == 2  # one folder, one object

    other = tmp_path / "store2"
    with (a / "data" / "houses.csv").open("a") as f:
        f.write("1,2,3,4\n")
    changed = push(["results/prepare/latest"], store=other, data=True).inputs
    assert changed is not None
    assert changed.sent_files == 0
    assert changed.skipped == [
        f"data/houses.csv: changed since run {load_lock(latest(a, 'prepare')).id} read it "
        f"({_hash(a / 'data' / 'houses.csv')} now); not pushed as that version"
    ]
    assert not (other / "data").exists()
    assert [r.inputs for r in list_store(other)] == ["missing 1"]


def _hash(path: Path) -> str:
    from xpkit._record._hashing import hash_path

    return hash_path(path).hash


def test_pull_data_keeps_a_different_input_unless_forced_and_links_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An identical input is left alone, a different one refused (kept as it is) unless
    --force; --link symlinks inputs from a directory store."""
    a, origin = pipeline_project(tmp_path)
    script(a, "prepare.py")
    store = tmp_path / "store"
    xp(a, "push", "results/prepare/latest", "--store", str(store), "--data")
    run_id = load_lock(latest(a, "prepare")).id
    raw = (a / "data" / "houses.csv").read_bytes()

    b = clone(origin, tmp_path / "B")
    (b / "data").mkdir()
    (b / "data" / "houses.csv").write_bytes(b"my own edit\n")
    refused = xp(b, "pull", run_id, "--store", str(store), "--data", check=False)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "input data/houses.csv exists here and differs" in refused.stderr
    assert (b / "data" / "houses.csv").read_bytes() == b"my own edit\n"
    assert not (b / "results").exists()
    forced = xp(b, "pull", run_id, "--store", str(store), "--data", "--force").stdout
    assert "inputs: 1 restored" in forced
    assert (b / "data" / "houses.csv").read_bytes() == raw
    again = xp(b, "pull", run_id, "--store", str(store), "--data").stdout
    assert "0 restored (0 B), 0 linked, 1 already here" in again

    c = clone(origin, tmp_path / "C")
    monkeypatch.chdir(c)
    report = pull(run_id, store=store, data=True, link=True)
    assert report.inputs["linked"] == 1
    assert (c / "data" / "houses.csv").is_symlink()
    assert (c / "data" / "houses.csv").read_bytes() == raw
    assert store.resolve() in (c / "data" / "houses.csv").resolve().parents


def test_pull_sets_latest_links_without_moving_one_to_an_older_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pulled stages get a latest link; one naming a newer local run stays; an older moves."""
    a, origin = pipeline_project(tmp_path)
    script(a, "prepare.py")
    old = load_lock(latest(a, "prepare"))
    store = tmp_path / "store"
    xp(a, "push", old.dir, "--store", str(store))
    b = clone(origin, tmp_path / "B")
    shutil.copytree(a / "data", b / "data")
    # newer than the pulled run (its own name: both could start in the same second)
    script(b, "prepare.py", "seed=3", "save_dir=results/prepare/newer-here")
    newer = latest(b, "prepare")
    monkeypatch.chdir(b)
    report = pull(old.id, store=store)
    assert report.latest == []
    assert latest(b, "prepare") == newer

    script(a, "prepare.py", "seed=4", "save_dir=results/prepare/newest-there")
    newest = load_lock(latest(a, "prepare"))
    xp(a, "push", newest.dir, "--store", str(store))
    report = pull(newest.id, store=store)
    assert report.latest == [f"results/prepare/latest -> {Path(newest.dir).name}"]
    assert os.readlink(b / "results" / "prepare" / "latest") == Path(newest.dir).name


def test_store_ls_json_lists_input_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--format json carries each run's inputs state and their recorded size."""
    a, _ = pipeline_project(tmp_path)
    script(a, "prepare.py")
    store = tmp_path / "store"
    xp(a, "push", "results/prepare", "--store", str(store), "--data")
    rows = json.loads(xp(a, "store", "ls", "--store", str(store), "--format", "json").stdout)
    size = (a / "data" / "houses.csv").stat().st_size
    assert [(r["inputs"], r["input_bytes"]) for r in rows] == [("stored", size)]


def test_push_data_reports_inputs_outside_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data path outside the project is reported and skipped; the run is pushed all the same."""
    from helpers import make_run

    a, _ = make_repo(tmp_path)
    outside = tmp_path / "shared-data.csv"
    outside.write_text("1,2\n")
    monkeypatch.chdir(a)
    entry = {**_hash_record(outside), "path": outside.as_posix()}
    run = make_run(a, "results/prepare/p1", {"out.txt": b"x"}, data={"raw": entry})
    report = push([run.id], store=tmp_path / "store", data=True)
    assert report.inputs is not None
    assert report.inputs.skipped == [f"{outside.as_posix()}: outside the project; not pushed"]
    assert [r["state"] for r in report.runs] == ["sent"]


def _hash_record(path: Path) -> dict[str, object]:
    from xpkit._record._hashing import hash_path

    return hash_path(path).to_lock()
