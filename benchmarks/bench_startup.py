"""Startup cost of a tracked xpkit run, side by side with its peers.

Wall time of ``python app.py`` for the same empty function configured by one dataclass:

* ``xpkit``     : ``@xp.stage`` + ``xp.run`` (a tracked run: run directory, config.yaml,
                  run.lock with env, run.log with fd capture, metrics.jsonl, latest link)
* ``omegaconf`` : plain OmegaConf (structured config + dot-list overrides), untracked
* ``hydra``     : a minimal ``@hydra.main`` app (its default output directory and logging)
* ``python``    : ``python -c pass``

The four commands run round-robin in a temporary git repository, ``--repeats`` times each;
medians and ratios are printed. Then import times, in a fresh interpreter each: what a stage
script pays (``import xpkit`` and ``xp.stage``, which loads the run machinery and OmegaConf)
beside ``import omegaconf`` alone.

Usage: ``python benchmarks/bench_startup.py [--repeats 15]`` (PYTHONPATH may point at src/).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

XPKIT_APP = """
from dataclasses import dataclass
import xpkit as xp

@dataclass
class Config:
    param: int = 1
    name: str = "a"

@xp.stage
def main(cfg: Config):
    pass

if __name__ == "__main__":
    xp.run(main)
"""

OMEGACONF_APP = """
from dataclasses import dataclass
import sys
from omegaconf import OmegaConf

@dataclass
class Config:
    param: int = 1
    name: str = "a"

def main(cfg):
    pass

if __name__ == "__main__":
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist(sys.argv[1:]))
    main(cfg)
"""

HYDRA_APP = """
from dataclasses import dataclass
import hydra
from hydra.core.config_store import ConfigStore

@dataclass
class Config:
    param: int = 1
    name: str = "a"

ConfigStore.instance().store(name="config", node=Config)

@hydra.main(version_base=None, config_name="config")
def main(cfg: Config) -> None:
    pass

if __name__ == "__main__":
    main()
"""


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def wall_times(commands: dict[str, list[str]], cwd: Path, env: dict[str, str], repeats: int):
    times: dict[str, list[float]] = {name: [] for name in commands}
    for cmd in commands.values():  # warm the page cache and .pyc files
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    for _ in range(repeats):
        for name, cmd in commands.items():
            started = time.perf_counter()
            subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
            times[name].append(time.perf_counter() - started)
    return {name: median_ms(samples) for name, samples in times.items()}


def import_ms(before: str, code: str, env: dict[str, str]) -> float:
    """Milliseconds that ``code`` takes in a fresh interpreter, after ``before`` ran."""
    timed = (
        f"{before}\nimport time\nt = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", timed], env=env, check=True, capture_output=True, text=True
    ).stdout
    return float(out.split()[-1]) * 1000


def import_times(env: dict[str, str], repeats: int) -> dict[str, float]:
    """Medians (ms), sampled round-robin: omegaconf alone, xpkit alone, and what a stage
    script pays (``import xpkit``, then ``xp.stage``, which loads the run machinery), alone
    and after omegaconf."""
    probes = {
        "import omegaconf": ("", "import omegaconf"),
        "import xpkit": ("", "import xpkit"),
        "import xpkit; xp.stage": ("", "import xpkit; xpkit.stage"),
        "same, after omegaconf": ("import omegaconf", "import xpkit; xpkit.stage"),
    }
    samples: dict[str, list[float]] = {name: [] for name in probes}
    for _ in range(repeats):
        for name, (before, code) in probes.items():
            samples[name].append(import_ms(before, code, env))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        # xpkit from src/ gets its bytecode cached like the installed peers (pip compiles
        # theirs), also where PYTHONDONTWRITEBYTECODE is set
        # MLflow sync off: it would run after each script's exit in a detached process
        # (bench_mlflow.py measures it), loading the machine during the next samples
        env = {
            **os.environ,
            "PYTHONPATH": str(SRC),
            "PYTHONPYCACHEPREFIX": f"{tmp}/pycache",
            "XPKIT_TRACKING": "0",
        }
        for name in ("XPKIT_ROOT", "PYTHONDONTWRITEBYTECODE"):
            env.pop(name, None)
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        (root / "xp_app.py").write_text(XPKIT_APP)
        (root / "oc_app.py").write_text(OMEGACONF_APP)
        (root / "hydra_app.py").write_text(HYDRA_APP)
        commands = {
            "xpkit (tracked run)": [sys.executable, "xp_app.py", "param=2"],
            "omegaconf (untracked)": [sys.executable, "oc_app.py", "param=2"],
            "hydra (minimal app)": [sys.executable, "hydra_app.py", "param=2"],
            "python -c pass": [sys.executable, "-c", "pass"],
        }
        medians = wall_times(commands, root, env, args.repeats)
        runs = len([p for p in (root / "results" / "xp_app").iterdir() if p.name != "latest"])
        assert runs == args.repeats + 1, runs
        imports = import_times(env, args.repeats)
    xp_ms = medians["xpkit (tracked run)"]
    print(f"wall time, median of {args.repeats} (ms)")
    for name, ms in medians.items():
        print(f"  {name:<24} {ms:7.1f}   xpkit/this = {xp_ms / ms:5.2f}")
    hydra_ratio = xp_ms / medians["hydra (minimal app)"]
    print(
        f"  target xpkit/hydra <= 0.60: {hydra_ratio:.2f} {'ok' if hydra_ratio <= 0.6 else 'MISS'}"
    )

    added_ms = imports["import xpkit; xp.stage"] - imports["import omegaconf"]
    print(f"import time (a fresh interpreter each, median of {args.repeats}, round-robin)")
    for name, ms in imports.items():
        print(f"  {name:<30} {ms:6.1f} ms")
    print(f"  target xpkit adds <= 25 ms: {added_ms:.1f} ms {'ok' if added_ms <= 25 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
