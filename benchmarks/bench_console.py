"""Benchmark the console's costs: capturing a stage body's locals, and the body-cell hook.

1. The body's speed, for a loop of small calls and arithmetic: the plain function, xpkit's
   capture (the function's twin with ``try/finally``), the user's own boilerplate from the
   request (``try: ... finally: return locals()`` written into the function), and the two
   ways a tool can take the locals without touching the source, a trace function
   (``sys.settrace``, as debuggers do) and a profile function (``sys.setprofile``).
2. The one-time cost of building the twin (first captured call) for a stage in a file of
   about 100 and 2,000 lines.
3. The cost the body-cell transformer adds to an ordinary cell (it parses it once) next to
   IPython's own ``transform_cell`` and the cell's compile, for a cell of 1,000 lines.

    python benchmarks/bench_console.py [--repeats 7] [--n 300000]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from xpkit._api._cells import transform_body_cell
from xpkit._execute import _locals
from xpkit._execute._locals import call_capturing

BODY = """
def step(x):
    return x * 0.5 + 1.0


def main(cfg):
    total = 0.0
    for i in range(cfg):
        total += step(i) - i % 7
    mean = total / cfg
    return mean


def main_boilerplate(cfg):
    try:
        total = 0.0
        for i in range(cfg):
            total += step(i) - i % 7
        mean = total / cfg
    finally:
        return locals()
"""


def traced(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Locals through a trace function on the body's frame only (its calls untraced)."""
    found: dict[str, Any] = {}

    def local(frame: types.FrameType, event: str, arg: Any) -> Any:
        if event == "return":
            found.update(frame.f_locals)
        return local

    def outer(frame: types.FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is fn.__code__ else None

    sys.settrace(outer)
    try:
        fn(*args)
    finally:
        sys.settrace(None)
    return found


def profiled(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Locals through a profile function (called on every call and return, C ones too)."""
    found: dict[str, Any] = {}

    def hook(frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is fn.__code__:
            found.update(frame.f_locals)

    sys.setprofile(hook)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
    return found


def best_and_median(run: Callable[[], Any], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def load(directory: Path, name: str, source: str) -> types.ModuleType:
    (directory / f"{name}.py").write_text(source)
    sys.path.insert(0, str(directory))
    return importlib.import_module(name)


def body_speed(module: types.ModuleType, n: int, repeats: int) -> None:
    fn = module.main
    call_capturing(fn, n)  # the twin is built once, before timing
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("plain function (no locals)", lambda: fn(n)),
        ("xpkit capture (twin)", lambda: call_capturing(fn, n)),
        ("boilerplate try/finally", lambda: module.main_boilerplate(n)),
        ("sys.settrace on the frame", lambda: traced(fn, n)),
        ("sys.setprofile", lambda: profiled(fn, n)),
    ]
    print(f"\n1. body speed: a loop of {n:,} calls and additions (best / median of {repeats})")
    print(f"{'':<30} {'best s':>8} {'median s':>9} {'x plain':>8}")
    base = None
    for label, run in cases:
        best, median = best_and_median(run, repeats)
        base = base or median
        print(f"{label:<30} {best:>8.3f} {median:>9.3f} {median / base:>8.2f}")


def twin_cost(directory: Path, repeats: int) -> None:
    print("\n2. first captured call: building the twin (median)")
    for lines in (100, 2000):
        fillers = "".join(f"\ndef f{i}(x):\n    return x + {i}\n" for i in range((lines - 20) // 3))
        module = load(directory, f"big{lines}", BODY + fillers)
        times = []
        for _ in range(repeats):
            _locals._twins.clear()
            start = time.perf_counter()
            call_capturing(module.main, 10)
            times.append(time.perf_counter() - start)
        count = len((directory / f"big{lines}.py").read_text().splitlines())
        print(f"stage in a file of {count:>5} lines: {statistics.median(times) * 1000:7.2f} ms")


def cell_cost(repeats: int) -> None:
    from IPython.core.inputtransformer2 import TransformerManager

    cell = "".join(f"x{i} = [j * {i} for j in range(3)]\n" for i in range(1000))
    lines = cell.splitlines(keepends=True)
    manager = TransformerManager()
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("xpkit body-cell hook", lambda: transform_body_cell(lines)),
        ("IPython transform_cell", lambda: manager.transform_cell(cell)),
        ("compile of the cell", lambda: compile(cell, "<cell>", "exec")),
    ]
    print("\n3. an ordinary cell of 1,000 lines (median)")
    for label, run in cases:
        _, median = best_and_median(run, repeats)
        print(f"{label:<30} {median * 1000:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n", type=int, default=300_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        module = load(Path(tmp), "bench_body", BODY)
        body_speed(module, args.n, args.repeats)
        twin_cost(Path(tmp), args.repeats)
    cell_cost(args.repeats)


if __name__ == "__main__":
    main()
