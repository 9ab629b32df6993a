"""Benchmark xpkit's data hashing against dirhash, xxhsum and (when installed) DVC.

Two workloads, page cache warm: a tree of many small files (1-8 KiB, 100,000 by default)
and one big file (2 GiB by default). Each tool runs ``--repeat`` times; the table shows the
median and the best time, and each time as a multiple of xpkit's cold time.

    python benchmarks/bench_hashing.py                       # 100k files, 2 GiB
    python benchmarks/bench_hashing.py --files 20000 --big-gib 0.5 --dir /tmp/bench

"cold" means an empty hash cache (never-seen files); "nothing changed" a second run with
the cache of the first. The generated data is kept in ``--dir`` and reused by later runs.

``--scale`` measures a tree of a million files instead (``--files`` sets the count), each
tool as a fresh process, repeats interleaved: xpkit with a cold cache against ``xxhsum``;
nothing changed, and one file changed, against the stat floor (``find -printf`` of size,
mtime and inode) and against ``dvc data status`` (``--dvc PATH`` names a ``dvc`` kept out
of this project's environment); peak memory of each xpkit run.

    python benchmarks/bench_hashing.py --scale --dvc /opt/dvc-venv/bin/dvc
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from xpkit._record._hashing import hash_path, jobs_of
from xpkit._record._hashworker import digest_file

_LINE = "{:<16} {:<40} {:>9} {:>8} {:>8} {:>14} {:>12}"


@dataclass
class Row:
    """One measured tool on one workload."""

    workload: str
    tool: str
    measured: tuple[list[float], list[float]]  # wall times, CPU times
    size: float  # files or bytes, for the throughput column
    unit: str

    @property
    def median_s(self) -> float:
        return statistics.median(self.measured[0])

    @property
    def best_s(self) -> float:
        return min(self.measured[0])

    @property
    def cpu_s(self) -> float:
        return statistics.median(self.measured[1])


def main() -> None:
    """Generate the data if needed, measure every tool, print the table and the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "xpkit-bench")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--big-gib", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", action="store_true", help="a million files, as processes")
    parser.add_argument("--dvc", default=shutil.which("dvc"), help="the dvc command (--scale)")
    args = parser.parse_args()
    if args.scale:
        files = args.files if args.files != 100_000 else 1_000_000
        _bench_scale(_small_tree(args.dir / f"small-{files}", files), args)
        return
    small = _small_tree(args.dir / f"small-{args.files}", args.files)
    big = _big_file(args.dir / f"big-{args.big_gib:g}GiB", args.big_gib)
    print(f"{os.cpu_count()} CPUs, {jobs_of(None)} usable; python {sys.version.split()[0]}")
    rows = _bench_tree(small, args.files, args.repeat) + _bench_big(big, args.repeat)
    _print_table(rows)
    _print_targets(rows)


def _small_tree(root: Path, n: int) -> Path:
    """``n`` files of 1-8 KiB of random bytes, 1000 per directory (made once)."""
    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(0)
    print(f"generating {n} files in {root} ...", flush=True)
    for i in range(n):
        d = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:07d}.bin").write_bytes(rng.randbytes(rng.randint(1024, 8192)))
    _age(root)
    done.touch()
    return root


def _big_file(directory: Path, gib: float) -> Path:
    """One file of ``gib`` GiB of random bytes, alone in ``directory`` (made once)."""
    path = directory / "big.bin"
    size = int(gib * (1 << 30))
    if path.exists() and path.stat().st_size == size:
        return path
    directory.mkdir(parents=True, exist_ok=True)
    print(f"generating {path} ...", flush=True)
    block = os.urandom(64 << 20)
    with path.open("wb") as f:
        for start in range(0, size, len(block)):
            f.write(block[: size - start])
    _age(directory)
    return path


def _age(root: Path) -> None:
    """Date the files a minute back: the cache does not trust files modified just now."""
    past = time.time_ns() - 60 * 10**9
    for dirpath, _, names in os.walk(root):
        for name in names:
            os.utime(Path(dirpath, name), ns=(past, past))


def _timed(
    fn: Callable[[], object], repeat: int, before: Callable[[], None] | None = None
) -> tuple[list[float], list[float]]:
    """Wall times and CPU times (this process and its children, user + system) of ``fn``."""
    walls, cpus = [], []
    for _ in range(repeat):
        if before is not None:
            before()
        cpu0 = _cpu_s()
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_s() - cpu0)
    return walls, cpus


def _cpu_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _bench_tree(root: Path, n: int, repeat: int) -> list[Row]:
    """Every tool on the tree of small files."""
    work = f"{n} files"
    cache = root.parent / "bench-cache.sqlite"
    _warm(root)

    def fresh_cache() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{cache}{suffix}").unlink(missing_ok=True)

    def row(tool: str, fn: Callable[[], object], before: Callable[[], None] | None = None) -> Row:
        return Row(work, tool, _timed(fn, repeat, before), n, "files")

    rows = [
        row("xpkit cold (empty cache)", lambda: hash_path(root, cache=cache), fresh_cache),
        row(
            "xpkit cold, jobs=1 (one process)",
            lambda: hash_path(root, cache=cache, jobs=1),
            fresh_cache,
        ),
        row("xpkit nothing changed", lambda: hash_path(root, cache=cache)),
        row("python threads x2, no cache (reference)", lambda: _threads(root)),
    ]
    rows += _dirhash_rows(root, work, n, repeat, "md5")
    rows += _cli_rows(root, work, n, repeat)
    return rows


def _bench_big(path: Path, repeat: int) -> list[Row]:
    """Every tool on the big file."""
    size = path.stat().st_size
    work = f"{size / (1 << 30):g} GiB file"
    cache = path.parent.parent / "bench-cache-big.sqlite"
    _warm(path.parent)
    hash_path(path, cache=cache)
    rows = [
        Row(
            work,
            "xpkit cold (no cache)",
            _timed(lambda: hash_path(path, cache=False), repeat),
            size,
            "B",
        ),
        Row(
            work,
            "xpkit nothing changed",
            _timed(lambda: hash_path(path, cache=cache), repeat),
            size,
            "B",
        ),
    ]
    rows += _dirhash_rows(path.parent, work, size, repeat, None)
    rows += _cli_rows(path.parent, work, size, repeat, unit="B")
    return rows


def _warm(root: Path) -> None:
    """Read everything once, so that every tool finds the page cache warm."""
    hash_path(root, cache=False)


def _threads(root: Path) -> None:
    """Read and hash every file with two Python threads (what xpkit does not do)."""
    paths = [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(digest_file, paths, chunksize=256))


def _dirhash_rows(root: Path, work: str, size: float, repeat: int, extra: str | None) -> list[Row]:
    try:
        from dirhash import dirhash
    except ImportError:
        print("dirhash not installed: skipped")
        return []
    unit = "files" if "files" in work else "B"
    jobs = jobs_of(None)
    rows = [
        Row(
            work,
            f"dirhash xxh3_128 (jobs={jobs})",
            _timed(lambda: dirhash(root, xxhash.xxh3_128, jobs=jobs), repeat),
            size,
            unit,
        )
    ]
    if extra:
        rows.append(
            Row(
                work,
                f"dirhash {extra} (jobs={jobs})",
                _timed(lambda: dirhash(root, extra, jobs=jobs), repeat),
                size,
                unit,
            )
        )
    return rows  # fmt: skip


def _cli_rows(root: Path, work: str, size: float, repeat: int, unit: str = "files") -> list[Row]:
    rows = []
    if shutil.which("xxhsum"):
        cmd = f"find {root} -type f -print0 | xargs -0 xxhsum -H2 > /dev/null 2>&1"
        rows.append(
            Row(
                work,
                "xxhsum -H2 (per file, no tree hash)",
                _timed(lambda: subprocess.run(cmd, shell=True, check=True), repeat),
                size,
                unit,
            )
        )
    else:
        print("xxhsum not found (apt-get install xxhash): skipped")
    if shutil.which("dvc"):
        rows += _dvc_rows(root, work, size, repeat, unit)
    else:
        print("dvc not installed: skipped")
    return rows  # fmt: skip


def _dvc_rows(root: Path, work: str, size: float, repeat: int, unit: str) -> list[Row]:
    """``dvc add --no-commit`` (cold) and ``dvc status`` (nothing changed).

    DVC refuses data behind a symlink, so its scratch repo is the data's parent directory;
    its hash cache (the site cache) is kept inside that repo and removed for a cold run.
    """
    repo = root.parent
    made = [repo / ".dvc", repo / ".dvcignore", repo / f"{root.name}.dvc"]
    for path in made:
        _remove(path)
    try:
        subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
        site = repo / ".dvc" / "site-cache"
        config = ["dvc", "config", "--local", "core.site_cache_dir", str(site)]
        subprocess.run(config, cwd=repo, check=True)
        add = ["dvc", "add", "--no-commit", "-q", root.name]

        def reset() -> None:
            shutil.rmtree(site, ignore_errors=True)
            shutil.rmtree(repo / ".dvc" / "tmp", ignore_errors=True)

        cold = _timed(lambda: subprocess.run(add, cwd=repo, check=True), repeat, reset)
        status = _timed(lambda: subprocess.run(["dvc", "status", "-q"], cwd=repo), repeat)
    finally:
        for path in made:
            _remove(path)
    return [
        Row(work, "dvc add --no-commit (cold)", cold, size, unit),
        Row(work, "dvc status (nothing changed)", status, size, unit),
    ]


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _print_table(rows: list[Row]) -> None:
    print()
    head = ("workload", "tool", "median s", "best s", "cpu s", "throughput", "x xpkit cold")
    print(_LINE.format(*head))
    base: dict[str, float] = {}
    for row in rows:
        if row.tool.startswith("xpkit cold") and row.workload not in base:
            base[row.workload] = row.median_s
        rate = row.size / row.median_s
        shown = f"{rate / 1e9:.1f} GB/s" if row.unit == "B" else f"{rate / 1e3:.0f}k files/s"
        ratio = row.median_s / base[row.workload]
        times = (f"{row.median_s:.3f}", f"{row.best_s:.3f}", f"{row.cpu_s:.3f}")
        print(_LINE.format(row.workload, row.tool, *times, shown, f"{ratio:.2f}x"))


def _print_targets(rows: list[Row]) -> None:
    """PASS/FAIL of the targets of issue 4, on median wall time (best time in brackets)."""
    tree = {r.tool: r for r in rows if r.unit == "files"}
    big = {r.tool: r for r in rows if r.unit == "B"}
    checks: list[tuple[str, bool, str]] = []
    cold = tree.get("xpkit cold (empty cache)")
    if cold is not None:
        checks.append(("tree cold <= 1.0 s", cold.median_s <= 1.0, _times(cold)))
        dirhash = next((r for t, r in tree.items() if t.startswith("dirhash xxh3")), None)
        if dirhash is not None:
            ratio = dirhash.median_s / cold.median_s
            best = dirhash.best_s / cold.best_s
            checks.append(
                ("tree cold >= 3x faster than dirhash", ratio >= 3, f"{ratio:.1f}x ({best:.1f}x)")
            )
    same = tree.get("xpkit nothing changed")
    if same is not None:
        checks.append(("tree nothing changed <= 0.6 s", same.median_s <= 0.6, _times(same)))
    cold_big = big.get("xpkit cold (no cache)")
    if cold_big is not None:
        rate, best = (cold_big.size / t / 1e9 for t in (cold_big.median_s, cold_big.best_s))
        checks.append(("big file >= 10 GB/s", rate >= 10, f"{rate:.1f} GB/s ({best:.1f})"))
    print()
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<40} {value}")


def _times(row: Row) -> str:
    return f"{row.median_s:.3f} s ({row.best_s:.3f} s)"


# --- a million files, each tool a fresh process ------------------------------------

_XPKIT = """
import json, resource, sys, time
sys.path.insert(0, {src!r})
from xpkit._record._hashing import hash_path
t = time.perf_counter()
r = hash_path({root!r}, cache={cache!r})
print(json.dumps({{"hash": r.hash, "files": r.files, "cached": r.cached_files,
    "in_s": time.perf_counter() - t,
    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


@dataclass
class Sample:
    """One timed process: wall and CPU seconds (its children included), xpkit's answer."""

    wall_s: float
    cpu_s: float
    out: dict[str, object]


def _process(cmd: str | list[str], *, cwd: Path | None = None) -> Sample:
    cpu0 = _children_cpu_s()
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd, shell=isinstance(cmd, str), cwd=cwd, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1):  # dvc data status exits 1 when something changed
        sys.exit(f"{cmd} failed ({done.returncode}): {done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    out = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return Sample(wall, _children_cpu_s() - cpu0, out)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _xpkit(root: Path, cache: Path) -> list[str]:
    src = str(Path(__file__).resolve().parent.parent / "src")
    code = _XPKIT.format(src=src, root=str(root), cache=str(cache))
    return [sys.executable, "-c", code]


def _bench_scale(root: Path, args: argparse.Namespace) -> None:
    """Cold against xxhsum; nothing changed and one change against find and dvc."""
    n = sum(1 for _ in root.rglob("*.bin"))
    cache = root.parent / f"scale-cache-{root.name}.sqlite"
    floor = f"find {root} -type f -printf '%s %T@ %i\\n' > /dev/null"
    print(f"{n} files in {root}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
    _process(f"find {root} -type f -print0 | xargs -0 cat > /dev/null")  # page cache warm
    table: dict[str, list[Sample]] = {}

    def measure(name: str, cmd: str | list[str], before: Callable[[], None] | None = None) -> None:
        if before is not None:
            before()
        table.setdefault(name, []).append(_process(cmd, cwd=root.parent))

    def fresh_cache() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{cache}{suffix}").unlink(missing_ok=True)

    for _ in range(args.repeat):
        measure("xpkit cold (empty cache)", _xpkit(root, cache), fresh_cache)
        if shutil.which("xxhsum"):
            xxh = f"find {root} -type f -print0 | xargs -0 xxhsum -H2 > /dev/null"
            measure("xxhsum -H2 (one process)", xxh)
            measure("xxhsum -H2 (xargs -P 2)", xxh.replace("xargs -0", "xargs -0 -P 2"))
    if not shutil.which("xxhsum"):
        print("xxhsum not found (apt-get install xxhash): its lines are skipped")
    dvc = _dvc_repo(root, args.dvc)
    victims = iter(sorted(root.glob("d*/f*.bin"))[:: max(1, n // (2 * args.repeat + 2))])
    for _ in range(args.repeat):
        measure("find -printf size mtime inode (stat floor)", floor)
        measure("xpkit nothing changed", _xpkit(root, cache))
        if dvc is not None:
            measure("dvc data status (nothing changed)", [dvc, "data", "status"])
    for _ in range(args.repeat):
        _change(next(victims))
        measure("find -printf, one file changed", floor)
        measure("xpkit one file changed", _xpkit(root, cache))
        if dvc is not None:
            measure("dvc data status (one file changed)", [dvc, "data", "status"])
    _print_scale(table)


def _change(path: Path) -> None:
    """New bytes of the same size, dated a minute back (so it is cached once read)."""
    past = time.time_ns() - 60 * 10**9
    path.write_bytes(os.urandom(path.stat().st_size))
    os.utime(path, ns=(past, past))


def _dvc_repo(root: Path, dvc: str | None) -> str | None:
    """A DVC repo in the tree's parent tracking the tree (``dvc add`` once, timed)."""
    if not dvc:
        print("dvc not found (--dvc PATH): its lines are skipped")
        return None
    repo = root.parent
    if not (repo / f"{root.name}.dvc").exists():
        if not (repo / ".dvc").exists():
            subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=repo, check=True)
        print(f"dvc add {root.name} (once, it hashes every file) ...", flush=True)
        added = _process([dvc, "add", "-q", root.name], cwd=repo)
        print(f"dvc add: {added.wall_s:.1f} s wall, {added.cpu_s:.1f} s CPU")
    return dvc


def _print_scale(table: dict[str, list[Sample]]) -> None:
    line = "{:<46} {:>9} {:>9} {:>9} {:>8}"
    print()
    print(line.format("tool", "median s", "best s", "CPU s", "RSS MB"))
    medians = {}
    for name, samples in table.items():
        walls = [s.wall_s for s in samples]
        rss = max((float(str(s.out.get("rss_mb", 0))) for s in samples), default=0.0)
        medians[name] = statistics.median(walls)
        cpu = statistics.median(s.cpu_s for s in samples)
        shown = f"{rss:.0f}" if rss else "-"
        print(line.format(name, f"{medians[name]:.2f}", f"{min(walls):.2f}", f"{cpu:.2f}", shown))
    for samples in (table.get("xpkit nothing changed", []), table.get("xpkit one file changed")):
        for s in samples or []:
            if s.out.get("cached") == s.out.get("files"):
                continue
            print(f"  xpkit read {int(str(s.out['files'])) - int(str(s.out['cached']))} file(s)")
    print()
    for left, right, target in (
        ("xpkit nothing changed", "find -printf size mtime inode (stat floor)", 2.0),
        ("xpkit one file changed", "find -printf, one file changed", 2.0),
        ("xpkit cold (empty cache)", "xxhsum -H2 (one process)", 1.3),
        ("xpkit nothing changed", "dvc data status (nothing changed)", 1.0),
        ("xpkit one file changed", "dvc data status (one file changed)", 1.0),
    ):
        if left in medians and right in medians:
            ratio = medians[left] / medians[right]
            verdict = "PASS" if ratio <= target else "FAIL"
            print(f"{verdict}  {left} / {right}: {ratio:.2f}x (target <= {target}x)")


if __name__ == "__main__":
    main()
