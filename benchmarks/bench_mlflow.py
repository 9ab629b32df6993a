"""MLflow sync: ``xp log`` against naive MLflow fluent calls, and ``xp.log_metrics`` per call.

200 run directories x 50 params x 20 metric points (+ xpkit's tags and 3 artifacts each) are
written to MLflow SQLite stores twice: by xpkit's batched sync, and the naive way (one fluent
call per param, tag, metric point and artifact). Both stores are created (schema migrated)
before timing. Run: ``python benchmarks/bench_mlflow.py [--runs 200]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

import xpkit as xp  # noqa: E402 - after making the checkout importable
from xpkit._core._lock import RunLock, new_run_id, write_lock  # noqa: E402
from xpkit._core._paths import RunPaths  # noqa: E402
from xpkit._core._settings import load_settings  # noqa: E402
from xpkit._core._yaml import dump_yaml  # noqa: E402
from xpkit._tracking._mlflow import STATUS, Syncer, params_of, tags_of  # noqa: E402

N_PARAMS, N_POINTS = 50, 20


def make_runs(root: Path, n: int) -> list[Path]:
    """``n`` finished run directories of stage ``train`` under ``root/results``."""
    dirs = []
    t0 = time.time() - 3600
    for i in range(n):
        run_dir = root / "results" / "train" / f"run-{i:04d}"
        run_dir.mkdir(parents=True)
        paths = RunPaths(run_dir)
        config = {
            "model": {f"p{j}": j * 0.5 + i for j in range(N_PARAMS // 2)},
            "data": {f"q{j}": f"value-{j}" for j in range(N_PARAMS // 2 - 1)},
            "save_dir": f"results/train/run-{i:04d}",
        }
        started = t0 + i * 10
        lock = RunLock(
            id=new_run_id(),
            stage="train",
            dir=f"results/train/run-{i:04d}",
            status="completed",
            started=_iso(started),
            ended=_iso(started + 5),
            duration_s=5.0,
            argv=("train.py", f"model.p0={i}"),
            config=config,
            env={"python": "3.11", "platform": "linux", "host": "bench", "cpus": 8},
            src={"commit": "a" * 40, "head": "b" * 40, "branch": "main", "dirty": False},
        )
        write_lock(paths.lock, lock)
        paths.config.write_text(dump_yaml(config))
        paths.log.write_text("epoch done\n" * 50)
        with paths.metrics.open("w") as f:
            for step in range(N_POINTS):
                line = {
                    "time": started + step * 0.1,
                    "step": step,
                    "metrics": {"loss": 1 / (step + 1)},
                }
                f.write(json.dumps(line) + "\n")
        dirs.append(run_dir)
    return dirs


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts).astimezone().isoformat()


def naive(run_dirs: list[Path], uri: str) -> float:
    """One fluent MLflow call per param, tag, metric point and artifact."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    artifacts = Path(uri[len("sqlite:///") :]).parent / "mlartifacts"  # not ./mlruns of the cwd
    mlflow.create_experiment("train", artifact_location=artifacts.as_uri())
    mlflow.set_experiment("train")
    t = time.perf_counter()
    for run_dir in run_dirs:
        run = xp.Run(run_dir)
        lock = run.lock
        with mlflow.start_run(run_name=run_dir.name):
            for key, value in params_of(lock).items():
                mlflow.log_param(key, value)
            for key, value in tags_of(lock, project="bench").items():
                mlflow.set_tag(key, value)
            for record in run.metric_history():
                for key, value in record["metrics"].items():
                    mlflow.log_metric(
                        key, value, step=record["step"], timestamp=int(record["time"] * 1000)
                    )
            for path in (run.paths.config, run.paths.lock, run.paths.log):
                mlflow.log_artifact(str(path))
            mlflow.set_tag("status", STATUS[lock.status])
    return time.perf_counter() - t


def xpkit_sync(run_dirs: list[Path], root: Path) -> tuple[float, float]:
    """xpkit's sync in-process: first sync, then a re-sync with nothing new."""
    os.environ["XPKIT_ROOT"] = str(root)
    syncer = Syncer(settings=load_settings(root))
    t = time.perf_counter()
    syncer.prefetch(["train"])
    for run_dir in run_dirs:
        syncer.sync(xp.Run(run_dir))
    first = time.perf_counter() - t
    syncer = Syncer(settings=load_settings(root))
    t = time.perf_counter()
    syncer.prefetch(["train"])
    for run_dir in run_dirs:
        syncer.sync(xp.Run(run_dir))
    return first, time.perf_counter() - t


def xp_log_cli(root: Path) -> float:
    """``xp log`` end to end (a fresh process: importing mlflow included)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_ROOT": str(root)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "xpkit", "log", "-q"], env=env, check=True, cwd=root)
    return time.perf_counter() - t


def log_metrics_cost(root: Path, calls: int, *, live: bool) -> float:
    """Microseconds per ``xp.log_metrics`` call inside a running stage."""
    from xpkit._tracking import _mlflow_live

    os.environ["XPKIT_ROOT"] = str(root)
    os.environ["XPKIT_TRACKING"] = "1" if live else "0"
    _mlflow_live.LIVE_DELAY_S, _mlflow_live.LIVE_INTERVAL_S = 0.0, 0.5
    out: dict[str, float] = {}

    @xp.stage(name="metrics_bench", src=False)
    def main(cfg: Any = {"calls": calls}) -> None:  # noqa: B006 - a mapping default is the config
        if live:  # let the background syncer import mlflow and start pushing points
            xp.log_metrics({"warmup": 0.0}, step=0)
            time.sleep(3)
        t = time.perf_counter()
        for i in range(cfg.calls):
            xp.log_metrics({"loss": 1.0 / (i + 1), "acc": 0.5}, step=i)
        out["us"] = (time.perf_counter() - t) / cfg.calls * 1e6

    main()
    _mlflow_live._tracker().drain(120)  # the final sync, before the directory goes away
    return out["us"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ours, theirs, cli = base / "xpkit", base / "naive", base / "cli"
        for root in (ours, theirs, cli):
            dirs = make_runs(root, args.runs)
        for root in (ours, theirs, cli):  # migrate every store before timing
            uri = f"sqlite:///{root / 'results' / 'mlflow.db'}"
            mlflow.MlflowClient(tracking_uri=uri).search_experiments()
        naive_s = naive(
            sorted((theirs / "results" / "train").iterdir()),
            f"sqlite:///{theirs / 'results' / 'mlflow.db'}",
        )
        first_s, again_s = xpkit_sync(sorted((ours / "results" / "train").iterdir()), ours)
        cli_s = xp_log_cli(cli)
        quiet_us = log_metrics_cost(base / "m1", args.calls, live=False)
        live_us = log_metrics_cost(base / "m2", args.calls, live=True)
        del dirs
    n = args.runs
    print(f"{n} runs x {N_PARAMS} params x {N_POINTS} metric points (+ tags, 3 artifacts each)")
    print(f"  naive fluent calls (one per item)   {naive_s:7.2f} s")
    print(
        f"  xpkit sync (in-process)             {first_s:7.2f} s   {naive_s / first_s:5.1f}x faster"
    )
    print(f"  xp log (new process, mlflow import) {cli_s:7.2f} s   {naive_s / cli_s:5.1f}x faster")
    print(f"  xpkit re-sync, nothing new          {again_s:7.2f} s")
    print(f"xp.log_metrics per call: {quiet_us:.2f} us (tracking off)")
    print(f"xp.log_metrics per call: {live_us:.2f} us (live sync on, pushing in the background)")


if __name__ == "__main__":
    main()
