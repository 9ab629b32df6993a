"""Lineage: ``upstream=[keys]``, ``xp.use_run`` and nested stages recorded in run.lock."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import yaml

import xpkit as xp
from helpers import import_project
from xpkit._core._settings import clear_settings_cache
from xpkit._core._yaml import dump_yaml
from xpkit._record._lineage import lineage, upstream_changes
from xpkit.errors import UpstreamError

PIPELINE = """
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class PrepareConfig:
    n: int = 5
    fail: bool = False


@xp.stage(name="prepare")
def prepare(cfg: PrepareConfig):
    if cfg.fail:
        raise ValueError("no rows")
    (Path(cfg.save_dir) / "rows.txt").write_text("x" * cfg.n)
    return cfg.n


@dataclass
class TrainConfig:
    prepared: str = "results/prepare/latest"
    lr: float = 0.1


@xp.stage(name="train", upstream=["prepared"])
def train(cfg: TrainConfig):
    seen = (Path(cfg.prepared) / "rows.txt").read_text()
    return cfg.prepared, len(seen)


@dataclass
class EvaluateConfig:
    model: str = "results/train/latest"


@xp.stage(name="evaluate", upstream=["model"])
def evaluate(cfg: EvaluateConfig):
    return cfg.model


@dataclass
class ReportConfig:
    which: str = ""


@xp.stage(name="report")
def report(cfg: ReportConfig):
    run = xp.use_run(cfg.which)
    return run.stage, run.id


@dataclass
class PipelineConfig:
    lr: float = 0.2


@xp.stage(name="pipeline")
def pipeline(cfg: PipelineConfig):
    prepare()
    return train(lr=cfg.lr)
"""


@pytest.fixture
def stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The stages module, imported from a fresh git repo in tmp_path."""
    yield import_project(tmp_path, monkeypatch, "stages", PIPELINE)
    clear_settings_cache()


def _run_dirs(stage: str) -> list[Path]:
    base = Path("results", stage)
    return sorted(p for p in base.iterdir() if p.name != "latest") if base.is_dir() else []


def test_upstream_latest_link_is_recorded_resolved(stages: ModuleType) -> None:
    """A ``latest`` link is resolved: the body, config.yaml and run.lock see the real dir."""
    stages.prepare()
    prepare = stages.prepare.last
    seen, size = stages.train()
    train = stages.train.last
    assert Path(seen).resolve() == prepare.dir.resolve()
    assert size == 5
    recorded = train.lock.upstream["prepared"]
    assert recorded == prepare.lock.to_dict()
    assert recorded["dir"] == prepare.lock.dir
    assert train.lock.config["prepared"] == seen
    assert yaml.safe_load(train.paths.config.read_text())["prepared"] == seen


def test_upstream_by_id_prefix(stages: ModuleType) -> None:
    """An upstream value may be a unique run id prefix."""
    stages.prepare()
    prepare = stages.prepare.last
    seen, _ = stages.train(prepared=prepare.id[:5])
    assert Path(seen).resolve() == prepare.dir.resolve()
    assert stages.train.last.upstream["prepared"].id == prepare.id


def test_lineage_is_recursive(stages: ModuleType) -> None:
    """evaluate's run.lock holds train's, which holds prepare's."""
    stages.prepare()
    stages.train()
    stages.evaluate()
    evaluate = stages.evaluate.last
    train_lock = evaluate.lock.upstream["model"]
    assert train_lock["id"] == stages.train.last.id
    assert train_lock["upstream"]["prepared"]["id"] == stages.prepare.last.id
    tree = lineage(evaluate)
    assert [tree.lock["stage"], tree.children[0].key, tree.children[0].children[0].key] == [
        "evaluate",
        "model",
        "prepared",
    ]


def test_missing_upstream_fails_before_the_run_dir(stages: ModuleType) -> None:
    """A missing upstream is one UpstreamError naming key and value; no run dir is made."""
    with pytest.raises(UpstreamError, match=r"^upstream prepared = 'results/prepare/latest': "):
        stages.train()
    with pytest.raises(UpstreamError, match="upstream prepared = 'deadbeef'"):
        stages.train(prepared="deadbeef")
    with pytest.raises(UpstreamError, match="upstream prepared is empty"):
        stages.train(prepared="")
    assert _run_dirs("train") == []


def test_failed_upstream_is_refused(stages: ModuleType) -> None:
    """Consuming a failed run is an error before the body runs."""
    with pytest.raises(ValueError, match="no rows"):
        stages.prepare(fail=True)
    with pytest.raises(UpstreamError, match="with status failed; only a completed run"):
        stages.train()
    assert _run_dirs("train") == []


def test_use_run_records_the_run_under_its_path(stages: ModuleType) -> None:
    """xp.use_run returns the Run and records its lock under its project-relative dir."""
    stages.prepare()
    prepare = stages.prepare.last
    assert stages.report(which=prepare.id[:6]) == ("prepare", prepare.id)
    upstream = stages.report.last.lock.upstream
    assert list(upstream) == [prepare.lock.dir]
    assert upstream[prepare.lock.dir]["id"] == prepare.id
    with pytest.raises(UpstreamError, match=r"xp.use_run\('nope'\) = 'nope'"):
        stages.report(which="nope")
    assert stages.report.last.status == "failed"


def test_nested_stages_are_upstream_of_the_caller(stages: ModuleType) -> None:
    """Stages called inside a running stage are recorded in its upstream, recursively."""
    stages.pipeline()
    outer = stages.pipeline.last
    upstream = outer.lock.upstream
    assert {v["stage"] for v in upstream.values()} == {"prepare", "train"}
    train = next(v for v in upstream.values() if v["stage"] == "train")
    assert train["upstream"]["prepared"]["stage"] == "prepare"


def test_upstream_changes_are_detected(stages: ModuleType) -> None:
    """A consumed run whose run.lock changed afterwards is reported."""
    stages.prepare()
    stages.train()
    train = xp.Run(stages.train.last.dir)
    assert upstream_changes(train) == []
    prepare = stages.prepare.last
    data = yaml.safe_load(prepare.paths.lock.read_text())
    data["data"] = {"raw": {"path": "raw", "hash": "xxh3_128:ff"}}
    prepare.paths.lock.write_text(dump_yaml(data))
    (change,) = upstream_changes(train)
    assert change.trail == ("prepared",)
    assert change.what == "data raw changed"
    assert "upstream prepared" in str(change)
