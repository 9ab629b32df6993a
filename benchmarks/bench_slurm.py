"""Benchmark: a map of 10,000 tasks on a real Slurm cluster, beside submitit used directly.

Needs a running cluster with accounting (``SLURM_CONF`` exported; ``scripts/slurm_up.sh``
starts one, ``SLURM_CI_MAX_ARRAY_SIZE=1001`` for Slurm's default array limit). Every Slurm
client call goes through a PATH shim that logs it, so the calls are counted, not guessed.

1. ``--tasks`` tasks in ``--chunks`` array tasks, to the end: submission time, the time
   ``xp tasks --wait`` follows it, its ``sacct`` calls per poll, every task done once; and,
   on the same jobs at the same time, submitit's own waiting (``job.done()`` on each job
   until all are done) with its ``sacct`` calls.
2. ``--wide`` tasks (default 2,500) as one array task each: submission time and how the
   arrays were split at ``MaxArraySize``; then they are cancelled. And submitit's
   ``map_array`` of as many jobs, which Slurm refuses past ``MaxArraySize``. (10,000 array
   tasks also meet ``MaxJobCount``, 10,000 by default, with the records ``MinJobAge`` keeps.)

    python benchmarks/bench_slurm.py [--tasks 10000] [--chunks 20] [--wide 2500]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from xpkit._core._lock import load_lock  # noqa: E402
from xpkit._parallel._slurm import max_array_size  # noqa: E402

SCRIPT = """
import dataclasses
import xpkit as xp

@dataclasses.dataclass
class Config:
    x: int = 0

@xp.stage(src=False)
def main(cfg: Config):
    return cfg.x * 2

if __name__ == "__main__":
    xp.run(main)
"""

WAITER = """
import sys, time
import submitit
folder, ids = sys.argv[1], sys.argv[2].split(",")
jobs = [submitit.SlurmJob(folder=folder, job_id=i) for i in ids]
start = time.monotonic()
while not all(job.done() for job in jobs):
    time.sleep(2)
print(time.monotonic() - start)
"""

PEER = """
import sys, time
import submitit
n = int(sys.argv[2])
executor = submitit.AutoExecutor(folder=sys.argv[1], cluster="slurm")
executor.update_parameters(timeout_min=5)
start = time.monotonic()
try:
    jobs = executor.map_array(abs, range(n))
    print("submitted", len(jobs), "jobs in", round(time.monotonic() - start, 2), "s")
    import subprocess
    subprocess.run(["scancel", str(jobs[0].job_id).split("_")[0]])
except Exception as e:
    print(f"failed after {time.monotonic() - start:.2f} s: {type(e).__name__}:",
          str(e).strip().splitlines()[-1][:160])
"""


def shims(top: Path, log: Path) -> dict[str, str]:
    """An environment whose Slurm commands log each call to ``log``, then run."""
    folder = top / f"shims-{log.stem}"
    folder.mkdir(exist_ok=True)
    for name in ("sbatch", "sacct", "squeue", "scontrol", "scancel"):
        real = shutil.which(name)
        if real is None:
            sys.exit(f"{name} not found: is Slurm installed?")
        script = folder / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexec {real} "$@"\n')
        script.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(SRC),
        "XPKIT_ROOT": str(top),
        "XPKIT_TRACKING": "0",
    }


def calls(log: Path) -> Counter[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(line.split()[0] for line in lines)


def submit(top: Path, n: int, chunks: int, log: Path) -> tuple[float, Path]:
    """Submit the map; (seconds until the command returned, its run directory)."""
    (top / "tasks.jsonl").write_text("".join(json.dumps({"x": i}) + "\n" for i in range(n)))
    args = ["--tasks", "tasks.jsonl", "--backend", "slurm", "--slurm", f"chunks={chunks}"]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "job.py", *args],
        cwd=top,
        env=shims(top, log),
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"submission failed: {done.stderr[-2000:]}")
    runs = sorted(p for p in (top / "results" / "job").iterdir() if not p.is_symlink())
    return took, runs[-1]


def once(run: Path, n: int) -> tuple[int, int]:
    """(tasks with exactly one ok record, tasks with more than one)."""
    counts: Counter[int] = Counter()
    for path in (run / "tasks" / "done").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("status") == "ok":
                counts[record["i"]] += 1
    return sum(1 for i in range(n) if counts[i] == 1), sum(1 for c in counts.values() if c > 1)


def full_run(top: Path, n: int, chunks: int) -> None:
    log = top / "calls-xpkit.log"
    took, run = submit(top, n, chunks, log)
    tasks = load_lock(run).tasks or {}
    jobs = [str(j) for j in tasks.get("jobs", [])]
    print(f"submitted {n} tasks as {len(jobs)} array tasks in {tasks.get('arrays')} array(s):")
    print(f"  submission returned in {took:.2f} s; Slurm calls: {dict(calls(log))}")
    log.unlink()
    peer_log = top / "calls-submitit.log"
    waiter = subprocess.Popen(
        [sys.executable, "-c", WAITER, str(run / "tasks" / "slurm"), ",".join(jobs)],
        env=shims(top, peer_log),
        stdout=subprocess.PIPE,
        text=True,
    )
    start = time.perf_counter()
    waited = subprocess.run(
        [sys.executable, "-m", "xpkit", "tasks", str(run), "--wait", "--interval", "2"],
        cwd=top,
        env=shims(top, log),
        capture_output=True,
        text=True,
        check=False,
    )
    wait_s = time.perf_counter() - start
    peer_s = float((waiter.communicate()[0] or "nan").strip().splitlines()[-1])
    polls = waited.stdout.count("tasks  ")
    ok, twice = once(run, n)
    print(f"  xp tasks --wait: {wait_s:.1f} s, {polls} polls, Slurm calls {dict(calls(log))}")
    print(f"  submitit job.done() on the same {len(jobs)} jobs: {peer_s:.1f} s,")
    print(f"    Slurm calls {dict(calls(peer_log))}")
    print(f"  run {load_lock(run).status}: {ok}/{n} tasks done exactly once, {twice} twice")


def wide(top: Path, n: int) -> None:
    log = top / "calls-wide.log"
    took, run = submit(top, n, n, log)
    tasks = load_lock(run).tasks or {}
    jobs = [str(j) for j in tasks.get("jobs", [])]
    arrays = sorted({j.split("_")[0] for j in jobs})
    print(f"{n} tasks, one array task each: {len(jobs)} array tasks in {len(arrays)} arrays")
    print(f"  submission returned in {took:.2f} s; Slurm calls {dict(calls(log))}")
    subprocess.run(["scancel", *arrays], check=False)
    peer = subprocess.run(
        [sys.executable, "-c", PEER, str(top / "peer"), str(n)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    print(f"  submitit map_array of {n} jobs: {(peer.stdout or peer.stderr).strip()[-300:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="0: skip the full run")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument(
        "--wide", type=int, default=2_500, help="array tasks of one task each (0: skip)"
    )
    args = parser.parse_args()
    if not os.environ.get("SLURM_CONF"):
        sys.exit("export SLURM_CONF (scripts/slurm_up.sh prints the line)")
    print(f"MaxArraySize {max_array_size()}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
    steps = [name for name, n in (("full", args.tasks), ("wide", args.wide)) if n]
    for step in steps:
        top = Path(tempfile.mkdtemp(prefix=f"xpkit-bench-slurm-{step}-"))
        (top / "job.py").write_text(textwrap.dedent(SCRIPT))
        try:
            if step == "full":
                full_run(top, args.tasks, args.chunks)
            else:
                wide(top, args.wide)
        finally:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
