"""Benchmark: what checking every input once costs (run.lock shapes, task lines), side by side.

In one process, on the same files, with and without the checks:

- ``xp.runs().records()`` over N generated runs, warm (head cache valid) and cold: with
  :func:`~xpkit._core._schema.check_lock`, and with it replaced by a no-op;
- ``load_lock`` of one full run.lock (config, the interpreter's real ``env.packages``, one
  upstream lock): with and without the check;
- ``read_todo`` of a task list of M lines: the line check (UTF-8, ``{"i": i, "task": ``
  prefix) against a bare split, and against parsing every line with ``json.loads``.

CPU time (``time.process_time``), medians of several repeats; ratios are checked / bare.

Usage: python benchmarks/bench_checks.py [--runs 1000] [--tasks 100000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ls  # noqa: E402

from xpkit._core import _lock, _schema  # noqa: E402
from xpkit._core._env import collect_env  # noqa: E402
from xpkit._core._lock import RunLock, load_lock, new_run_id, write_lock  # noqa: E402
from xpkit._core._paths import RunPaths  # noqa: E402
from xpkit._parallel._tasks import read_todo, write_todo  # noqa: E402


def cpu_ms(a: Callable[[], object], b: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median CPU milliseconds of ``a()`` and of ``b()``, called in turn (one warm-up each)."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeat + 1):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.process_time()
            fn()
            if i:
                out.append((time.process_time() - start) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def without_checks(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with check_lock replaced by a no-op (what reading cost before the checks)."""

    def bare() -> object:
        saved = _lock.check_lock
        _lock.check_lock = lambda data, source: None  # type: ignore[assignment]  # timing only
        try:
            return fn()
        finally:
            _lock.check_lock = saved

    return bare


def listing(root: Path, repeat: int) -> list[tuple[str, float, float]]:
    import shutil

    import xpkit as xp
    from xpkit._core._settings import clear_settings_cache

    os.chdir(root)
    os.environ["XPKIT_ROOT"] = str(root)

    def warm() -> object:
        clear_settings_cache()
        return xp.runs().records()

    def cold() -> object:
        shutil.rmtree(root / "results" / ".xpkit", ignore_errors=True)
        return warm()

    rows = [("xp.runs().records(), warm", warm), ("xp.runs().records(), cold", cold)]
    return [(name, *cpu_ms(fn, without_checks(fn), repeat)) for name, fn in rows]


def one_lock(tmp: Path, repeat: int) -> tuple[str, float, float]:
    env = collect_env()
    upstream = RunLock(
        id=new_run_id(),
        stage="prepare",
        dir="results/prepare/x",
        status="completed",
        started="2024-01-01T00:00:00+00:00",
        env=collect_env(),
    ).to_dict()
    lock = RunLock(
        id=new_run_id(),
        stage="train",
        dir="results/train/x",
        status="completed",
        started="2024-01-01T00:00:00+00:00",
        config={f"k{i}": i for i in range(50)},
        metrics={"loss": 0.1, "acc": 0.9},
        env=env,
        upstream={"prepared": upstream},
    )
    path = tmp / "run.lock"
    write_lock(path, lock)
    fn = lambda: [load_lock(path) for _ in range(20)]  # noqa: E731 - one timed call
    return ("load_lock x 20 (full lock)", *cpu_ms(fn, without_checks(fn), repeat))


def todo(tmp: Path, tasks: int, repeat: int) -> list[tuple[str, float, float]]:
    paths = RunPaths(tmp / "map")
    write_todo(paths, [{"x": i, "name": f"item-{i}"} for i in range(tasks)])

    def bare() -> object:
        return [line for line in paths.todo.read_bytes().splitlines() if line.strip()]

    def parsed() -> object:
        return [json.loads(line) for line in paths.todo.read_bytes().splitlines()]

    def checked() -> object:
        return read_todo(paths)

    return [
        (f"read_todo, {tasks:,} lines, vs a bare split", *cpu_ms(checked, bare, repeat)),
        (f"read_todo, {tasks:,} lines, vs json.loads of each", *cpu_ms(checked, parsed, repeat)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    assert _schema.check_lock is _lock.check_lock
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        bench_ls.generate(tmp / "proj", runs=args.runs, keys=args.keys)
        rows = [one_lock(tmp, args.repeat), *todo(tmp, args.tasks, args.repeat)]
        rows += listing(tmp / "proj", args.repeat)
    print(f"\n{'what':<52} {'checked ms':>11} {'bare ms':>9} {'ratio':>6}")
    for what, checked, bare in rows:
        print(f"{what:<52} {checked:>11.1f} {bare:>9.1f} {checked / bare:>6.2f}")


if __name__ == "__main__":
    main()
