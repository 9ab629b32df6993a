"""A stage called as a library function: values, exceptions, locals, config, nesting, threads."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

import xpkit as xp
from xpkit._core._lock import load_lock
from xpkit.errors import ConfigError, NotInRunError


@dataclasses.dataclass
class Model:
    lr: float = 0.1
    layers: int = 2


@dataclasses.dataclass
class Config:
    param: int = 1
    name: str = "a"
    model: Model = dataclasses.field(default_factory=Model)
    fail: bool = False


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh git repository as the working directory."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XPKIT_ROOT", raising=False)
    return tmp_path


def runs_of(project: Path, stage: str) -> list[Path]:
    base = project / "results" / stage
    return sorted(p for p in base.iterdir() if p.name != "latest") if base.exists() else []


@xp.stage(name="calc")
def calc(cfg: Config):
    doubled = cfg.param * 2
    label = f"{cfg.name}-{doubled}"
    if cfg.fail:
        raise KeyError(label)
    return {"doubled": doubled, "lr": cfg.model.lr}


def test_call_returns_the_value_and_records_a_completed_run(project: Path) -> None:
    """A library call returns the function's value; the run is recorded completed."""
    assert calc(param=4) == {"doubled": 8, "lr": 0.1}
    (run_dir,) = runs_of(project, "calc")
    lock = load_lock(run_dir)
    assert lock.status == "completed"
    assert lock.config["param"] == 4
    assert calc.last is not None
    assert calc.last.dir == run_dir
    assert calc.last.result == {"doubled": 8, "lr": 0.1}
    assert calc.last.status == "completed"


def test_call_raises_the_same_exception_after_recording_failure(project: Path) -> None:
    """A library call raises the function's own exception, after run.lock says failed."""
    with pytest.raises(KeyError, match="b-6") as info:
        calc(param=3, name="b", fail=True)
    run = calc.last
    assert run is not None
    assert run.error is info.value
    assert run.status == "failed"
    assert run.lock.error is not None
    assert run.lock.error["type"] == "KeyError"
    assert "raise KeyError(label)" in run.lock.error["traceback"]
    # the re-raised traceback starts in the user's code, not in xpkit
    tb = info.value.__traceback__
    assert tb is not None
    files = []
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    assert files[-1] == __file__


def test_last_locals_hold_the_locals_at_return_and_at_failure(project: Path) -> None:
    """Stage.last.locals: the function's locals when it returned, or when it raised."""
    calc(param=2)
    assert calc.last is not None
    assert calc.last.locals is not None
    assert calc.last.locals["doubled"] == 4
    assert calc.last.locals["label"] == "a-4"
    assert isinstance(calc.last.locals["cfg"], DictConfig)
    with pytest.raises(KeyError):
        calc(param=5, fail=True)
    assert calc.last.locals is not None
    assert calc.last.locals["label"] == "a-10"
    assert calc.last.locals["cfg"].param == 5


def test_fn_is_the_raw_untracked_function(project: Path) -> None:
    """Stage.fn runs the plain function: no run directory, no tracking."""
    cfg = calc.config(param=6)
    assert calc.fn(cfg) == {"doubled": 12, "lr": 0.1}
    assert not (project / "results").exists()
    with pytest.raises(NotInRunError):
        calc.fn.__globals__["xp"].current()


def test_config_is_typed_and_checks_overrides(project: Path) -> None:
    """Stage.config(**kw) gives a typed DictConfig; a wrong type or unknown key is a ConfigError."""
    cfg = calc.config(param="7", **{"model.lr": 0.5})
    assert isinstance(cfg, DictConfig)
    assert cfg.param == 7
    assert cfg.model.lr == 0.5
    assert "save_dir: results/calc/${now:%y%m%d-%H%M%S}" in OmegaConf.to_yaml(cfg)
    with pytest.raises(ConfigError, match="'param'"):
        calc.config(param="seven")
    with pytest.raises(ConfigError, match=r"'model\.lrr'.*model\.lr"):
        calc.config(**{"model.lrr": 0.5})
    with pytest.raises(ValidationError):  # the DictConfig itself stays typed
        cfg.param = "x"
    assert not (project / "results").exists()


def test_call_with_dataclass_config_then_overrides(project: Path) -> None:
    """__call__(cfg, **overrides): defaults, then cfg, then overrides; dotted keys work."""
    out = calc(Config(param=10, model=Model(lr=0.3)), **{"model.lr": 0.9})
    assert out == {"doubled": 20, "lr": 0.9}
    with pytest.raises(ConfigError):
        calc({"nope": 1})
    assert len(runs_of(project, "calc")) == 1


@xp.stage(name="inside")
def inside(cfg: Config):
    run = xp.current()
    xp.log_metrics({"loss": 0.5}, step=0)
    xp.log_metrics({"loss": 0.25, "acc": 1}, step=1)
    xp.get_logger().info("hello from the logger")
    print("hello from print")
    return run.dir, run.lock.status, run.id


def test_run_functions_inside_a_stage(project: Path) -> None:
    """xp.current(), xp.log_metrics and xp.get_logger work inside a running stage."""
    run_dir, status, run_id = inside()
    assert status == "running"
    assert inside.last is not None
    assert run_dir == inside.last.dir
    assert run_id == inside.last.id
    assert inside.last.metrics == {"loss": 0.25, "acc": 1}
    history = list(inside.last.metric_history())
    assert [h["step"] for h in history] == [0, 1]
    log = inside.last.paths.log.read_text()
    assert "INFO [inside] hello from the logger" in log
    assert "hello from print" in log


def test_run_functions_outside_a_stage_raise(project: Path) -> None:
    """Outside a run, current/log_metrics raise NotInRunError; get_logger is a quiet logger."""
    with pytest.raises(NotInRunError, match="current"):
        xp.current()
    with pytest.raises(NotInRunError, match="log_metrics"):
        xp.log_metrics({"a": 1})
    assert xp.get_logger().name == "xpkit.user"


@xp.stage(name="child")
def child(cfg: Config):
    return cfg.param + 1


@xp.stage(name="parent")
def parent(cfg: Config):
    first = child(param=cfg.param)
    return first + child(param=first)


def test_nested_stage_is_recorded_as_upstream(project: Path) -> None:
    """A stage called inside another running stage is recorded under the caller's upstream."""
    assert parent(param=1) == 5
    assert parent.last is not None
    upstream = parent.last.lock.upstream
    assert upstream is not None
    children = runs_of(project, "child")
    assert len(children) == 2
    assert set(upstream) == {c.relative_to(project).as_posix() for c in children}
    for key, lock in upstream.items():
        assert lock["stage"] == "child"
        assert lock["status"] == "completed"
        assert lock == yaml.safe_load((project / key / "run.lock").read_text())
    assert load_lock(runs_of(project, "child")[0]).upstream is None


@xp.stage(name="loop")
def loop(cfg: Config):
    hooks = (sys.gettrace(), sys.getprofile())  # what could slow every line of the body
    total = 0
    for i in range(cfg.param):
        total += i * i
    return hooks


def _body_lines(call: Callable[[], object]) -> int:
    """Line events in the body of ``loop`` during ``call()``, counted by a tracer of ours."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if frame.f_code.co_name != "loop":
            return None
        count += event == "line"
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


def test_locals_capture_does_not_slow_the_body(project: Path) -> None:
    """The body runs as the raw function does: no trace or profile hook, no extra line per loop.

    The speed itself is measured in benchmarks/bench_body.py.
    """
    assert loop(param=3) == (None, None)
    assert loop.last is not None
    assert loop.last.locals is not None
    assert loop.last.locals["total"] == 5  # captured at the return, by the recompiled twin
    raw = [_body_lines(lambda n=n: loop.fn(loop.config(param=n))) for n in (10, 1000)]
    tracked = [_body_lines(lambda n=n: loop(param=n)) for n in (10, 1000)]
    assert raw[1] - raw[0] >= 2 * 990  # the tracer sees the loop's lines
    assert tracked[1] - tracked[0] == raw[1] - raw[0]  # and the tracked body adds none to them
    assert sys.gettrace() is None


def test_default_name_is_the_file_stem(project: Path) -> None:
    """Without name=, the stage is named after the file defining the function."""

    def body(cfg: Config) -> int:
        return 1

    assert xp.stage(body).name == "test_stage"
    assert xp.stage(name="x")(body).name == "x"


@xp.stage(name="threaded")
def threaded(cfg: Config):
    for _ in range(20):
        print(f"marker-{cfg.param}")
        xp.get_logger().info("record-%s", cfg.param)
        time.sleep(0.001)
    return cfg.param


def test_concurrent_runs_in_threads_keep_their_own_output(project: Path) -> None:
    """20 runs in 20 threads at once: 20 directories, each run.log holding its own output only."""
    stdout_before = sys.stdout
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(threaded(param=i))) for i in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(20))
    runs = runs_of(project, "threaded")
    assert len(runs) == 20
    for run_dir in runs:
        lock = load_lock(run_dir)
        assert lock.status == "completed"
        param = lock.config["param"]
        log = (run_dir / "run.log").read_text()
        assert log.count(f"marker-{param}\n") == 20
        assert log.count(f"record-{param}\n") == 20
        others = {f"marker-{i}\n" for i in range(20)} - {f"marker-{param}\n"}
        assert not any(other in log for other in others)
    assert sys.stdout is stdout_before


def test_metrics_jsonl_records(project: Path) -> None:
    """metrics.jsonl holds one {time, step, metrics} object per log_metrics call."""
    inside()
    assert inside.last is not None
    lines = inside.last.paths.metrics.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [set(r) for r in records] == [{"time", "step", "metrics"}] * 2
    assert records[0]["metrics"] == {"loss": 0.5}
