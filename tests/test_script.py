"""A stage script run from the shell: command line, config layers, run directory, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import SRC

ENV = {**os.environ, "PYTHONPATH": str(SRC), "XPKIT_TRACKING": "0"}
ENV.pop("XPKIT_ROOT", None)

SCRIPT = """
import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

import xpkit as xp


@dataclass
class Model:
    lr: float = 0.1  # learning rate
    layers: int = 2


@dataclass
class Config:
    param: int = 1  # how many things
    name: str = "a"
    model: Model = field(default_factory=Model)
    fail: bool = False
    sleep_s: float = 0.0


@xp.stage
def main(cfg: Config):
    log = xp.get_logger()
    log.info("logger record %s", cfg.name)
    print("printed line", cfg.param, flush=True)
    warnings.warn("careful now")
    subprocess.run(["echo", "from a subprocess"], check=True)
    os.write(1, b"c-level write\\n")
    xp.log_metrics({"loss": 1.0}, step=0)
    xp.log_metrics({"loss": 0.25, "acc": 0.5}, step=1)
    if cfg.sleep_s:
        print("sleeping", flush=True)
        time.sleep(cfg.sleep_s)
    if cfg.fail:
        raise ValueError("the body failed")
    return cfg.param


if __name__ == "__main__":
    xp.run(main)
"""


def make_project(tmp_path: Path, script: str = SCRIPT) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "prep.py").write_text(script)
    return tmp_path


def run_script(project: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "prep.py", *args],
        cwd=project,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_run(project: Path) -> Path:
    runs = [p for p in (project / "results" / "prep").iterdir() if p.name != "latest"]
    assert len(runs) == 1, runs
    return runs[0]


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_bare_and_dash_o_overrides_are_applied(tmp_path: Path) -> None:
    """Bare KEY=VALUE and -o KEY=VALUE both override, dotted keys reach nested fields."""
    project = make_project(tmp_path)
    out = run_script(project, "param=3", "-o", "model.lr=0.5", "name=zz")
    assert out.returncode == 0, out.stderr
    config = read_yaml(only_run(project) / "config.yaml")
    assert config["param"] == 3
    assert config["model"] == {"lr": 0.5, "layers": 2}
    assert config["name"] == "zz"


def test_layers_apply_in_documented_precedence(tmp_path: Path) -> None:
    """Defaults < --config < --overrides-path < dot-list overrides."""
    project = make_project(tmp_path)
    (project / "base.yaml").write_text("param: 2\nname: from-config\nmodel:\n  layers: 5\n")
    (project / "over.yaml").write_text("param: 3\nname: from-overrides\n")
    out = run_script(project, "--config", "base.yaml", "--overrides-path", "over.yaml", "param=4")
    assert out.returncode == 0, out.stderr
    config = read_yaml(only_run(project) / "config.yaml")
    assert config["param"] == 4  # dot-list wins
    assert config["name"] == "from-overrides"  # overrides file beats --config
    assert config["model"] == {"lr": 0.1, "layers": 5}  # --config beats defaults


def test_overrides_path_underscore_alias(tmp_path: Path) -> None:
    """--overrides_path is accepted as an alias of --overrides-path."""
    project = make_project(tmp_path)
    (project / "over.yaml").write_text("model:\n  lr: 0.75\n")
    out = run_script(project, "--overrides_path", "over.yaml")
    assert out.returncode == 0, out.stderr
    assert read_yaml(only_run(project) / "config.yaml")["model"]["lr"] == 0.75


def test_experiment_from_default_yaml_beside_script(tmp_path: Path) -> None:
    """--experiment NAME without --config reads the node of <stem>.yaml beside the script."""
    project = make_project(tmp_path)
    (project / "prep.yaml").write_text("small:\n  param: 7\nbig:\n  param: 70\n  name: big\n")
    sub = project / "elsewhere"
    sub.mkdir()
    out = subprocess.run(
        [sys.executable, str(project / "prep.py"), "--experiment", "big", "param=71"],
        cwd=sub,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    config = read_yaml(only_run(project) / "config.yaml")
    assert (config["param"], config["name"]) == (71, "big")


def test_experiment_of_an_explicit_config_file(tmp_path: Path) -> None:
    """--config FILE --experiment NAME selects that node of FILE."""
    project = make_project(tmp_path)
    (project / "grid.yaml").write_text("fast:\n  model:\n    lr: 0.9\nslow:\n  param: 9\n")
    out = run_script(project, "--config", "grid.yaml", "--experiment", "fast")
    assert out.returncode == 0, out.stderr
    config = read_yaml(only_run(project) / "config.yaml")
    assert config["model"]["lr"] == 0.9
    assert config["param"] == 1


def test_run_directory_holds_every_file(tmp_path: Path) -> None:
    """A run writes config.yaml, run.lock, run.log, metrics.jsonl and points latest at it."""
    project = make_project(tmp_path)
    before = time.monotonic()
    out = run_script(project, "param=3")
    script_s = time.monotonic() - before
    assert out.returncode == 0, out.stderr
    run_dir = only_run(project)
    rel = run_dir.relative_to(project).as_posix()
    assert len(run_dir.name) == len("yymmdd-HHMMSS")
    assert os.readlink(project / "results" / "prep" / "latest") == run_dir.name
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".xpkit",  # the return value, kept for reuse
        "config.yaml",
        "metrics.jsonl",
        "run.lock",
        "run.log",
    ]

    config = read_yaml(run_dir / "config.yaml")
    assert config == {
        "param": 3,
        "name": "a",
        "model": {"lr": 0.1, "layers": 2},
        "fail": False,
        "sleep_s": 0.0,
        "save_dir": rel,
    }

    lock = read_yaml(run_dir / "run.lock")
    assert list(lock)[:4] == ["xpkit", "id", "stage", "dir"]
    assert lock["xpkit"] == 1
    assert isinstance(lock["id"], str)
    assert len(lock["id"]) == 12
    int(lock["id"], 16)
    assert (lock["stage"], lock["dir"], lock["status"]) == ("prep", rel, "completed")
    started = lock["started"]
    assert isinstance(started, str)
    assert isinstance(lock["ended"], str)
    assert lock["ended"] >= started
    assert isinstance(lock["duration_s"], float)
    assert 0 <= lock["duration_s"] <= script_s  # the run lasted no longer than its process
    assert lock["argv"] == ["prep.py", "param=3"]
    assert isinstance(lock["pid"], int)
    assert isinstance(lock["host"], str)
    assert lock["config"] == config
    assert "error" not in lock
    env = lock["env"]
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(env["platform"], str)
    assert env["host"] == lock["host"]
    assert env["packages"]["omegaconf"]
    assert env["packages"]["pyyaml"]
    assert lock["metrics"] == {"loss": 0.25, "acc": 0.5}

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    assert records[1]["metrics"] == {"loss": 0.25, "acc": 0.5}
    assert all(isinstance(r["time"], float) for r in records)

    log = (run_dir / "run.log").read_text()
    for text in (
        "INFO [prep] logger record a",
        "printed line 3",
        "UserWarning: careful now",
        "from a subprocess",
        "c-level write",
        "completed in",
    ):
        assert text in log, text
    # the terminal still shows everything
    for text in ("logger record a", "printed line 3", "from a subprocess", "c-level write"):
        assert text in out.stdout, text
    assert "UserWarning: careful now" in out.stderr


def test_failed_run_records_error_and_exits_1(tmp_path: Path) -> None:
    """A failing body: exit 1, traceback on stderr, run.lock failed with type/message/traceback."""
    project = make_project(tmp_path)
    out = run_script(project, "fail=true")
    assert out.returncode == 1
    assert "ValueError: the body failed" in out.stderr
    assert 'raise ValueError("the body failed")' in out.stderr
    run_dir = only_run(project)
    lock = read_yaml(run_dir / "run.lock")
    assert lock["status"] == "failed"
    assert lock["error"]["type"] == "ValueError"
    assert lock["error"]["message"] == "the body failed"
    assert 'prep.py", line' in lock["error"]["traceback"]
    assert "xpkit" + os.sep + "_" not in lock["error"]["traceback"]  # no xpkit frames
    assert lock["metrics"] == {"loss": 0.25, "acc": 0.5}
    assert "ValueError: the body failed" in (run_dir / "run.log").read_text()


def test_help_lists_every_field_with_type_default_and_comment(tmp_path: Path) -> None:
    """--help lists each config field (dotted), its type, default and trailing comment."""
    project = make_project(tmp_path)
    out = run_script(project, "--help")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    expected = {
        "param": ("int", "1", "how many things"),
        "name": ("str", "'a'", ""),
        "model.lr": ("float", "0.1", "learning rate"),
        "model.layers": ("int", "2", ""),
        "fail": ("bool", "False", ""),
        "sleep_s": ("float", "0.0", ""),
        "save_dir": ("str", "results/prep/${now:%y%m%d-%H%M%S}", ""),
    }
    for key, parts in expected.items():
        assert key in lines, key
        for part in parts:
            assert part in lines[key], (key, part)
    for flag in ("--config", "--experiment", "--overrides-path", "-o", "--print-config", "--pdb"):
        assert flag in out.stdout
    assert not (project / "results").exists()


def test_help_lists_the_experiments_of_the_default_yaml(tmp_path: Path) -> None:
    """--help lists the experiments of <script>.yaml with what each sets; a top-level
    mapping that is a config group (``model``) is config, not an experiment."""
    project = make_project(tmp_path)
    (project / "prep.yaml").write_text(
        "model:\n  layers: 3\nsmall:\n  param: 7\nbig:\n  param: 70\n  model:\n    lr: 0.5\n"
    )
    out = run_script(project, "--help")
    assert out.returncode == 0, out.stderr
    listing = out.stdout.split("experiments in prep.yaml (--experiment NAME):\n")[1]
    assert listing.splitlines() == ["  small  param=7", "  big    param=70, model.lr=0.5"]


def test_help_lists_the_experiments_of_the_config_given(tmp_path: Path) -> None:
    """With --config FILE (before or after --help), its experiments are the ones listed."""
    project = make_project(tmp_path)
    (project / "prep.yaml").write_text("default_one:\n  param: 1\n")
    (project / "grid.yaml").write_text("fast:\n  name: " + "x" * 100 + "\n")
    for args in (["--config", "grid.yaml", "--help"], ["--help", "--config=grid.yaml"]):
        out = run_script(project, *args)
        assert out.returncode == 0, out.stderr
        assert "experiments in grid.yaml (--experiment NAME):\n  fast  name=xxx" in out.stdout
        assert "default_one" not in out.stdout
        assert max(len(line) for line in out.stdout.splitlines()) < 100  # cut, not wrapped


def test_help_with_a_broken_experiments_file_says_so_in_one_line(tmp_path: Path) -> None:
    """Bad YAML beside the script: --help still works and names the file and line."""
    project = make_project(tmp_path)
    (project / "prep.yaml").write_text("fast:\n  param: [1, 2\n")
    out = run_script(project, "--help")
    assert out.returncode == 0, out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("experiments")]
    assert line.startswith("experiments: malformed YAML in prep.yaml line 3")
    assert "Traceback" not in out.stderr + out.stdout


def test_help_describes_the_stage_with_the_script_docstring(tmp_path: Path) -> None:
    """Without a function docstring, the script's own docstring is the description."""
    project = make_project(tmp_path, '"""Prepare the rows."""\n' + SCRIPT)
    out = run_script(project, "--help")
    assert out.returncode == 0, out.stderr
    assert "\nPrepare the rows.\n" in out.stdout


def test_print_config_prints_resolved_yaml_and_makes_no_run(tmp_path: Path) -> None:
    """--print-config prints the resolved config as YAML and creates no run directory."""
    project = make_project(tmp_path)
    out = run_script(project, "--print-config", "param=5", "model.layers=4")
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["param"] == 5
    assert printed["model"] == {"lr": 0.1, "layers": 4}
    assert printed["save_dir"].startswith("results/prep/")
    assert "${" not in printed["save_dir"]
    assert not (project / "results").exists()


BAD_INPUTS = [
    pytest.param(["model.lrr=3"], ["'model.lrr'", "model.lr"], id="unknown-key"),
    pytest.param(["model.lr=fast"], ["'model.lr'", "fast"], id="wrong-type"),
    pytest.param(["-o", "param=1.5"], ["'param'"], id="wrong-type-int"),
    pytest.param(["param"], ["key=value"], id="not-key-value"),
    pytest.param(
        ["--config", "bad.yaml"], ["bad.yaml", "line 3", "flow sequence"], id="malformed-yaml"
    ),
    pytest.param(["--config", "missing.yaml"], ["missing.yaml"], id="missing-file"),
    pytest.param(
        ["--config", "exps.yaml", "--experiment", "huge"],
        ["'huge'", "small", "big"],
        id="unknown-experiment",
    ),
    pytest.param(["--overrides-path", "unknown.yaml"], ["'model.depth'"], id="unknown-key-file"),
    pytest.param(["--experiment", "small"], ["prep.yaml"], id="no-experiment-file"),
    pytest.param(["--bogus"], ["--bogus"], id="unknown-flag"),
]


@pytest.mark.parametrize(("args", "words"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_no_run_directory(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    """Each bad input: exit status 2, a one-line error naming the culprit, no run directory."""
    project = make_project(tmp_path)
    (project / "bad.yaml").write_text("param: 2\nmodel:\n  lr: [1,\n  layers: 3\n")
    (project / "exps.yaml").write_text("small:\n  param: 1\nbig:\n  param: 2\n")
    (project / "unknown.yaml").write_text("model:\n  depth: 3\n")
    out = run_script(project, *args)
    assert out.returncode == 2, out.stderr
    if args != ["--bogus"]:  # argparse prints its usage before its one-line error
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    for word in words:
        assert word in out.stderr, (word, out.stderr)
    assert "Traceback" not in out.stderr
    assert not (project / "results").exists()


def test_twenty_runs_started_at_once_get_twenty_directories(tmp_path: Path) -> None:
    """20 processes started in the same second each get their own, completed, run directory.

    Each process imports xpkit, says it is ready, then waits for a gate file before it runs
    prep.py as its main script: the gate opens once all are ready, so the runs start
    together however loaded the machine is.
    """
    project = make_project(tmp_path)
    gate = project / "gate"
    launch = (
        "import os, pathlib, runpy, sys, time, xpkit\n"
        "pathlib.Path(f'ready-{os.getpid()}').touch()\n"
        "while not pathlib.Path('gate').exists():\n"
        "    time.sleep(0.01)\n"
        "del sys.argv[0]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", launch, "prep.py", f"param={i}"],
            cwd=project,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(20)
    ]
    deadline = time.monotonic() + 120
    while len(list(project.glob("ready-*"))) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    gate.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    runs = [p for p in (project / "results" / "prep").iterdir() if p.name != "latest"]
    assert len(runs) == 20
    locks = [read_yaml(run / "run.lock") for run in runs]
    assert {lock["status"] for lock in locks} == {"completed"}
    assert sorted(lock["config"]["param"] for lock in locks) == list(range(20))
    assert len({lock["id"] for lock in locks}) == 20
    for run, lock in zip(runs, locks, strict=True):
        assert lock["dir"] == run.relative_to(project).as_posix()
        assert lock["config"]["save_dir"] == lock["dir"]
    assert len({run.name[:13] for run in runs}) < 20  # some really started in the same second
    assert (project / "results" / "prep" / "latest").resolve() in {r.resolve() for r in runs}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_marks_the_run_interrupted_and_exits_130(tmp_path: Path, signum: int) -> None:
    """Ctrl-C (SIGINT) or SIGTERM during the body: run.lock interrupted, exit status 130."""
    project = make_project(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "prep.py", "sleep_s=30"],
        cwd=project,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job (a CI runner) starts with SIGINT ignored, which Python
        # keeps: give the script the default disposition a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while "sleeping" not in proc.stdout.readline():
        assert time.monotonic() < deadline
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    lock = read_yaml(only_run(project) / "run.lock")
    assert lock["status"] == "interrupted"
    assert "KeyboardInterrupt" in lock["error"]["type"] or "Interrupted" in lock["error"]["type"]
    assert 'prep.py", line' in lock["error"]["traceback"]  # in the body (print or sleep)
    assert ", in main\n" in lock["error"]["traceback"]
    assert "_stage.py" not in lock["error"]["traceback"]
    assert isinstance(lock["ended"], str)


def test_pdb_opens_a_post_mortem_debugger_in_the_failing_frame(tmp_path: Path) -> None:
    """--pdb: on failure a debugger opens in the body's frame (its locals are there)."""
    project = make_project(tmp_path)
    out = subprocess.run(
        [sys.executable, "prep.py", "fail=true", "param=41", "--pdb"],
        cwd=project,
        env=ENV,
        input="p cfg.param + 1\nq\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "(Pdb)" in out.stdout
    assert "\n42\n" in out.stdout.replace("(Pdb) ", "\n")
    assert read_yaml(only_run(project) / "run.lock")["status"] == "failed"
