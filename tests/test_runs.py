"""The Python API of browsing: ``xp.runs`` collections, ``Run`` accessors, ``resolve_run``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import xpkit as xp
from helpers import import_project
from xpkit._catalog._head import read_head
from xpkit._catalog._runs import resolve_run, resolve_runs
from xpkit._core._settings import clear_settings_cache
from xpkit._core._yaml import dump_yaml
from xpkit.errors import AmbiguousRunError, ExpressionError, RunNotFoundError

PIPELINE = """
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class PrepareConfig:
    n: int = 10
    fail: bool = False


@xp.stage(name="prepare")
def prepare(cfg: PrepareConfig):
    if cfg.fail:
        raise ValueError("prepare failed on purpose")
    (Path(cfg.save_dir) / "rows.txt").write_text("\\n".join(map(str, range(cfg.n))))
    xp.log_metrics({"rows": cfg.n})


@dataclass
class TrainConfig:
    prepared: str = "results/prepare/latest"
    lr: float = 0.01
    epochs: int = 3


@xp.stage(name="train", upstream=["prepared"])
def train(cfg: TrainConfig):
    rows = (Path(cfg.prepared) / "rows.txt").read_text().split()
    acc = min(1.0, 0.4 + 2 * cfg.lr)
    for epoch in range(cfg.epochs):
        xp.log_metrics({"loss": 1.0 / (epoch + 1), "acc": acc}, step=epoch)
    (Path(cfg.save_dir) / "model.txt").write_text(f"{cfg.lr} {len(rows)}")
    return acc


@dataclass
class EvaluateConfig:
    model: str = "results/train/latest"


@xp.stage(name="evaluate", upstream=["model"])
def evaluate(cfg: EvaluateConfig):
    lr = float((Path(cfg.model) / "model.txt").read_text().split()[0])
    xp.log_metrics({"score": lr * 10})
"""

LRS = (0.001, 0.01, 0.1, 0.3)


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """prepare -> a sweep of train runs -> evaluate."""
    module = import_project(tmp_path, monkeypatch, "pipeline", PIPELINE)
    module.prepare()
    for lr in LRS:
        module.train(lr=lr)
    module.evaluate()
    yield module
    clear_settings_cache()


def _rewrite_lock(run: xp.Run, **changes: object) -> None:
    data = yaml.safe_load(run.paths.lock.read_text())
    data.update(changes)
    run.paths.lock.write_text(dump_yaml(data))
    run.reload()


def test_runs_lists_every_run_once_newest_first(pipeline: ModuleType) -> None:
    """Every run under results/ is listed once (latest links ignored), newest first."""
    found = xp.runs()
    assert [r.stage for r in found] == ["evaluate", *["train"] * len(LRS), "prepare"]
    assert len({r.dir for r in found}) == len(found)
    started = [r.started for r in found]
    assert started == sorted(started, reverse=True)
    assert not found.skipped


def test_where_compares_numbers_as_numbers(pipeline: ModuleType) -> None:
    """``where`` expressions compare numbers numerically and combine with and/or."""
    found = xp.runs(where="config.lr > 0.01 and metrics.acc >= 0.5")
    assert sorted(r.config.lr for r in found) == [0.1, 0.3]
    # "10" < "9" as text: only a numeric comparison keeps the prepare run
    assert [r.stage for r in xp.runs(where="metrics.rows >= 9")] == ["prepare"]
    either = xp.runs(where="stage == evaluate or (stage == 'train' and not config.lr > 0.001)")
    assert sorted(r.stage for r in either) == ["evaluate", "train"]


def test_where_rejects_a_bad_expression_with_its_column(pipeline: ModuleType) -> None:
    """A malformed expression is one ExpressionError pointing at the column."""
    with pytest.raises(ExpressionError, match=r"column 12: expected a field .* found the end"):
        xp.runs(where="config.lr >")
    with pytest.raises(ExpressionError, match=r"column 1: one side must be a field.*closest: lr"):
        xp.runs(where="lrr > 0.1")


def test_where_and_sort_refuse_a_key_no_run_has(pipeline: ModuleType) -> None:
    """An unknown key raises ExpressionError with the closest keys; a predicate or key
    function is the caller's business and never checked."""
    with pytest.raises(ExpressionError, match=r"column 1: no listed run has 'metrics.acc', in"):
        xp.runs("results/prepare", where="metrics.acc > 0.5")
    with pytest.raises(
        ExpressionError, match=r"no listed run has 'config.lrr'; closest: config.lr"
    ):
        xp.runs(sort="config.lrr")
    assert len(xp.runs(where=lambda run: run.metrics.get("nothing") is None)) == 6
    assert len(xp.runs("results/train").sort(lambda run: run.metrics.get("nothing", 0))) == 4


def test_where_and_sort_take_the_short_names_the_table_shows(pipeline: ModuleType) -> None:
    """``lr`` and ``acc`` (as ``xp ls`` heads its columns) stand for config.lr, metrics.acc."""
    short = xp.runs(where="lr > 0.01 and acc >= 0.5", sort="-lr")
    assert [r.config.lr for r in short] == [0.3, 0.1]
    assert [r.id for r in short] == [
        r.id for r in xp.runs(where="config.lr > 0.01", sort="-config.lr")
    ]
    # a bare word naming no key stays a string
    assert [r.stage for r in xp.runs(where="stage == prepare")] == ["prepare"]


def test_sort_and_limit(pipeline: ModuleType) -> None:
    """Sorting by a field (descending with '-') puts runs without it last; limit cuts."""
    best = xp.runs(sort="-metrics.acc", limit=2)
    assert [r.config.lr for r in best] == [0.3, 0.1]
    by_lr = xp.runs(sort="config.lr")
    assert [r.config.lr for r in by_lr[: len(LRS)]] == list(LRS)
    assert {r.stage for r in list(by_lr)[len(LRS) :]} == {"prepare", "evaluate"}
    with pytest.raises(ExpressionError, match="bad sort key 'lrr'"):
        xp.runs(sort="lrr")


def test_to_pandas_has_typed_columns(pipeline: ModuleType) -> None:
    """The DataFrame has flattened config/metrics columns with numeric dtypes."""
    import pandas as pd

    frame = xp.runs("results/train").to_pandas()
    assert len(frame) == len(LRS)
    assert list(frame.columns[:7]) == [
        "id",
        "stage",
        "dir",
        "status",
        "started",
        "duration_s",
        "commit",
    ]
    assert pd.api.types.is_float_dtype(frame["config.lr"])
    assert pd.api.types.is_integer_dtype(frame["config.epochs"])
    assert pd.api.types.is_float_dtype(frame["metrics.acc"])
    assert pd.api.types.is_datetime64_any_dtype(frame["started"])
    assert sorted(frame["config.lr"]) == list(LRS)
    everything = xp.runs().to_pandas()
    assert str(everything["config.epochs"].dtype) == "Int64"  # ints with gaps stay ints


def test_run_accessors(pipeline: ModuleType) -> None:
    """A Run gives its start, duration, upstream runs, data paths and files."""
    train = pipeline.train.last
    run = xp.Run(train.dir)
    assert run.started is not None
    assert run.started.tzinfo is not None
    assert run.duration_s is not None
    assert run.duration_s >= 0
    assert run.root == Path.cwd().resolve()
    upstream = run.upstream["prepared"]
    assert upstream.stage == "prepare"
    assert upstream.status == "completed"
    assert run.paths.lock in run.files()
    assert run.dir / "model.txt" in run.files()
    data = {"raw": {"path": "data/raw", "hash": "xxh3_128:00", "files": 1, "bytes": 3}}
    _rewrite_lock(run, data=data)
    assert run.data == {"raw": run.root / "data" / "raw"}


def test_running_run_of_a_dead_process_reads_interrupted(pipeline: ModuleType) -> None:
    """A lock still 'running' whose process is gone (this host) reads as interrupted."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    run = pipeline.train.last
    _rewrite_lock(run, status="running", pid=int(gone.stdout), host=socket.gethostname())
    assert run.lock.status == "running"
    assert run.status == "interrupted"
    _rewrite_lock(run, status="running", pid=os.getpid())
    assert run.status == "running"
    _rewrite_lock(run, status="running", pid=int(gone.stdout), host="another-host")
    assert run.status == "running"


def test_resolve_run_by_dir_link_prefix_and_stage(pipeline: ModuleType) -> None:
    """RUN is a directory, a latest link (resolved), an id prefix or a stage name."""
    last = pipeline.train.last
    assert resolve_run(last.dir).id == last.id
    linked = resolve_run("results/train/latest")
    assert linked.dir == last.dir
    assert linked.dir.name != "latest"
    assert resolve_run(last.id[:6]).dir == last.dir
    assert resolve_run(last.paths.lock).dir == last.dir
    assert resolve_run("evaluate").stage == "evaluate"


def test_resolve_run_ambiguous_and_unknown(pipeline: ModuleType) -> None:
    """An ambiguous prefix lists the candidates; an unknown one is a clear error."""
    a, b = list(xp.runs("results/train"))[:2]
    _rewrite_lock(b, id=a.id[:4] + "ffffffff")
    with pytest.raises(AmbiguousRunError, match=rf"{a.id[:4]}.*matches 2 runs: .*{a.id}"):
        resolve_run(a.id[:4])
    with pytest.raises(RunNotFoundError, match="no run matches 'zzzz'"):
        resolve_run("zzzz")
    with pytest.raises(RunNotFoundError, match="not a run directory"):
        resolve_run("results")


def test_resolve_runs_takes_a_stage_directory_as_all_its_runs(pipeline: ModuleType) -> None:
    """A directory of runs means every run below it; runs named twice come once."""
    trains = resolve_runs(["results/train", pipeline.train.last.id[:8]])
    assert sorted(r.config.lr for r in trains) == sorted(LRS)
    Path("results/empty").mkdir()
    with pytest.raises(RunNotFoundError, match="no run directory"):
        resolve_runs([Path("results/empty")])


def test_runs_reached_through_links_or_overlapping_paths_come_once(pipeline: ModuleType) -> None:
    """A run kept elsewhere and linked into results (as ``xp pull --link`` does) is listed by
    its link; a second link to it, a link to a directory of runs already listed, a symlink
    loop and overlapping paths list no run twice."""
    before = {r.dir.resolve() for r in xp.runs()}
    prep = pipeline.prepare.last.dir
    was = prep.resolve()
    kept = Path("elsewhere") / prep.name
    kept.parent.mkdir()
    shutil.move(prep, kept)
    prep.symlink_to(kept.resolve(), target_is_directory=True)
    Path("results/prepare/again").symlink_to(kept.resolve(), target_is_directory=True)
    Path("results/alias").symlink_to(Path("results/train").resolve(), target_is_directory=True)
    Path("results/train/loop").symlink_to(Path("results").resolve(), target_is_directory=True)
    for found in (xp.runs(), xp.runs(["results", "results/train", prep])):
        resolved = [r.dir.resolve() for r in found]
        assert len(resolved) == len(set(resolved)) == len(before)
        assert set(resolved) == {kept.resolve() if d == was else d for d in before}
    (listed,) = [r.dir for r in xp.runs() if r.stage == "prepare"]
    assert listed == prep.absolute()  # the first link, by name
    assert len(xp.runs("results/prepare/again")) == 1


def test_mlflow_artifact_copies_are_not_runs(pipeline: ModuleType) -> None:
    """The run.lock copies MLflow keeps under results/mlartifacts/ are not listed as runs."""
    copy = Path("results/mlartifacts/1/abc/artifacts")
    copy.mkdir(parents=True)
    copy.joinpath("run.lock").write_text(pipeline.prepare.last.paths.lock.read_text())
    assert len(xp.runs()) == 2 + len(LRS)


def test_bad_locks_are_skipped_and_described(pipeline: ModuleType) -> None:
    """Corrupt, truncated, foreign and newer-schema locks are skipped with a message each."""
    good = pipeline.train.last.paths.lock.read_text()
    cases = {
        "corrupt": "xpkit: 1\nid: [unclosed\n  : :\n",
        # cut short by a broken copy: inside a quoted value, and before a required key
        "truncated": good[: good.index("started:") + 15],
        "truncated-head": good[: good.index("status:")],
        "foreign": "name: something else\nversion: 3\n",
        "newer": good.replace("xpkit: 1", "xpkit: 99", 1),
    }
    for name, text in cases.items():
        run_dir = Path("results/broken") / name
        run_dir.mkdir(parents=True)
        (run_dir / "run.lock").write_text(text)
    found = xp.runs()
    assert len(found) == 1 + len(LRS) + 1
    assert len(found.skipped) == len(cases)
    joined = "\n".join(found.skipped)
    assert "schema 99 is newer than this xpkit" in joined
    assert "not a run.lock" in joined
    assert "invalid YAML" in joined
    assert "'status' is missing" in joined
    assert all("\n" not in message for message in found.skipped)


def test_index_cache_notices_rewritten_locks(pipeline: ModuleType) -> None:
    """A listing after a lock changed shows the new values (the cache is stat-keyed)."""
    _age_locks(Path("results"))
    assert {r.status for r in xp.runs("results/train")} == {"completed"}
    assert Path("results/.xpkit/runs.marshal").is_file()
    run = pipeline.train.last
    _rewrite_lock(run, status="failed", metrics={"acc": 0.0})
    again = {r.id: r for r in xp.runs("results/train")}
    assert again[run.id].status == "failed"
    assert again[run.id].metrics == {"acc": 0.0}


def _age_locks(top: Path) -> None:
    """Date every run.lock an hour back: the index does not keep heads of locks just written."""
    past = time.time_ns() - 3600 * 10**9
    for lock in top.rglob("run.lock"):
        os.utime(lock, ns=(past, past))


def test_read_head_reads_a_hand_written_lock(tmp_path: Path) -> None:
    """A flow-style or commented lock is still read (by the full-parse fallback)."""
    lock = tmp_path / "run.lock"
    lock.write_text(
        "# written by hand\n{xpkit: 1, id: abc, stage: s, dir: d, status: completed, "
        "config: {a: 1}, env: {packages: {x: '1'}}}\n"
    )
    head = read_head(lock)
    assert (head.id, dict(head.config), head.env) == ("abc", {"a": 1}, None)


TRICKY_VALUES = {
    "yes_word": "yes",
    "exp_no_dot": "1e5",
    "hex": "0x1f",
    "octal": "007",
    "underscored": "1_000",
    "date": "2024-01-01",
    "timestamp": "2026-11-25T11:07:14+00:00",
    "none": None,
    "flag": True,
    "off": "off",
    "items": [1, "two", 3.5, None, "٣"],
    "empty_map": {},
    "empty_list": [],
    "quote": "it's",
    "colon": "a: b",
    "colon_tight": "a:b",
    "hash": "a #b",
    "dash": "-x",
    "small": 1e-05,
    "negative": -3,
    "plus": "+5",
    "inf": float("inf"),
    "blank": "",
    "unicode": "ünï",
    "unicode_digits": "١٢",
    "long": "word " * 40,
    "multiline": "a\nb",
    "tab": "a\tb",
    "double_quotes": 'say "hi"',
    "yes": 1,
    "nested": {"deep": {"deeper": 0.5, "list": [{"z": 1}]}},
}


@pytest.mark.parametrize("name", sorted(TRICKY_VALUES))
def test_read_head_matches_pyyaml(tmp_path: Path, name: str) -> None:
    """The fast head parser gives exactly what PyYAML gives, value types included."""
    config = {"before": 1, name: TRICKY_VALUES[name], "after": "x"}
    lock = {"xpkit": 1, "id": "i", "stage": "s", "dir": "d", "status": "completed"}
    (tmp_path / "run.lock").write_text(dump_yaml({**lock, "config": config}))
    head = read_head(tmp_path / "run.lock")
    expected = yaml.safe_load((tmp_path / "run.lock").read_text())["config"]
    assert repr(dict(head.config)) == repr(expected)


def test_locks_xpkit_writes_take_the_fast_path(pipeline: ModuleType) -> None:
    """Heads of the locks xpkit writes parse without falling back to PyYAML."""
    from xpkit._catalog._head import _cut, _simple_yaml

    for run in xp.runs():
        text = run.paths.lock.read_text()
        assert _simple_yaml(_cut(text)) == yaml.safe_load(_cut(text))


def _mixed_runs(root: Path) -> None:
    """Runs of two stages whose records differ: keys in another order, keys missing, None,
    booleans, lists, NaN, a nested config, a sweep point, data."""
    configs = [
        {"lr": 0.1, "model": {"depth": 2}, "flag": True, "tags": ["a"]},
        {"model": {"depth": 3}, "lr": 0.01, "flag": None},  # another order, no tags
        {"lr": 1, "extra": "x"},
        {"n": 5},
    ]
    for i, config in enumerate(configs):
        lock = {
            "xpkit": 1,
            "id": f"{i:04d}aaaa",
            "stage": "prep" if i == 3 else "train",
            "dir": f"results/s/r{i}",
            "status": "completed" if i != 2 else "failed",
            "started": f"2024-01-0{i + 1}T00:00:00+00:00",
            "duration_s": 5 if i else None,
            "config": config,
            "metrics": {"acc": float("nan") if i == 1 else i / 4, "steps": i},
        }
        if i == 0:
            lock["data"] = {"raw": {"path": "data/raw", "hash": "xxh3_128:aa"}}
            lock["sweep"] = {"id": "123456789", "point": 0, "total": 2}
        run_dir = root / "results" / "s" / f"r{i}"
        run_dir.mkdir(parents=True)
        (run_dir / "run.lock").write_text(dump_yaml(lock))


@pytest.fixture
def mixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose results hold the mixed runs, their locks aged (cacheable)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XPKIT_ROOT", str(tmp_path))
    clear_settings_cache()
    _mixed_runs(tmp_path)
    _age_locks(tmp_path / "results")
    yield tmp_path
    clear_settings_cache()


def _reference_kind(values: list[object]) -> str | None:
    """The nullable dtype a column of records takes: ``Int64``/``boolean`` with gaps."""
    present = [v for v in values if v is not None]
    if len(present) == len(values) or not present:
        return None
    if all(isinstance(v, bool) for v in present):
        return "boolean"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "Int64"
    return None


def test_records_and_frames_are_those_of_each_run(mixed: Path) -> None:
    """Records from the columns (cold, then from the cache) equal run_record of each run,
    key order included; the DataFrame equals one made from those records."""
    import pandas as pd

    from xpkit._catalog._runs import BASE_COLUMNS, run_record

    for _ in range(2):
        found = xp.runs()
        expected = [run_record(xp.Run(r.dir)) for r in found]
        assert repr(found.records()) == repr(expected)  # repr: nan is not nan
        assert repr([found.record(r) for r in found]) == repr(expected)
        columns = list(dict.fromkeys([*BASE_COLUMNS, *(k for r in expected for k in r)]))
        frame = pd.DataFrame.from_records(expected, columns=columns)
        frame["started"] = pd.to_datetime(frame["started"], utc=True, format="ISO8601")
        for name in columns[len(BASE_COLUMNS) :]:
            kind = _reference_kind([r.get(name) for r in expected])
            if kind is not None:
                frame[name] = frame[name].astype(kind)
        pd.testing.assert_frame_equal(found.to_pandas(), frame)


@pytest.mark.parametrize(
    "expr",
    [
        "lr > 0.01",
        "lr == 1",
        "flag",
        "not flag",
        "flag == null",
        "tags == '[\\'a\\']' or extra == x",
        "metrics.acc >= 0.25 and status != failed",
        "0.5 > metrics.acc",
        "config.model.depth < metrics.steps + 3",
        "metrics.steps < config.model.depth",
        "started > 2024-01-02",
        "stage == prep or (lr and not model.depth == 3)",
    ],
)
def test_where_on_columns_is_where_on_each_record(mixed: Path, expr: str) -> None:
    """A --where expression over the columns keeps exactly the runs whose record passes."""
    from xpkit._catalog._runs import run_record
    from xpkit._catalog._where import compile_where

    everything = xp.runs()
    try:
        test = compile_where(expr, everything._keys())
    except ExpressionError:
        with pytest.raises(ExpressionError):
            everything.where(expr)
        return
    expected = [r.id for r in everything if test(run_record(r))]
    assert [r.id for r in everything.where(expr)] == expected


def test_runs_of_given_runs_read_them_only_when_asked(mixed: Path) -> None:
    """Runs(items) keeps the runs given; a broken lock among them fails the first record."""
    given = [xp.Run(d) for d in sorted(Path("results/s").iterdir())]
    collection = xp.Runs(given)
    assert list(collection) == given
    assert collection[0] is given[0]
    assert [r.id for r in collection.sort("-metrics.steps")] == [
        "0003aaaa",
        "0002aaaa",
        "0001aaaa",
        "0000aaaa",
    ]
    Path("results/s/r1/run.lock").write_text("xpkit: 1\nid: [broken\n")
    lazy = xp.Runs([xp.Run("results/s/r1")])
    assert len(lazy) == 1
    with pytest.raises(xp.XpkitError):
        lazy.records()
