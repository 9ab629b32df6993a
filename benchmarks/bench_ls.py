"""Benchmark: ``xp ls`` and ``xp.runs().to_pandas()`` over many runs, beside ``mlflow.search_runs``.

Generates N run directories (each run.lock with K config keys, a few metrics, the real
``env.packages`` of this interpreter and one recorded upstream lock, as real runs have), then
times, as wall clock of a fresh process and as the median of several repeats:

- ``xp ls`` cold (no head cache) and warm, table and json output;
- ``xp.runs().to_pandas()`` in a process (pandas import included and excluded);
- when mlflow is importable, the same runs synced into a SQLite MLflow store with one
  ``log_batch`` per run, and ``mlflow.search_runs`` over them.

Usage: python benchmarks/bench_ls.py [--runs 1000] [--keys 50] [--repeat 5] [--no-mlflow]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from xpkit._core._env import collect_env  # noqa: E402
from xpkit._core._lock import RunLock, new_run_id  # noqa: E402
from xpkit._core._paths import RunPaths  # noqa: E402
from xpkit._core._yaml import dump_yaml  # noqa: E402


def generate(root: Path, *, runs: int, keys: int, packages: int = 150) -> list[RunLock]:
    """Write ``runs`` run directories under ``root/results/train``.

    Each run.lock is what ``write_lock`` would write; the ``env`` (``packages`` of this
    interpreter's packages) and ``upstream`` sections, the same for every run, are dumped
    once and pasted, so that 100,000 runs are written in a minute or two.
    """
    rng = random.Random(0)
    env = collect_env()
    env["packages"] = dict(list(env["packages"].items())[:packages])
    upstream = RunLock(
        id=new_run_id(),
        stage="prepare",
        dir="results/prepare/000000-000000",
        status="completed",
        started="2024-01-01T00:00:00+00:00",
        config={"n": 10, "save_dir": "results/prepare/000000-000000"},
        env=env,
    ).to_dict()
    blocks = {
        "'@@ENV@@'": _block({"env": env}, "env"),
        "'@@UPSTREAM@@'": _block({"upstream": {"prepared": upstream}}, "upstream"),
    }
    base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    locks = []
    for i in range(runs):
        when = base + dt.timedelta(seconds=37 * i)
        name = when.strftime("%y%m%d-%H%M%S")
        config: dict[str, object] = {f"k{j:02d}": rng.choice([1, 2, 3]) for j in range(keys - 3)}
        config.update(lr=rng.choice([0.1, 0.01, 0.001]), model={"depth": rng.randint(1, 8)})
        config["save_dir"] = f"results/train/{name}"
        lock = RunLock(
            id=new_run_id(),
            stage="train",
            dir=f"results/train/{name}",
            status="completed",
            started=when.isoformat(),
            ended=(when + dt.timedelta(seconds=30)).isoformat(),
            duration_s=round(rng.uniform(1, 100), 3),
            config=config,
            src={"commit": f"{rng.getrandbits(160):040x}", "branch": "main", "dirty": False},
            upstream={"prepared": {}},
            env={},
            metrics={"loss": rng.random(), "acc": rng.random(), "f1": rng.random()},
        )
        data = lock.to_dict()
        data.update(env="@@ENV@@", upstream="@@UPSTREAM@@")
        text = dump_yaml(data)
        for mark, block in blocks.items():
            text = text.replace(mark, block, 1)
        paths = RunPaths(root / lock.dir)
        paths.dir.mkdir(parents=True)
        paths.lock.write_text(text)
        steps = [{"time": 0.0, "step": s, "metrics": dict(lock.metrics or {})} for s in range(5)]
        paths.metrics.write_text("".join(json.dumps(s) + "\n" for s in steps))
        locks.append(lock.replace(env=env, upstream={"prepared": upstream}))
    return locks


def _block(section: dict[str, object], key: str) -> str:
    """The YAML of one top-level section, without its ``key:`` line start."""
    text = dump_yaml(section)
    return text[len(key) + 1 :].rstrip("\n")


Timing = tuple[float, float]  # (wall s, cpu s), medians


def wall(cmd: list[str], cwd: Path, *, repeat: int, before: object = None) -> Timing:
    """Median wall and CPU (user+sys) seconds of ``cmd`` run in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_ROOT": str(cwd)}
    env.pop("FORCE_COLOR", None)
    walls, cpus = [], []
    for _ in range(repeat):
        if callable(before):
            before()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def in_process(code: str, cwd: Path, *, repeat: int) -> Timing:
    """Median (wall, cpu) seconds that ``code`` reports on its last line as ``wall cpu``."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_ROOT": str(cwd)}
    walls, cpus = [], []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        w, c = out.strip().splitlines()[-1].split()
        walls.append(float(w))
        cpus.append(float(c))
    return statistics.median(walls), statistics.median(cpus)


def sync_mlflow(root: Path, locks: list[RunLock]) -> str:
    """Log every run into a SQLite MLflow store (one log_batch per run); return the URI."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from xpkit._core._flat import flatten

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("bench")
    for lock in locks:
        run = client.create_run(experiment, start_time=0, tags={"xpkit.run_id": lock.id})
        params = [Param(k, str(v)) for k, v in flatten(lock.config).items()]
        tags = [RunTag("xpkit.stage", lock.stage), RunTag("xpkit.commit", lock.src["commit"])]
        metrics = [Metric(k, float(v), 0, 0) for k, v in (lock.metrics or {}).items()]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        client.set_terminated(run.info.run_id, end_time=1)
    del mlflow
    return uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--pyyaml-repeat", type=int, default=1, help="the peer is slow")
    parser.add_argument(
        "--dir", type=Path, help="keep the generated runs here and reuse them (large --runs)"
    )
    args = parser.parse_args()
    if args.dir is not None:
        run(_kept(args.dir / f"runs-{args.runs}x{args.keys}", args), args)
        return
    root = Path(tempfile.mkdtemp(prefix="xpkit-bench-ls-"))
    try:
        run(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kept(root: Path, args: argparse.Namespace) -> Path:
    """``root`` holding the generated runs, made once (a marker says it is whole)."""
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        generate(root, runs=args.runs, keys=args.keys)
        (root / ".complete").touch()
        print(f"generated {args.runs} runs in {time.perf_counter() - start:.1f} s")
    return root  # run() finds the marker and keeps them


def run(root: Path, args: argparse.Namespace) -> None:
    locks: list[RunLock] = []
    start = time.perf_counter()
    if not (root / ".complete").exists():
        locks = generate(root, runs=args.runs, keys=args.keys)
    found = list((root / "results" / "train").glob("*/run.lock"))
    lock_kb = sum(p.stat().st_size for p in found[:1000]) / min(len(found), 1000) / 1e3
    print(
        f"{len(found)} runs x {args.keys} config keys ({lock_kb:.1f} kB run.lock each), "
        f"ready in {time.perf_counter() - start:.1f} s; load {os.getloadavg()[0]:.1f}"
    )
    cache = root / "results" / ".xpkit"
    xp = [sys.executable, "-m", "xpkit"]
    results: dict[str, Timing] = {}
    results["python -c pass"] = wall([sys.executable, "-c", "pass"], root, repeat=args.repeat)
    results["xp --version (startup)"] = wall([*xp, "--version"], root, repeat=args.repeat)
    drop = lambda: shutil.rmtree(cache, ignore_errors=True)  # noqa: E731
    results["xp ls, cold (no head cache)"] = wall(
        [*xp, "ls"], root, repeat=min(args.repeat, 2), before=drop
    )
    age(root)  # heads of locks written in the last 2 s are not cached
    wall([*xp, "ls"], root, repeat=1)
    results["xp ls, warm"] = wall([*xp, "ls"], root, repeat=args.repeat)
    results["xp ls --format json, warm"] = wall([*xp, "ls", "-f", "json"], root, repeat=args.repeat)
    results["xp ls --where ... --sort ..., warm"] = wall(
        [*xp, "ls", "--where", "config.lr > 0.01 and metrics.acc >= 0.5", "--sort", "-acc"],
        root,
        repeat=args.repeat,
    )
    code = (
        "import time; t, c = time.perf_counter(), time.process_time(); import pandas; "
        "import xpkit as xp; s, d = time.perf_counter(), time.process_time(); "
        "df = xp.runs().to_pandas(); assert len(df) == {n}; "
        "print(time.perf_counter() - {w}, time.process_time() - {c})"
    )
    results["xp.runs().to_pandas(), warm, in process"] = in_process(
        code.format(n=len(found), w="s", c="d"), root, repeat=args.repeat
    )
    results["xp.runs().to_pandas() + imports, warm"] = in_process(
        code.format(n=len(found), w="t", c="c"), root, repeat=args.repeat
    )
    results["to_pandas() wall (process)"] = wall(
        [sys.executable, "-c", "import xpkit as xp; xp.runs().to_pandas()"],
        root,
        repeat=args.repeat,
    )
    results["PyYAML listing (CSafeLoader), process"] = wall(
        [sys.executable, "-c", PYYAML_LISTING], root, repeat=args.pyyaml_repeat
    )
    if not args.no_mlflow and locks:
        mlflow_times(root, locks, results, repeat=args.repeat)
    report(results)
    targets(results)


PYYAML_LISTING = """
import glob, yaml
rows = []
for path in sorted(glob.glob("results/*/*/run.lock")):
    with open(path) as f:
        lock = yaml.load(f, Loader=yaml.CSafeLoader)
    row = {"id": lock["id"], "status": lock["status"], "started": lock.get("started")}
    row.update({f"config.{k}": v for k, v in lock.get("config", {}).items()})
    row.update({f"metrics.{k}": v for k, v in (lock.get("metrics") or {}).items()})
    rows.append(row)
print(len(rows))
"""


def age(root: Path) -> None:
    """Date every run.lock a minute back."""
    past = time.time_ns() - 60 * 10**9
    for path in (root / "results").glob("*/*/run.lock"):
        os.utime(path, ns=(past, past))


def targets(results: dict[str, Timing]) -> None:
    """Issue 16: warm <= 1.0 s and <= 0.05x the PyYAML listing (wall)."""
    peer = results.get("PyYAML listing (CSafeLoader), process")
    print()
    for name in (
        "xp ls, warm",
        "xp ls --where ... --sort ..., warm",
        "to_pandas() wall (process)",
    ):
        wall_s, cpu_s = results[name]
        verdict = "PASS" if wall_s <= 1.0 else "FAIL"
        print(f"{verdict}  {name} <= 1.0 s: {wall_s:.2f} s wall ({cpu_s:.2f} s CPU)")
        if peer is not None:
            ratio, cpu_ratio = wall_s / peer[0], cpu_s / peer[1]
            verdict = "PASS" if ratio <= 0.05 else "FAIL"
            print(
                f"{verdict}  {name} / PyYAML listing <= 0.05x: {ratio:.3f}x ({cpu_ratio:.3f}x CPU)"
            )


def report(results: dict[str, Timing]) -> None:
    """Print the timings and the ratios MLflow / xpkit (wall and CPU)."""
    width = max(map(len, results))
    print(f"\n{'':<{width}}  {'wall ms':>8}  {'cpu ms':>8}")
    for name, (wall_s, cpu_s) in results.items():
        print(f"{name:<{width}}  {wall_s * 1000:8.0f}  {cpu_s * 1000:8.0f}")
    print()
    pairs = [
        ("mlflow.search_runs wall (process)", "xp ls, warm"),
        ("mlflow.search_runs wall (process)", "xp ls, cold (no head cache)"),
        ("mlflow.search_runs, in process", "xp.runs().to_pandas(), warm, in process"),
    ]
    for slow, fast in pairs:
        if slow in results and fast in results:
            (sw, sc), (fw, fc) = results[slow], results[fast]
            print(f"{slow} / {fast}: {sw / fw:.1f}x wall, {sc / fc:.1f}x cpu")


def mlflow_times(
    root: Path, locks: list[RunLock], results: dict[str, Timing], *, repeat: int
) -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        print("mlflow not importable: skipping the MLflow comparison")
        return
    start = time.perf_counter()
    uri = sync_mlflow(root, locks)
    print(f"synced {len(locks)} runs into MLflow (SQLite) in {time.perf_counter() - start:.1f} s")
    code = (
        f"import time, mlflow; mlflow.set_tracking_uri({uri!r}); "
        "t, c = time.perf_counter(), time.process_time(); "
        "df = mlflow.search_runs(experiment_names=['bench'], max_results=100000); "
        f"assert len(df) == {len(locks)}; "
        "print(time.perf_counter() - t, time.process_time() - c)"
    )
    results["mlflow.search_runs, in process"] = in_process(code, root, repeat=repeat)
    cmd = [
        sys.executable,
        "-c",
        f"import mlflow; mlflow.set_tracking_uri({uri!r}); "
        "mlflow.search_runs(experiment_names=['bench'], max_results=100000)",
    ]
    results["mlflow.search_runs wall (process)"] = wall(cmd, root, repeat=repeat)


if __name__ == "__main__":
    main()
