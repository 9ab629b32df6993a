"""A first end-to-end check of a tracked library call."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import xpkit as xp
from xpkit._core._lock import load_lock


@dataclass
class Config:
    param: int = 1


@xp.stage(name="smoke", src=False)
def smoke(cfg: Config) -> int:
    doubled = cfg.param * 2
    xp.log_metrics({"doubled": doubled})
    if doubled < 0:
        raise ValueError("negative")
    return doubled


def test_library_call_returns_and_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A library call returns the value and leaves a completed run.lock."""
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    assert smoke(param=3) == 6
    run = smoke.last
    assert run is not None
    assert run.locals is not None
    assert run.locals["doubled"] == 6
    lock = load_lock(run.dir)
    assert (lock.status, lock.config["param"], lock.metrics) == ("completed", 3, {"doubled": 6})
    assert (tmp_path / "results" / "smoke" / "latest").resolve() == run.dir


def test_library_call_raises_after_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing library call raises the function's exception; run.lock says failed."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="negative"):
        smoke(param=-1)
    run = smoke.last
    assert run is not None
    assert run.locals == {"cfg": run.locals["cfg"], "doubled": -2}
    lock = load_lock(run.dir)
    assert lock.status == "failed"
    assert lock.error is not None
    assert lock.error["type"] == "ValueError"
