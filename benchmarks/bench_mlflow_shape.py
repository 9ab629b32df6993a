"""What MLflow's own shape costs a sync: this checkout against a baseline checkout.

The same run directories (a prepare run with 2 data inputs; train runs each with 1 data
input, 1 upstream run, 20 metric points; most of them points of sweeps) are synced into
fresh SQLite stores by this checkout's xpkit and by a baseline's (by default cd150c2, the
version before sources, datasets, sweeps, notes and views), each in its own process:
``sync_runs`` of all runs, the same again with nothing new, and one sweep point synced by a
new process's ``sync_run`` (what the end of a run does). Stores are migrated before timing.

    git archive cd150c2 src | tar -x -C /tmp/xpkit-base
    python benchmarks/bench_mlflow_shape.py --baseline /tmp/xpkit-base/src [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from xpkit._core._lock import RunLock, dump_yaml, new_run_id, write_lock  # noqa: E402
from xpkit._core._paths import RunPaths  # noqa: E402

N_POINTS, SWEEP_SIZE = 20, 50
HASH = "xxh3_128:" + "0123456789abcdef" * 2

TIMING = """
import json, os, sys, time
from pathlib import Path
import mlflow
from xpkit._catalog._run import Run
from xpkit._tracking._batch import sync_runs
from xpkit._tracking._mlflow import Syncer

root = Path(sys.argv[1])
uri = os.environ["MLFLOW_TRACKING_URI"]
mlflow.MlflowClient(tracking_uri=uri).search_experiments()  # migrate before timing
stages = ("prepare", "train")
runs = [Run(p) for s in stages for p in sorted((root / "results" / s).glob("r*"))]
out = {}
for key in ("first", "again"):
    t, c = time.perf_counter(), time.process_time()
    sync_runs(runs, progress=False)
    out[key], out[key + "_cpu"] = time.perf_counter() - t, time.process_time() - c
print(json.dumps(out))
"""

ONE = """
import json, sys, time
import mlflow
from xpkit._tracking._mlflow import sync_run
t, c = time.perf_counter(), time.process_time()
sync_run(sys.argv[1])  # a new client, as the end of a run or a detached xp log has
print(json.dumps({"one": time.perf_counter() - t, "one_cpu": time.process_time() - c}))
"""


def make_runs(root: Path, n: int) -> Path:
    """A prepare run and ``n - 1`` train runs (sweeps of ``SWEEP_SIZE`` points, the rest alone)."""
    t0 = time.time() - 3600
    prep = _write(root, "prepare", 0, t0, data=2)
    upstream = {"prep": {"xpkit": 1, "id": prep.id, "stage": "prepare", "dir": prep.dir}}
    sweep_id = ""
    for i in range(1, n):
        extra: dict[str, object] = {"defaults": {"lr": 0.1}}
        if i <= (n - 1) // SWEEP_SIZE * SWEEP_SIZE:
            k = (i - 1) % SWEEP_SIZE
            sweep_id = new_run_id() if k == 0 else sweep_id
            extra["sweep"] = {"id": sweep_id, "point": k, "total": SWEEP_SIZE, "values": {"lr": i}}
        _write(root, "train", i, t0 + i, data=1, upstream=upstream, extra=extra)
    return root


def _write(
    root: Path,
    stage: str,
    i: int,
    started: float,
    *,
    data: int,
    upstream: dict[str, object] | None = None,
    extra: dict[str, object] | None = None,
) -> RunLock:
    rel = f"results/{stage}/r{i:04d}"
    paths = RunPaths(root / rel)
    paths.dir.mkdir(parents=True)
    config = {"lr": float(i), "epochs": 10, "save_dir": rel}
    lock = RunLock(
        id=new_run_id(),
        stage=stage,
        dir=rel,
        status="completed",
        started=_iso(started),
        ended=_iso(started + 5),
        duration_s=5.0,
        argv=(f"{stage}.py",),
        config=config,
        src={"commit": "a" * 40, "head": "b" * 40, "branch": "main", "dirty": False},
        data={f"in{j}": {"path": f"data/in{j}.csv", "hash": HASH} for j in range(data)},
        upstream=upstream,
        env={"python": "3.11", "platform": "linux", "host": "bench", "cpus": 8},
        extra={"entry": {"module": "__main__", "qualname": "main", "file": f"{stage}.py"}}
        | (extra or {}),
    )
    write_lock(paths.lock, lock)
    paths.config.write_text(dump_yaml(config))
    paths.log.write_text("done\n")
    with paths.metrics.open("w") as f:
        for step in range(N_POINTS):
            f.write(
                json.dumps(
                    {"time": started + step, "step": step, "metrics": {"loss": 1 / (step + 1)}}
                )
                + "\n"
            )
    return lock


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts).astimezone().isoformat()


def measure(src: Path, root: Path, store: Path) -> dict[str, float]:
    """Time the syncs of ``root``'s runs by the xpkit in ``src`` (a process of its own)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "XPKIT_ROOT": str(root),
        "XPKIT_TRACKING": "0",
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
    }
    out = subprocess.run(
        [sys.executable, "-c", TIMING, str(root)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    times = json.loads(out.stdout.splitlines()[-1])
    point = next((root / "results" / "train").glob("r*"))  # re-synced by a new process
    (RunPaths(point).mlflow_state).unlink()
    one = subprocess.run(
        [sys.executable, "-c", ONE, str(point)], env=env, check=True, capture_output=True, text=True
    )
    return times | json.loads(one.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--baseline", type=Path, required=True, help="src/ of the baseline")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds (median)")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "this": []}
    for k in range(args.repeat):
        order = [("baseline", args.baseline), ("this", SRC)]
        for name, src in order if k % 2 == 0 else order[::-1]:  # alternate: load drifts
            with tempfile.TemporaryDirectory() as tmp:
                root = make_runs(Path(tmp) / name, args.runs)
                results[name].append(measure(src, root, Path(tmp) / "mlflow.db"))
    base, this = (
        {key: statistics.median(r[key] for r in results[name]) for key in results[name][0]}
        for name in ("baseline", "this")
    )
    sweeps = (args.runs - 1) // SWEEP_SIZE
    print(f"{args.runs} runs: 1 prepare (2 inputs), {args.runs - 1} train (1 input, 1 upstream,")
    print(f"  {N_POINTS} points), {sweeps} sweeps of {SWEEP_SIZE} points; median of {args.repeat}")
    rows = [
        ("sync_runs, all new", "first"),
        ("sync_runs again, nothing new", "again"),
        ("sync_run of one sweep point, new process", "one"),
    ]
    head = f"{'baseline':>9} {'this':>7} {'ratio':>7}"
    print(f"  {'':<42} {'wall time (s)':^25}      {'CPU time of the process (s)':^25}")
    print(f"  {'':<42} {head}      {head}")
    for label, key in rows:
        cells = []
        for k in (key, key + "_cpu"):
            cells.append(f"{base[k]:9.2f} {this[k]:7.2f} {this[k] / base[k]:6.2f}x")
        print(f"  {label:<42} {cells[0]}      {cells[1]}")


if __name__ == "__main__":
    main()
