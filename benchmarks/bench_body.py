"""Benchmark the speed of a stage's body: raw function, tracked xpkit run, tracing hooks.

xpkit hands a run's locals back at its return (or failure) by calling a recompiled twin of
the function, not by tracing it. This measures what the body pays for that, timed from inside
the body (so the run's own start and end are not counted), against the raw function and
against the two hooks a tool could use instead to catch the locals at the return: a
``sys.setprofile`` hook (called on every call and return) and a ``sys.settrace`` hook
(called on every line as well).

    python benchmarks/bench_body.py [--repeats 7] [--n 1500000]

Two bodies: a plain arithmetic loop, and the same loop calling a small helper function.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import xpkit as xp


@dataclass
class Config:
    n: int = 1000
    calls: bool = False


def _square(i: int) -> int:
    return i * i


def body(cfg: Config) -> float:
    """The measured body: returns its own duration in seconds."""
    started = time.perf_counter()
    total = 0
    if cfg.calls:
        for i in range(cfg.n):
            total += _square(i)
    else:
        for i in range(cfg.n):
            total += i * i
    return time.perf_counter() - started


def _hooked(install: Callable[[Any], None], fn: Callable[[Config], float]) -> Callable[..., float]:
    """``fn`` run under a hook that keeps the locals of the body's frame at its return."""
    kept: dict[str, Any] = {}

    def hook(frame: FrameType, event: str, arg: object) -> Any:
        if event == "return" and frame.f_code is fn.__code__:
            kept.update(frame.f_locals)
        return hook

    def run(cfg: Config) -> float:
        install(hook)
        try:
            return fn(cfg)
        finally:
            install(None)

    return run


def measure(
    ways: dict[str, Callable[[Config], float]], cfg: Config, repeats: int
) -> dict[str, float]:
    """Median body time of each way, the ways taking turns (round-robin)."""
    for way in ways.values():
        way(Config(n=1000, calls=cfg.calls))  # warm up
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            times[name].append(way(cfg))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n", type=int, default=1_500_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        subprocess.run(["git", "init", "-q"], check=True)
        os.environ["XPKIT_TRACKING"] = "0"
        logging.disable(logging.INFO)  # no "run ... started" lines between the rows
        tracked = xp.stage(name="body")(body)
        ways: dict[str, Callable[[Config], float]] = {
            "raw function": body,
            "xpkit (tracked run)": lambda cfg: tracked(n=cfg.n, calls=cfg.calls),
            "sys.setprofile hook": _hooked(sys.setprofile, body),
            "sys.settrace hook": _hooked(sys.settrace, body),
        }
        for calls in (False, True):
            cfg = Config(n=args.n, calls=calls)
            print(f"\nbody: {args.n:,} iterations{', one call each' if calls else ''}")
            print(f"{'':<22} {'median (ms)':>12} {'/ raw':>8}")
            times = measure(ways, cfg, args.repeats)
            for name, t in times.items():
                print(f"{name:<22} {t * 1000:>12.1f} {t / times['raw function']:>8.2f}")


if __name__ == "__main__":
    main()
