"""Benchmark: ``Stage.map`` with joblib vs a plain ``joblib.Parallel`` loop, and bookkeeping.

Usage: python benchmarks/bench_map.py [--tasks 10000] [--jobs N] [--repeat 3]

The plain loop is the one a user writes by hand (USER_REQUEST.md): merge each task into the
resolved config with OmegaConf, call the function, in ``joblib.Parallel``. Both sides run the
same trivial function; xpkit adds the run directory, run.lock, task records and results in
order. Bookkeeping: write a 100,000-task list and scan 100,000 done records (a resume).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import xpkit as xp
from xpkit._core._paths import RunPaths
from xpkit._parallel import _tasks


@dataclass
class Config:
    x: int = 0
    scale: float = 2.0


def work(cfg: Config) -> float:
    return cfg.x * cfg.scale


stage = xp.stage(work, name="bench", src=False)


def plain(tasks: list[dict[str, int]], jobs: int) -> list[float]:
    cfg = OmegaConf.structured(Config)
    OmegaConf.resolve(cfg)

    def wrapped(task: dict[str, int]) -> float:
        return work(OmegaConf.merge(cfg, task))  # type: ignore[arg-type]

    return joblib.Parallel(n_jobs=jobs)(joblib.delayed(wrapped)(t) for t in tasks)


def floor(tasks: list[dict[str, int]], jobs: int) -> list[float]:
    """No config at all: the cost of joblib itself on the same trivial work."""
    return joblib.Parallel(n_jobs=jobs)(joblib.delayed(float)(t["x"] * 2.0) for t in tasks)


def mapped(tasks: list[dict[str, int]], jobs: int) -> list[float]:
    run = stage.map(tasks, backend="joblib", jobs=jobs)
    return list(run.result)


def timed(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def bookkeeping(n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = RunPaths(Path(tmp))
        tasks = [{"input": f"data/item-{i:06d}.txt", "seed": i} for i in range(n)]
        start = time.perf_counter()
        _tasks.write_todo(paths, tasks)
        write_s = time.perf_counter() - start
        for w in range(4):
            log = _tasks.DoneLog(paths, f"w{w}")
            for i in range(w, n, 4):
                log.record(i, "ok", 0.001)
            log.close()
        start = time.perf_counter()
        todo = _tasks.read_todo(paths)
        state = _tasks.scan_done(paths, len(todo))
        assert state.done == n
        scan_s = time.perf_counter() - start
        return write_s, scan_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tasks = [{"x": i} for i in range(args.tasks)]
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["XPKIT_ROOT"] = tmp
        joblib.Parallel(n_jobs=args.jobs)(joblib.delayed(abs)(i) for i in range(10))  # warm loky
        plain_s, mapped_s, floor_s = [], [], []
        for _ in range(args.repeat):
            t, ref = timed(plain, tasks, args.jobs)
            plain_s.append(t)
            floor_s.append(timed(floor, tasks, args.jobs)[0])
            t, out = timed(mapped, tasks, args.jobs)
            mapped_s.append(t)
            assert out == ref
    p, m = statistics.median(plain_s), statistics.median(mapped_s)
    print(f"{args.tasks} trivial tasks, {args.jobs} processes (median of {args.repeat})")
    print(f"  plain joblib.Parallel loop   {p:7.2f} s")
    print(f"  xpkit map, backend=joblib    {m:7.2f} s")
    print(f"  ratio                        {m / p:7.2f} x   (target <= 1.3)")
    f = statistics.median(floor_s)
    print(f"  (floor: joblib, no config    {f:7.2f} s; xpkit / floor {m / f:.2f} x)")
    write_s, scan_s = bookkeeping(100_000)
    print("bookkeeping of 100,000 tasks")
    print(f"  write task list              {write_s:7.3f} s")
    print(f"  resume scan (list + records) {scan_s:7.3f} s")
    print(f"  total                        {write_s + scan_s:7.3f} s   (target <= 1 s)")


if __name__ == "__main__":
    main()
