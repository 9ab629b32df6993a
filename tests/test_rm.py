"""``xp rm`` / ``xp.rm`` and ``xp store rm``: what goes, what is refused, what stays untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import xpkit as xp
from helpers import SRC, import_project
from xpkit._catalog._remove import upstream_ids
from xpkit._core._settings import clear_settings_cache
from xpkit.errors import RunInUseError, RunNotFoundError

STAGES = """
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class PrepareConfig:
    n: int = 5
    fail: bool = False


@xp.stage(name="prepare", src=False)
def prepare(cfg: PrepareConfig):
    if cfg.fail:
        raise ValueError("no rows")
    (Path(cfg.save_dir) / "rows.txt").write_text("x" * cfg.n)
    return cfg.n


@dataclass
class TrainConfig:
    prepared: str = "results/prepare/latest"
    lr: float = 0.1


@xp.stage(name="train", upstream=["prepared"], src=False)
def train(cfg: TrainConfig):
    return (Path(cfg.prepared) / "rows.txt").read_text()
"""


@pytest.fixture
def stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The stages module in a fresh git repo (the working directory)."""
    yield import_project(tmp_path, monkeypatch, "stages", STAGES)
    clear_settings_cache()


def tree(top: Path) -> dict[str, str]:
    """Every path below ``top``: a link's target, a file's bytes (hex), or 'dir'; but the
    head cache of listings (``results/.xpkit``), which any listing may write."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(top).as_posix()
            if rel == "results/.xpkit" or rel.startswith("results/.xpkit/"):
                continue
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes().hex()
    return out


def without(before: dict[str, str], *dirs: Path, top: Path) -> dict[str, str]:
    """``before`` less everything at or below ``dirs``."""
    gone = [d.absolute().relative_to(top.absolute()).as_posix() for d in dirs]
    return {
        k: v for k, v in before.items() if not any(k == g or k.startswith(g + "/") for g in gone)
    }


def xp_cli(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "xpkit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


def make_runs(stages: ModuleType, n: int) -> list[Any]:
    runs = []
    for i in range(n):
        stages.prepare(n=i + 1)
        runs.append(stages.prepare.last)
    return runs


def test_rm_deletes_only_the_named_runs_and_moves_latest(
    stages: ModuleType, tmp_path: Path
) -> None:
    """The newest run goes: latest points at the next newest; the last run: latest goes;
    every other path of the project is byte for byte as before."""
    old, mid, new = make_runs(stages, 3)
    latest = tmp_path / "results" / "prepare" / "latest"
    assert latest.resolve() == Path(new.dir).resolve()
    before = tree(tmp_path)
    removal = xp.rm(new.id)
    assert [r.id for r in removal.runs] == [new.id]
    assert not Path(new.dir).exists()
    assert latest.resolve() == Path(mid.dir).resolve()
    assert without(tree(tmp_path), latest, top=tmp_path) == without(
        before, Path(new.dir), latest, top=tmp_path
    )
    xp.rm(old.dir, mid.id)
    assert not latest.is_symlink()
    assert (tmp_path / "results" / "prepare").is_dir()  # the stage folder itself stays


def test_rm_refuses_a_run_a_kept_run_consumed_unless_forced(
    stages: ModuleType, tmp_path: Path
) -> None:
    """prepare is train's upstream: removing prepare alone is refused, naming train, and
    touches nothing; with train, or with force, it goes."""
    stages.prepare()
    prepare = stages.prepare.last
    stages.train()
    train = stages.train.last
    assert prepare.id in upstream_ids(Path(train.dir) / "run.lock")
    before = tree(tmp_path)
    with pytest.raises(RunInUseError, match=rf"{prepare.id} \(upstream of .*{train.dir}"):
        xp.rm(prepare.dir)
    assert tree(tmp_path) == before
    dry = xp.rm(prepare.dir, train.dir, dry_run=True)
    assert {r.id for r in dry.runs} == {prepare.id, train.id}
    assert tree(tmp_path) == before
    forced = xp.rm(prepare.id, force=True)
    assert [d.by for d in forced.kept_by] == [str(Path(train.dir).resolve())]
    assert not Path(prepare.dir).exists()
    assert Path(train.dir, "run.lock").is_file()


def test_rm_where_lists_first_and_deletes_only_matching_runs(
    stages: ModuleType, tmp_path: Path
) -> None:
    """``--where`` is the xp ls language: --dry-run lists, no terminal without --yes keeps
    all, --yes deletes just the failed runs."""
    make_runs(stages, 2)
    with pytest.raises(ValueError, match="no rows"):
        stages.prepare(fail=True)
    failed = stages.prepare.last
    before = tree(tmp_path)
    dry = xp_cli(tmp_path, "rm", "--where", "status == failed", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 1 run(s):" in dry.stdout
    assert failed.id in dry.stdout
    refused = xp_cli(tmp_path, "rm", "--where", "status == failed")
    assert refused.returncode == 0
    assert "needs --yes" in refused.stderr
    assert tree(tmp_path) == before
    done = xp_cli(tmp_path, "rm", "--where", "status == failed", "--yes")
    assert done.returncode == 0, done.stderr
    assert "deleted 1 run(s)" in done.stdout
    assert not Path(failed.dir).exists()
    assert len(xp.runs()) == 2


def test_rm_bad_input_is_one_line_error(stages: ModuleType, tmp_path: Path) -> None:
    """A typo in a run or in --where: exit 2, one line naming it, nothing deleted."""
    make_runs(stages, 1)
    before = tree(tmp_path)
    for args, said in (
        (("rm", "nosuchrun"), "no run matches 'nosuchrun'"),
        (("rm", "--where", "status ==", "--yes"), "error:"),
        (("rm",), "no run given"),
    ):
        done = xp_cli(tmp_path, *args)
        assert done.returncode == 2, done
        assert said in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert tree(tmp_path) == before
    with pytest.raises(RunNotFoundError):
        xp.rm()


def test_rm_deletes_the_mlflow_mirror_and_its_artifacts(
    stages: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the MLflow client on a real SQLite store: the removed run's MLflow run and
    its artifacts are gone for good; the kept run's mirror is whole."""
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    gone, kept = make_runs(stages, 2)
    ids = {run.id: xp.sync_run(run.dir) for run in (gone, kept)}
    client = mlflow.MlflowClient(tracking_uri=uri)
    artifacts = client.get_run(ids[gone.id]).info.artifact_uri
    removal = xp.rm(gone.id)
    assert removal.mlflow_runs == (ids[gone.id],)
    all_views = mlflow.entities.ViewType.ALL
    exp = client.get_experiment_by_name("prepare")
    tagged = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`xpkit.run_id` = '{gone.id}'",
        run_view_type=all_views,
    )  # fmt: skip
    assert tagged == []
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_run(ids[gone.id])
    if artifacts.startswith("file://"):
        assert not Path(artifacts.removeprefix("file://")).exists()
    still = client.get_run(ids[kept.id])
    assert still.data.tags["xpkit.run_id"] == kept.id
    assert client.list_artifacts(ids[kept.id])


def test_store_rm_refuses_needed_runs_and_removes_only_its_own(
    stages: ModuleType, tmp_path: Path
) -> None:
    """In a store: train needs prepare; --dry-run lists; the store's other runs stay."""
    stages.prepare()
    prepare = stages.prepare.last
    stages.train()
    train = stages.train.last
    other = make_runs(stages, 1)[0]
    store = tmp_path / "store"
    xp.push([train.dir, other.dir], store=store)
    before = tree(store)
    refused = xp_cli(tmp_path, "store", "rm", prepare.id, "--store", str(store))
    assert refused.returncode == 2
    assert f"{prepare.id} (upstream of {train.id})" in refused.stderr
    dry = xp_cli(tmp_path, "store", "rm", "--where", "stage == train", "--store", str(store), "-n")
    assert dry.returncode == 0, dry.stderr
    assert f"would delete 1 run(s) from {store}" in dry.stdout
    assert tree(store) == before
    done = xp_cli(tmp_path, "store", "rm", train.id, "--store", str(store))
    assert done.returncode == 0, done.stderr
    after = tree(store)
    assert not (store / "runs" / train.id).exists()
    assert after == without(before, store / "runs" / train.id, top=store)
    listed = xp_cli(tmp_path, "store", "ls", "--store", str(store))
    assert prepare.id in listed.stdout
    assert other.id in listed.stdout
    assert train.id not in listed.stdout


def test_rm_of_a_linked_run_removes_the_link_not_its_target(
    stages: ModuleType, tmp_path: Path
) -> None:
    """A run directory that is a symlink (a pull --link) loses the link; what it points at,
    outside the results directory, is untouched, as is the latest link of a kept run."""
    kept, linked = make_runs(stages, 2)
    outside = tmp_path / "elsewhere" / "linked-run"
    outside.parent.mkdir()
    Path(linked.dir).rename(outside)
    Path(linked.dir).symlink_to(outside)
    latest = tmp_path / "results" / "prepare" / "latest"
    latest.unlink()
    latest.symlink_to(Path(kept.dir).name)
    before = tree(tmp_path / "elsewhere")
    xp.rm(linked.dir)
    assert not os.path.lexists(linked.dir)
    assert tree(tmp_path / "elsewhere") == before
    assert latest.resolve() == Path(kept.dir).resolve()
