"""Reuse: a call whose config, code, inputs and upstream runs match a completed run returns it.

A 3-stage pipeline of plain calls re-runs only what an edit concerns; a return value that
would have to be unpickled from a store is never loaded.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import xpkit as xp
from helpers import SRC, import_project
from xpkit._core._lock import load_lock
from xpkit._core._paths import RunPaths
from xpkit._execute import _returned

S1 = """
import dataclasses
from pathlib import Path
import xpkit as xp

@dataclasses.dataclass
class Config:
    raw: str = "raw.txt"

@xp.stage(name="load", data=["raw"], reuse=True)
def main(cfg: Config):
    with open("ran.log", "a") as f:
        f.write("load\\n")
    rows = Path(cfg.raw).read_text().split()
    Path(cfg.save_dir, "rows.txt").write_text("\\n".join(rows))
    return len(rows)
"""

S2 = """
import dataclasses
from pathlib import Path
import xpkit as xp

@dataclasses.dataclass
class Config:
    load: str = "results/load/latest"
    extra: str = "extra.txt"

@xp.stage(name="clean", data=["extra"], upstream=["load"], reuse=True)
def main(cfg: Config):
    with open("ran.log", "a") as f:
        f.write("clean\\n")
    rows = Path(cfg.load, "rows.txt").read_text().split()
    extra = Path(cfg.extra).read_text().split()
    Path(cfg.save_dir, "clean.txt").write_text("\\n".join(rows + extra))
    return {"rows": len(rows) + len(extra)}
"""

S3 = """
import dataclasses
from pathlib import Path
import xpkit as xp
import fmt3

@dataclasses.dataclass
class Config:
    clean: str = "results/clean/latest"

@xp.stage(name="report", upstream=["clean"], reuse=True)
def main(cfg: Config):
    with open("ran.log", "a") as f:
        f.write("report\\n")
    rows = Path(cfg.clean, "clean.txt").read_text().split()
    Path(cfg.save_dir, "report.txt").write_text(fmt3.line(rows))
    return fmt3.line(rows)
"""

FMT3 = "def line(rows):\n    return f'{len(rows)} rows'\n"

PIPE = """
import s1, s2, s3   # every stage module imported before the first stage runs
print(s1.main(), s2.main(), s3.main())
"""


def git(project: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def py(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("XPKIT_ROOT", None)
    return subprocess.run(
        [sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    """A git repo holding a 3-stage pipeline; stage 3 alone imports fmt3."""
    files = {"s1.py": S1, "s2.py": S2, "s3.py": S3, "fmt3.py": FMT3, "pipe.py": PIPE}
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    (tmp_path / "raw.txt").write_text("a b c\n")
    (tmp_path / "extra.txt").write_text("d\n")
    (tmp_path / ".gitignore").write_text("results/\nran.log\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "pipeline")
    return tmp_path


def edit(path: Path, text: str) -> None:
    """Write a module as an editor would, seconds after its last write: Python trusts the
    cached bytecode of a source of the same size and mtime second, so a same-size edit
    within the second of the first write (this test runs the pipeline three times in one
    second) would import the old code."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    later = max(time.time_ns(), before + 2 * 10**9)
    os.utime(path, ns=(later, later))


def run_pipe(project: Path) -> tuple[list[str], str]:
    """Run the pipeline; the stages whose body ran, and what it printed."""
    log = project / "ran.log"
    log.unlink(missing_ok=True)
    done = py(project, "pipe.py")
    assert done.returncode == 0, done.stderr
    ran = log.read_text().split() if log.exists() else []
    return ran, done.stdout


def run_count(project: Path) -> int:
    results = project / "results"
    return sum(1 for p in results.glob("*/*") if p.is_dir() and not p.is_symlink())


def test_pipeline_reruns_only_what_changed_downstream_included(pipeline: Path) -> None:
    """Second call runs nothing; new data of stage 2 reruns 2 and 3; fmt3 edited reruns 3."""
    ran, out = run_pipe(pipeline)
    assert ran == ["load", "clean", "report"]
    assert out.strip().splitlines()[-1] == "3 {'rows': 4} 4 rows"
    assert run_count(pipeline) == 3

    ran, out = run_pipe(pipeline)
    assert ran == []
    assert out.count("(nothing changed)") == 3
    assert out.strip().splitlines()[-1] == "3 {'rows': 4} 4 rows"  # the recorded values
    assert run_count(pipeline) == 3

    (pipeline / "extra.txt").write_text("d e\n")
    ran, out = run_pipe(pipeline)
    assert ran == ["clean", "report"]
    assert out.strip().splitlines()[-1] == "3 {'rows': 5} 5 rows"
    assert run_count(pipeline) == 5

    edit(pipeline / "fmt3.py", "def line(rows):\n    return f'{len(rows)} ROWS'\n")
    ran, out = run_pipe(pipeline)
    assert ran == ["report"]
    assert out.strip().splitlines()[-1] == "3 {'rows': 5} 5 ROWS"

    ran, _ = run_pipe(pipeline)
    assert ran == []


def test_stage_files_leave_out_modules_only_another_stage_imports(pipeline: Path) -> None:
    """src.files of stage 1 lists its own module, not fmt3 (imported for stage 3 only)."""
    run_pipe(pipeline)
    files = {name: set(load_lock(pipeline / "results" / name / "latest").src["files"])  # type: ignore[index]
             for name in ("load", "report")}  # fmt: skip
    assert files["load"] == {"s1.py"}
    assert files["report"] == {"s3.py", "fmt3.py"}


def test_show_says_reused_and_the_parent_records_the_reused_run(pipeline: Path) -> None:
    """A stage called inside a running stage: the reused run is the caller's upstream."""
    (pipeline / "outer.py").write_text(
        textwrap.dedent(
            """
            import dataclasses
            import xpkit as xp
            import s1

            @dataclasses.dataclass
            class Config:
                n: int = 0

            @xp.stage(name="outer")
            def main(cfg: Config):
                return s1.main()

            if __name__ == "__main__":
                xp.run(main)
            """
        )
    )
    assert py(pipeline, "outer.py").returncode == 0
    assert py(pipeline, "outer.py").returncode == 0
    load_run = load_lock(pipeline / "results" / "load" / "latest")
    outer = load_lock(pipeline / "results" / "outer" / "latest")
    assert outer.upstream is not None
    assert [u["id"] for u in outer.upstream.values()] == [load_run.id]
    reuses = _returned.read_reuses(pipeline / load_run.dir)
    assert [r["by"] for r in reuses] == [outer.id]
    shown = py(pipeline, "-m", "xpkit", "show", load_run.id)
    assert shown.returncode == 0, shown.stderr
    assert "reused" in shown.stdout
    assert "1 time(s) instead of running" in shown.stdout


def test_reuse_on_the_command_line(pipeline: Path) -> None:
    """--reuse on a script: the second run with the same arguments runs nothing."""
    (pipeline / "cli.py").write_text(
        "import xpkit as xp, s1\nif __name__ == '__main__':\n    xp.run(xp.stage(name='cli')"
        "(s1.main.fn))\n"
    )
    first = py(pipeline, "cli.py", "--reuse")
    assert first.returncode == 0, first.stderr
    second = py(pipeline, "cli.py", "--reuse")
    assert second.returncode == 0, second.stderr
    assert "reused run" in second.stdout
    assert (pipeline / "ran.log").read_text().split() == ["load"]
    third = py(pipeline, "cli.py")  # without --reuse: runs
    assert third.returncode == 0
    assert (pipeline / "ran.log").read_text().split() == ["load", "load"]


MARKER_STAGE = """
import dataclasses
import xpkit as xp

@dataclasses.dataclass
class Config:
    n: int = 1

@xp.stage(name="objects", reuse=True)
def main(cfg: Config):
    with open("ran.log", "a") as f:
        f.write("objects\\n")
    return (cfg.n, {"as": "tuple"})   # not plain JSON: pickled

@xp.stage(name="plain", reuse=True)
def plain(cfg: Config):
    with open("ran.log", "a") as f:
        f.write("plain\\n")
    return {"n": cfg.n}
"""


class _Boom:
    """Unpickling this creates a marker file: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "unpickled!"))


def test_a_pickled_value_from_a_store_is_never_loaded(
    pipeline: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A pulled run with a pickled value (even a hostile one) is re-run, never unpickled;
    a pulled run with a plain JSON value is reused."""
    (pipeline / "objs.py").write_text(textwrap.dedent(MARKER_STAGE))
    git(pipeline, "add", "-A")
    git(pipeline, "commit", "-qm", "objects")
    code = "import objs; print(objs.main(), objs.plain())"
    assert py(pipeline, "-c", code).returncode == 0
    here = py(pipeline, "-c", code)  # in its own clone, the signed pickle is reused
    assert "(nothing changed)" in here.stdout
    assert (pipeline / "ran.log").read_text().split() == ["objects", "plain"]
    run_dir = (pipeline / "results" / "objects" / "latest").resolve()
    marker = tmp_path_factory.mktemp("marker") / "pwned"
    blob = RunPaths(run_dir).result_pickle.read_bytes()
    hostile = pickle.dumps(_Boom(str(marker)))
    RunPaths(run_dir).result_pickle.write_bytes(blob[:32] + hostile)  # a store's version
    store = tmp_path_factory.mktemp("store")
    ids = [load_lock(pipeline / "results" / s / "latest").id for s in ("objects", "plain")]
    pushed = py(pipeline, "-m", "xpkit", "push", *ids, "--store", str(store))
    assert pushed.returncode == 0, pushed.stderr
    clone = tmp_path_factory.mktemp("clone") / "repo"
    git(pipeline, "clone", "-q", str(pipeline), str(clone))
    for run_id in ids:
        pulled = py(clone, "-m", "xpkit", "pull", run_id, "--store", str(store))
        assert pulled.returncode == 0, pulled.stderr
    done = py(clone, "-c", code)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()  # the hostile pickle was never loaded
    assert (clone / "ran.log").read_text().split() == ["objects"]  # plain JSON: reused
    assert "(1, {'as': 'tuple'}) {'n': 1}" in done.stdout


def test_reuse_keyword_never_collides_with_a_config_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config field named reuse is set through cfg; reuse= is always the call's option."""
    module = import_project(
        tmp_path,
        monkeypatch,
        "withreuse",
        """
        import dataclasses
        import xpkit as xp

        @dataclasses.dataclass
        class Config:
            reuse: int = 0

        @xp.stage()
        def main(cfg: Config):
            return cfg.reuse
        """,
    )
    assert module.main({"reuse": 5}) == 5
    assert module.main({"reuse": 5}, reuse=True) == 5
    assert module.main.last is not None
    first = module.main.last.dir
    assert module.main({"reuse": 5}, reuse=True) == 5
    assert module.main.last.dir == first  # reused: the same run
    with pytest.raises(TypeError, match="reuse= takes True or False"):
        module.main(reuse=7)


@dataclasses.dataclass
class _Cfg:
    n: int = 0


def test_unpicklable_value_is_a_warning_and_the_run_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generator cannot be kept: the run completes, says so, and a reusing call runs."""
    module = import_project(
        tmp_path,
        monkeypatch,
        "gen",
        """
        import dataclasses
        import xpkit as xp

        @dataclasses.dataclass
        class Config:
            n: int = 2

        calls = []

        @xp.stage(reuse=True)
        def main(cfg: Config):
            calls.append(cfg.n)
            return (i for i in range(cfg.n))
        """,
    )
    assert list(module.main()) == [0, 1]
    assert list(module.main()) == [0, 1]
    assert module.calls == [2, 2]
    assert module.main.last is not None
    assert "returned" not in module.main.last.lock.extra
    assert "cannot be reused" in RunPaths(module.main.last.dir).log.read_text()
    assert xp.Run(module.main.last.dir).status == "completed"
