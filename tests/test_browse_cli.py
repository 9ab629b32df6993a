"""``xp ls``, ``xp show``, ``xp diff`` and ``xp lineage`` run as real processes."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import xpkit as xp
from helpers import SRC, import_project
from xpkit._core._settings import clear_settings_cache
from xpkit._core._yaml import dump_yaml

PIPELINE = """
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class PrepareConfig:
    n: int = 10


@xp.stage(name="prepare")
def prepare(cfg: PrepareConfig):
    (Path(cfg.save_dir) / "rows.txt").write_text("\\n".join(map(str, range(cfg.n))))
    xp.log_metrics({"rows": cfg.n})


@dataclass
class TrainConfig:
    prepared: str = "results/prepare/latest"
    lr: float = 0.01
    epochs: int = 3
    fail: bool = False


@xp.stage(name="train", upstream=["prepared"])
def train(cfg: TrainConfig):
    acc = min(1.0, 0.4 + 2 * cfg.lr)
    for epoch in range(cfg.epochs):
        xp.log_metrics({"loss": 1.0 / (epoch + 1), "acc": acc}, step=epoch)
    if cfg.fail:
        raise RuntimeError("diverged at lr " + str(cfg.lr))
    (Path(cfg.save_dir) / "model.txt").write_text(str(cfg.lr))


@dataclass
class EvaluateConfig:
    model: str = "results/train/latest"


@xp.stage(name="evaluate", upstream=["model"])
def evaluate(cfg: EvaluateConfig):
    xp.log_metrics({"score": float((Path(cfg.model) / "model.txt").read_text()) * 10})
"""

LRS = (0.001, 0.01, 0.1, 0.3)


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A git repo with prepare -> a sweep of train runs -> evaluate already run."""
    module = import_project(tmp_path, monkeypatch, "pipeline", PIPELINE)
    module.prepare()
    for lr in LRS:
        module.train(lr=lr)
    module.evaluate()
    yield module
    clear_settings_cache()


def xp_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m xpkit ARGS`` in the current directory with this checkout's code."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    full_env = {**inherited, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "xpkit", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def _rewrite_lock(run: xp.Run, **changes: object) -> None:
    data = yaml.safe_load(run.paths.lock.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    run.paths.lock.write_text(dump_yaml(data))
    run.reload()


def _train_runs() -> dict[float, xp.Run]:
    return {r.config.lr: r for r in xp.runs("results/train")}


def test_ls_shows_exactly_the_varying_config_keys(pipeline: ModuleType) -> None:
    """The table has one row per run and, of the config, only the keys that vary (lr)."""
    done = xp_cli("ls")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == [
        "id",
        "stage",
        "status",
        "started",
        "duration",
        "lr",
        "score",
        "loss",
        "acc",
        "rows",
        "commit",
    ]
    assert len(rows) == 1 + len(LRS) + 1
    assert [row.split()[1] for row in rows] == ["evaluate", *["train"] * len(LRS), "prepare"]
    assert "0.3" in rows[1].split()


def test_ls_in_colour_with_rich(pipeline: ModuleType) -> None:
    """With FORCE_COLOR the table is drawn by rich, statuses in colour."""
    done = xp_cli("ls", "results/train", env={"FORCE_COLOR": "1"})
    assert done.returncode == 0, done.stderr
    assert "\x1b[32mcompleted\x1b[0m" in done.stdout
    assert sum(run.id in done.stdout for run in xp.runs("results/train")) == len(LRS)


def test_ls_where_filters_numerically_and_json_parses(pipeline: ModuleType) -> None:
    """--where compares numbers; --format json is the flat array DESIGN.md fixes."""
    done = xp_cli("ls", "--where", "config.lr > 0.01 and metrics.acc >= 0.5", "--format", "json")
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert sorted(r["config.lr"] for r in records) == [0.1, 0.3]
    for rec in records:
        assert list(rec)[:7] == ["id", "stage", "dir", "status", "started", "duration_s", "commit"]
        assert {"config.epochs", "config.prepared", "config.save_dir", "metrics.acc"} <= set(rec)
        assert isinstance(rec["metrics.acc"], float)
        assert isinstance(rec["config.epochs"], int)
        assert Path(rec["dir"], "run.lock").is_file()
    assert [r["config.lr"] for r in records] == [0.3, 0.1]  # newest first


def test_ls_csv_sort_and_limit(pipeline: ModuleType) -> None:
    """--format csv parses; --sort with '-' and --limit pick the best runs."""
    done = xp_cli("ls", "results/train", "--sort", "-metrics.acc", "--limit", "2", "-f", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [float(r["config.lr"]) for r in rows] == [0.3, 0.1]
    assert rows[0]["stage"] == "train"
    assert re.fullmatch(r"[0-9a-f]{40}", rows[0]["commit"]), "the code snapshot of the run"


def test_ls_bad_where_is_one_line_error(pipeline: ModuleType) -> None:
    """A malformed --where exits 2 with one line pointing at the column."""
    done = xp_cli("ls", "--where", "config.lr >> 1")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "xp ls: error: bad --where expression at column 12: expected a field "
        "(config.KEY, metrics.NAME, status, ...) or a value, found '>', in: config.lr >> 1"
    ]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--where", "config.lrr > 0.01"],
            "bad --where expression at column 1: no listed run has 'config.lrr'; "
            "closest: config.lr, in: config.lrr > 0.01",
        ),
        (
            ["--where", "lrr > 0.01"],
            "bad --where expression at column 1: one side must be a field (config.KEY, "
            "metrics.NAME, id, stage, status, dir, started, duration_s, commit), found 'lrr'; "
            "closest: lr, in: lrr > 0.01",
        ),
        (
            ["--where", "stat == completed"],
            "bad --where expression at column 1: one side must be a field (config.KEY, "
            "metrics.NAME, id, stage, status, dir, started, duration_s, commit), found 'stat'; "
            "closest: status, started, stage, in: stat == completed",
        ),
        (
            ["--where", "status == complted"],
            "bad --where expression at column 1: status is one of running, completed, failed, "
            "interrupted, not 'complted', in: status == complted",
        ),
        (
            ["--sort", "-metrics.ac"],
            "bad sort key '-metrics.ac': no listed run has 'metrics.ac'; closest: metrics.acc",
        ),
        (
            ["--sort", "lrr"],
            "bad sort key 'lrr': use id, stage, status, dir, started, duration_s, commit, "
            "config.KEY or metrics.NAME ('-' first for descending); closest: lr",
        ),
        (
            ["results/train", "--where", "config.n > 5"],
            "bad --where expression at column 1: no listed run has 'config.n', in: config.n > 5",
        ),
    ],
)
def test_ls_unknown_key_is_an_error_naming_the_closest(
    pipeline: ModuleType, args: list[str], line: str
) -> None:
    """A typo in a --where or --sort key is exit 2 and one line with the closest keys, as
    config overrides do: never a silent 'no runs found'."""
    done = xp_cli("ls", *args)
    assert (done.returncode, done.stderr.splitlines(), done.stdout) == (
        2,
        [f"xp ls: error: {line}"],
        "",
    )


def test_ls_key_of_one_stage_only_filters_the_others_out(pipeline: ModuleType) -> None:
    """A key some listed runs have (config.n of prepare) is no error: runs without it fail the
    test; a key no run has yet is fine when no run is listed at all."""
    done = xp_cli("ls", "--where", "config.n > 5", "--format", "json", "--sort", "config.n")
    assert done.returncode == 0, done.stderr
    assert [r["stage"] for r in json.loads(done.stdout)] == ["prepare"]
    empty = xp_cli("ls", "results/nothing-yet", "--where", "config.lr > 0.1")
    assert (empty.returncode, empty.stderr.splitlines()) == (
        2,
        ["xp ls: error: results/nothing-yet: no such run directory or directory of runs"],
    )
    Path("results/nothing-yet").mkdir()
    empty = xp_cli("ls", "results/nothing-yet", "--where", "config.lr > 0.1")
    assert (empty.returncode, empty.stderr.splitlines()) == (0, ["no runs found"])


def test_ls_skips_broken_locks_with_a_warning(pipeline: ModuleType) -> None:
    """Corrupt, truncated, foreign and newer-schema locks are warnings, not crashes."""
    good = pipeline.train.last.paths.lock.read_text()
    broken = {
        "corrupt": "xpkit: 1\nid: [oops\n",
        "truncated": good[: good.index("started:") + 15],
        "foreign": "- just\n- a list\n",
        "newer": good.replace("xpkit: 1", "xpkit: 7", 1),
    }
    for name, text in broken.items():
        Path("results/old", name).mkdir(parents=True)
        Path("results/old", name, "run.lock").write_text(text)
    done = xp_cli("ls")
    assert done.returncode == 0
    warnings = done.stderr.strip().splitlines()
    assert len(warnings) == len(broken)
    assert all(w.startswith("xp ls: warning: skipped ") for w in warnings)
    assert any("schema 7 is newer than this xpkit understands (1)" in w for w in warnings)
    assert len(done.stdout.splitlines()) == 1 + 1 + len(LRS) + 1


def test_ls_shows_a_dead_running_run_as_interrupted(pipeline: ModuleType) -> None:
    """A lock left 'running' by a process that is gone is listed as interrupted."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    run = _train_runs()[0.01]
    _rewrite_lock(run, status="running", pid=int(gone.stdout), host=socket.gethostname())
    records = json.loads(xp_cli("ls", "--format", "json").stdout)
    assert {r["id"]: r["status"] for r in records}[run.id] == "interrupted"
    table = xp_cli("ls", "--where", "status == interrupted").stdout.splitlines()
    assert len(table) == 2
    assert run.id in table[1]


def test_ls_marks_runs_whose_data_changed(pipeline: ModuleType) -> None:
    """A '*' in the data column marks a run whose data hash differs from the previous run's."""
    runs = _train_runs()
    for lr, digest in zip(LRS, ("aa", "aa", "bb", "bb"), strict=True):
        _rewrite_lock(runs[lr], data={"raw": {"path": "data/raw", "hash": f"xxh3_128:{digest}"}})
    lines = xp_cli("ls", "results/train").stdout.splitlines()
    assert lines[0].split()[5] == "data"
    marks = {line.split()[0]: line.split()[6] == "*" for line in lines[1:]}  # date+time: 2 words
    assert marks == {runs[lr].id: lr == 0.1 for lr in LRS}


def test_diff_shows_config_code_data_and_packages(pipeline: ModuleType) -> None:
    """xp diff lists config, code (git stat), data and package differences, and metrics."""
    runs = _train_runs()
    a, b = runs[0.01], runs[0.1]
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "pipeline.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    first = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    Path("pipeline.py").write_text(Path("pipeline.py").read_text() + "\n# tuned\n")
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    second = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    packages = dict(a.lock.env["packages"])
    _rewrite_lock(a, src={"commit": first.strip()}, data={"raw": {"hash": "xxh3_128:aa"}})
    # xxhash, like pyyaml, is a dependency of xpkit: recorded in every environment
    changed = {**{k: v for k, v in packages.items() if k != "pyyaml"}, "xxhash": "0.0.1"}
    changed["brand-new-pkg"] = "1.0"
    _rewrite_lock(
        b,
        src={"commit": second.strip()},
        data={"raw": {"hash": "xxh3_128:bb"}},
        env={"packages": changed},
    )
    done = xp_cli("diff", a.id, str(b.dir))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "  lr: 0.01 -> 0.1" in out
    assert "pipeline.py | 2 +" in out
    assert "  raw: xxh3_128:aa -> xxh3_128:bb" in out
    assert "    (no readable file manifests: only the hash is known to differ)" in out
    assert f"  packages.xxhash: {packages['xxhash']} -> 0.0.1" in out
    assert f"  - packages.pyyaml: {packages['pyyaml']}" in out
    assert "  + packages.brand-new-pkg: 1.0" in out
    assert "acc: 0.42 -> 0.6  (+0.18)" in out
    full = xp_cli("diff", a.id, b.id, "--code").stdout
    assert "+# tuned" in full


def test_diff_without_snapshots_degrades(pipeline: ModuleType) -> None:
    """Runs without code snapshots say so instead of failing."""
    runs = _train_runs()
    for run in (runs[0.001], runs[0.3]):  # as if recorded outside git
        lock = yaml.safe_load(run.paths.lock.read_text())
        lock.pop("src", None)
        run.paths.lock.write_text(yaml.safe_dump(lock, sort_keys=False))
    done = xp_cli("diff", str(runs[0.001].dir), str(runs[0.3].dir))
    assert done.returncode == 0, done.stderr
    assert "(no code snapshot recorded in run A and B)" in done.stdout
    assert "environment\n  (no differences)" in done.stdout


def test_lineage_draws_the_chain(pipeline: ModuleType) -> None:
    """xp lineage shows evaluate <- train <- prepare with stage, id, status and date."""
    evaluate = xp.runs("results/evaluate")[0]
    train = evaluate.upstream["model"]
    prepare = train.upstream["prepared"]
    done = xp_cli("lineage", evaluate.id[:8])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"evaluate {evaluate.id} completed 20")
    assert lines[1].startswith(f"└── model: train {train.id} completed 20")
    assert lines[2].startswith(f"    └── prepared: prepare {prepare.id} completed 20")
    assert train.config.lr == 0.3


def test_lineage_in_colour_with_rich(pipeline: ModuleType) -> None:
    """With FORCE_COLOR the tree is drawn by rich, in colour."""
    done = xp_cli("lineage", "evaluate", env={"FORCE_COLOR": "1"})
    assert done.returncode == 0, done.stderr
    assert "\x1b[" in done.stdout
    assert "prepared: prepare" in done.stdout


def test_show_reports_summary_upstream_changes_and_error(pipeline: ModuleType) -> None:
    """xp show prints the run, and warns when an upstream changed since it was consumed."""
    train = xp.runs("results/train")[0]
    prepare = train.upstream["prepared"]
    done = xp_cli("show", train.id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"train {train.id}  completed\n")
    assert "  lr        0.3" in done.stdout
    assert f"  prepared  prepare  {prepare.id}  completed" in done.stdout
    assert "changed since consumed" not in done.stdout
    _rewrite_lock(prepare, status="failed", ended="2000-01-01T00:00:00+00:00")
    warned = xp_cli("show", train.id).stdout
    assert "warning: upstream prepared" in warned
    assert "changed since consumed: status completed -> failed" in warned
    pipeline.prepare()
    with pytest.raises(RuntimeError):
        pipeline.train(lr=5.0, fail=True)
    failed = xp_cli("show", pipeline.train.last.id).stdout
    assert "failed" in failed.splitlines()[0]
    assert "  RuntimeError: diverged at lr 5.0" in failed
    assert "Traceback" in failed


def test_show_ambiguous_or_unknown_run_is_one_line(pipeline: ModuleType) -> None:
    """An unknown RUN exits 2 with a one-line message."""
    done = xp_cli("show", "nothing-like-this")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "no run matches 'nothing-like-this'" in done.stderr


@pytest.mark.parametrize("command", ["show", "diff", "lineage", "tasks", "push", "checkout"])
def test_every_run_argument_is_described_the_same_way(command: str, tmp_path: Path) -> None:
    """``xp COMMAND --help`` describes RUN as every other command does."""
    done = subprocess.run(
        [sys.executable, "-m", "xpkit", command, "--help"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "run directory, latest link or id prefix" in " ".join(done.stdout.split())


def test_output_into_a_closed_pipe_ends_quietly(pipeline: ModuleType) -> None:
    """``xp ls | head``: the reader gone, xp exits 141 without a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "xpkit", "ls"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)},
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""
