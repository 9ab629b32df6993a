"""Benchmark: what ``xp rerun`` and ``reuse=True`` cost, against the run they stand for.

Two measurements, each timed in pairs (A then B, alternated in the same run, so that both
see the same load; the median of the per-pair ratios is printed with the medians):

1. ``xp rerun RUN`` against running the same stage script directly (``python stage.py``),
   in a temporary git repo. Twice: with the code tree of the snapshot created anew for
   every rerun (``git worktree add`` included), and with the tree kept from the last one.
2. The reuse check over a stage with N past runs (default 1000, each a different config;
   one of them the match): a call with ``reuse=True`` that finds the match and returns its
   value (``find_reusable`` in-process, heads from the run index), against the same call
   running the stage (``reuse=False``). Also the check when no past run matches. Target:
   <= 0.2 s with 1000 past runs.

Usage: python benchmarks/bench_rerun.py [--repeats 9] [--runs 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

STAGE = """
import dataclasses
from pathlib import Path
import xpkit as xp

@dataclasses.dataclass
class Config:
    n: int = 0

@xp.stage(name="bench")
def main(cfg: Config):
    Path(cfg.save_dir, "out.txt").write_text(str(cfg.n * cfg.n))
    return {"n": cfg.n}

if __name__ == "__main__":
    xp.run(main)
"""


def paired(
    a: Callable[[], float], b: Callable[[], float], repeats: int
) -> tuple[float, float, float]:
    """Medians of A and B (seconds) and the median of the per-pair ratios A/B."""
    times_a, times_b, ratios = [], [], []
    for _ in range(repeats):
        ta, tb = a(), b()
        times_a.append(ta)
        times_b.append(tb)
        ratios.append(ta / tb)
    return statistics.median(times_a), statistics.median(times_b), statistics.median(ratios)


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def make_repo(root: Path) -> None:
    (root / "stage.py").write_text(textwrap.dedent(STAGE))
    (root / ".gitignore").write_text("results/\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=root, check=True)


def bench_rerun(repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="xpkit-bench-rerun-") as tmp:
        root = Path(tmp)
        make_repo(root)
        env = {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_TRACKING": "0"}
        env.pop("XPKIT_ROOT", None)
        direct = [sys.executable, "stage.py", "n=3"]
        subprocess.run(direct, cwd=root, env=env, check=True, capture_output=True)
        run = os.readlink(root / "results" / "bench" / "latest")
        rerun = [sys.executable, "-m", "xpkit", "rerun", f"results/bench/{run}"]
        trees = root / ".git" / "xpkit" / "trees"

        def fresh_tree() -> float:
            for ready in trees.glob("*.ready"):
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(trees / ready.stem)],
                    cwd=root,
                    check=True,
                )
                ready.unlink()
            return timed(rerun, root, env)

        print("xp rerun against the stage run directly (wall clock of the command, s)")
        for label, first in (("tree created", fresh_tree), ("tree kept", None)):
            again = first or (lambda: timed(rerun, root, env))
            a, b, ratio = paired(again, lambda: timed(direct, root, env), repeats)
            line = f"rerun {a:.3f}  direct {b:.3f}  rerun/direct {ratio:.2f}  (+{a - b:.3f} s)"
            print(f"  {label:13s} {line}")


def bench_reuse(repeats: int, runs: int) -> None:
    import xpkit._core._settings as settings_module
    from xpkit._core._lock import load_lock, new_run_id, write_lock
    from xpkit._core._paths import RunPaths
    from xpkit._execute import _reuse
    from xpkit._execute._lifecycle import _plan

    with tempfile.TemporaryDirectory(prefix="xpkit-bench-reuse-") as tmp:
        root = Path(tmp)
        make_repo(root)
        os.chdir(root)
        os.environ["XPKIT_TRACKING"] = "0"
        os.environ.pop("XPKIT_ROOT", None)
        settings_module.clear_settings_cache()
        sys.path.insert(0, str(root))
        import stage  # the bench project's stage

        stage.main(n=0)  # one real run, then copies of it with other configs
        template = stage.main.last.dir
        lock = load_lock(template)
        started = time.perf_counter()
        for n in range(1, runs):
            run_dir = template.parent / f"{template.name}-{n:04d}"
            shutil.copytree(template, run_dir)
            rel = f"{lock.dir}-{n:04d}"
            config = {**lock.config, "n": n, "save_dir": rel}
            write_lock(
                RunPaths(run_dir).lock, lock.replace(id=new_run_id(), dir=rel, config=config)
            )
        made_s = time.perf_counter() - started
        print(f"\nreuse check over {runs} past runs of the stage ({made_s:.1f} s to make them)")

        from xpkit._execute._lifecycle import RunRequest

        def check(n: int) -> float:
            request = RunRequest(stage=stage.main, config=stage.main._build(None, {"n": n}))
            t0 = time.perf_counter()
            plan, _, _ = _plan(request)
            found = _reuse.find_reusable(plan)
            took = time.perf_counter() - t0
            assert (found is not None) == (n < runs)
            return took

        def run_it() -> float:
            t0 = time.perf_counter()
            stage.main(n=runs // 2, reuse=False)
            return time.perf_counter() - t0

        check(runs // 2)  # the run index is written by the first listing, as by xp ls
        a, b, ratio = paired(lambda: check(runs // 2), run_it, repeats)
        print(f"  match found   check {a:.3f}  running the stage {b:.3f}  check/run {ratio:.2f}")
        miss = statistics.median(check(runs + k) for k in range(repeats))
        print(f"  no match      check {miss:.3f}")
        print(f"  target <= 0.200 s: {'met' if max(a, miss) <= 0.2 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    bench_rerun(args.repeats)
    bench_reuse(args.repeats, args.runs)


if __name__ == "__main__":
    main()
