"""The public API: names, and what importing xpkit costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import xpkit
from helpers import SRC
from xpkit._catalog import _runs

HEAVY = ("mlflow", "joblib", "submitit", "fsspec", "rich", "pandas", "sqlite3", "IPython", "numpy")


def test_all_is_sorted_and_every_name_exists() -> None:
    """__all__ is sorted, has no duplicates, and each name is an attribute of the package."""
    assert list(xpkit.__all__) == sorted(xpkit.__all__)
    assert len(set(xpkit.__all__)) == len(xpkit.__all__)
    for name in xpkit.__all__:
        assert hasattr(xpkit, name), name


def test_design_names_are_public() -> None:
    """The names of DESIGN.md sections 1 and 5 are exported."""
    names = ("stage", "Stage", "run", "Run", "runs", "current", "log_metrics", "get_logger")
    for name in (*names, "track_data", "use_run", "hash_path", "push", "pull"):
        assert callable(getattr(xpkit, name)), name
    assert isinstance(xpkit.__version__, str)


def fresh_python(code: str) -> str:
    """What ``python -c code`` prints in a new interpreter that imports this checkout."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_stays_light_and_quiet() -> None:
    """import xpkit loads no optional heavy library and configures no logging."""
    code = (
        "import json, logging, sys; import xpkit; "
        "print(json.dumps({'modules': sorted(m.split('.')[0] for m in sys.modules), "
        "'handlers': len(logging.getLogger().handlers)}))"
    )
    report = json.loads(fresh_python(code))
    loaded = set(report["modules"])
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert report["handlers"] == 0
    assert "xpkit" in loaded


def test_import_loads_only_what_a_run_needs() -> None:
    """The listing, hashing, MLflow and store modules (and the stdlib modules they need) are
    imported on first use of their names, not by ``import xpkit``."""
    code = (
        "import sys; before = set(sys.modules); import xpkit; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    loaded = set(fresh_python(code).split())
    lazy = {
        "xpkit._catalog._runs",
        "xpkit._record._data",
        "xpkit._record._hashing",
        "xpkit._tracking._mlflow",
        "xpkit._share._store",
        "xpkit._share._pull",
    }
    assert not loaded & lazy, loaded & lazy
    assert not loaded & {"json", "socket", "logging", "hashlib", "traceback"}
    assert xpkit.runs is _runs.runs
    assert "hash_path" in dir(xpkit)


def test_a_listing_from_the_index_reads_no_yaml(tmp_path: Path) -> None:
    """xp.runs() of runs the index holds imports neither PyYAML nor OmegaConf; a run.lock
    the index does not hold is read with PyYAML, loaded then."""
    from xpkit._core._lock import RunLock, write_lock

    for i in range(3):
        run_dir = tmp_path / "results" / "s" / f"r{i}"
        run_dir.mkdir(parents=True)
        lock = RunLock(id=f"r{i}", stage="s", dir=str(run_dir), status="completed")
        write_lock(run_dir / "run.lock", lock.replace(config={"lr": 0.1}))
        past = time.time_ns() - 3600 * 10**9
        os.utime(run_dir / "run.lock", ns=(past, past))
    code = (
        "import os, sys; os.chdir(sys.argv[1]); os.environ['XPKIT_ROOT'] = sys.argv[1]; "
        "import xpkit as xp; n = len(xp.runs()); "
        "print(n, 'yaml' in sys.modules, 'omegaconf' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}

    def listed() -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout.split("\n")[0]

    assert listed() == "3 True False"  # the first listing reads the locks
    assert listed() == "3 False False"  # from the index
