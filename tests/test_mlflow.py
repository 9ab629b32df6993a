"""MLflow sync against a real SQLite tracking store (one store for the whole module)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import xpkit as xp
from helpers import SRC
from mlflow_project import make_pipeline, project_env, run_dirs
from xpkit._catalog._run import Run
from xpkit._core._settings import clear_settings_cache
from xpkit._tracking import _mlflow, _mlflow_live
from xpkit._tracking._batch import sync_runs
from xpkit._tracking._mlflow import mlflow_key, sync_run, tracking_uri

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated SQLite store per module (a fresh one costs seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()
    return uri


@pytest.fixture
def project(tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project directory as cwd, tracking into the module's store, automatic sync off."""
    root = tmp_path / "proj"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("XPKIT_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("XPKIT_TRACKING", "0")
    clear_settings_cache()
    yield root
    clear_settings_cache()


def client(store: str) -> Any:
    return mlflow.MlflowClient(tracking_uri=store)


def runs_tagged(store: str, stage: str, run_id: str) -> list[Any]:
    c = client(store)
    exp = c.get_experiment_by_name(stage)
    if exp is None:
        return []
    return list(c.search_runs([exp.experiment_id], f"tags.`xpkit.run_id` = '{run_id}'"))


def history(store: str, mlflow_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(store).get_metric_history(mlflow_id, key))


def env_for(project: Path, store: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "XPKIT_ROOT": str(project),
        "MLFLOW_TRACKING_URI": store,
        **extra,
    }


LONG_KEY = "k" * 300


def test_sync_twice_makes_one_mlflow_run_with_exact_params_tags_metrics(
    project: Path, store: str
) -> None:
    """Syncing twice (and once more without the cursor) keeps one run and no duplicate point."""
    defaults = {"opt": {"lr": 0.1, "name": "adam"}, "blob": "x" * 7000, "a@b": 1, LONG_KEY: 2}

    @xp.stage(name="sync_twice", src=False)
    def main(cfg: Any = defaults) -> None:
        for step in range(3):
            xp.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        xp.log_metrics({"acc": 0.5})  # no step: numbered per metric
        xp.log_metrics({"acc": 0.7})
        xp.log_metrics({"odd": float("inf")}, step=0)
        xp.log_metrics({"odd": float("nan")}, step=1)

    main()
    run = main.last
    assert run is not None
    first = sync_run(run)
    assert sync_run(run) == first
    run.paths.mlflow_state.unlink()  # cursor lost: the points in MLflow are read back
    assert sync_run(run) == first

    found = runs_tagged(store, "sync_twice", run.id)
    assert [r.info.run_id for r in found] == [first]
    ml = found[0]
    params = ml.data.params
    assert params["opt.lr"] == "0.1"
    assert params["opt.name"] == "adam"
    assert params["a_b"] == "1"
    assert len(params["blob"]) == 6000
    assert params["blob"].endswith("...[truncated, 7000 chars]")
    assert params[mlflow_key(LONG_KEY)] == "2"
    assert len(mlflow_key(LONG_KEY)) == 250
    assert ml.data.tags["xpkit.stage"] == "sync_twice"
    assert ml.data.tags["xpkit.status"] == "completed"
    assert ml.data.tags["mlflow.runName"] == run.dir.name
    assert ml.data.tags["xpkit.env.python"]
    assert ml.info.status == "FINISHED"
    assert history(store, first, "loss") == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert history(store, first, "acc") == [(0, 0.5), (1, 0.7)]
    assert len(history(store, first, "odd")) == 2
    names = sorted(a.path for a in client(store).list_artifacts(first))
    assert names == ["config.yaml", "run.lock", "run.log"]


def test_changed_param_value_becomes_a_conflict_tag(project: Path, store: str) -> None:
    """A param value that changed in run.lock is tagged, not re-sent, and the sync succeeds."""

    @xp.stage(name="conflict", src=False)
    def main(cfg: Any = {"lr": 0.1}) -> None:  # noqa: B006 - a mapping default is the config
        pass

    main()
    run = main.last
    assert run is not None
    first = sync_run(run)
    text = run.paths.lock.read_text().replace("lr: 0.1", "lr: 0.2")
    run.paths.lock.write_text(text)
    assert sync_run(run) == first
    ml = client(store).get_run(first)
    assert ml.data.params["lr"] == "0.1"
    assert ml.data.tags["xpkit.param_conflict.lr"] == "0.2"


def test_running_run_gets_its_final_status_and_points_later(project: Path, store: str) -> None:
    """A run synced while running shows RUNNING, then FINISHED with its end time and new points."""
    seen: dict[str, Any] = {}

    @xp.stage(name="running_then_done", src=False)
    def main(cfg: Any = {"n": 2}) -> None:  # noqa: B006 - a mapping default is the config
        xp.log_metrics({"loss": 1.0}, step=0)
        seen["id"] = sync_run(xp.current())
        seen["status"] = client(store).get_run(seen["id"]).info.status
        xp.log_metrics({"loss": 0.5}, step=1)

    main()
    run = main.last
    assert run is not None
    assert seen["status"] == "RUNNING"
    assert history(store, seen["id"], "loss") == [(0, 1.0)]
    assert sync_run(run) == seen["id"]
    info = client(store).get_run(seen["id"]).info
    assert info.status == "FINISHED"
    assert info.end_time == _mlflow._ms(run.reload().lock.ended)
    assert history(store, seen["id"], "loss") == [(0, 1.0), (1, 0.5)]


def test_failed_run_is_failed_in_mlflow_with_its_error(project: Path, store: str) -> None:
    """A failed run syncs as FAILED with its error as a tag."""

    @xp.stage(name="fails", src=False)
    def main(cfg: Any = {"n": 1}) -> None:  # noqa: B006 - a mapping default is the config
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        main()
    assert main.last is not None
    ml = client(store).get_run(sync_run(main.last))
    assert ml.info.status == "FAILED"
    assert ml.data.tags["xpkit.error"] == "ValueError: bad batch"


STAGE_SCRIPT = """
from pathlib import Path
import xpkit as xp

@xp.stage(name="{name}", src=False)
def main(cfg: dict = {{"n": 0}}):
    with Path("counter.txt").open("a") as f:
        f.write("ran\\n")
    xp.log_metrics({{"n": cfg["n"]}}, step=0)

if __name__ == "__main__":
    with Path("counter.txt").open("a") as f:
        f.write("main block\\n")
    xp.run(main)
"""

LOGGER = """
@main.logger
def log_more(run, mlflow):
    mlflow.log_text(f"n={{run.config.n}}", "{artifact}")
"""


def test_logger_added_later_is_applied_to_every_past_run_without_rerunning(
    project: Path, store: str
) -> None:
    """`xp log` applies a new (then a changed) logger to 5 past runs; the body never runs again."""
    script = project / "later.py"
    script.write_text(textwrap.dedent(STAGE_SCRIPT.format(name="later")))
    sys.path.insert(0, str(project))
    try:
        import later  # type: ignore[import-not-found]

        for n in range(5):
            later.main(n=n)
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("later", None)
    assert (project / "counter.txt").read_text() == "ran\n" * 5
    runs = [Run(d) for d in sorted((project / "results" / "later").glob("2*"))]
    assert len(runs) == 5

    for artifact in ("extra.txt", "extra2.txt"):
        script.write_text(
            textwrap.dedent(STAGE_SCRIPT.format(name="later"))
            + textwrap.dedent(LOGGER.format(artifact=artifact))
        )
        done = subprocess.run(
            [sys.executable, "-m", "xpkit", "log", "results/later"],
            cwd=project,
            env=env_for(project, store),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        for run in runs:
            (ml,) = runs_tagged(store, "later", run.id)
            files = {a.path for a in client(store).list_artifacts(ml.info.run_id)}
            assert artifact in files
            assert ml.info.status == "FINISHED"
            assert ml.info.end_time == _mlflow._ms(run.lock.ended)
            assert history(store, ml.info.run_id, "n") == [(0, float(run.lock.config["n"]))]
    assert (project / "counter.txt").read_text() == "ran\n" * 5


FAILING_LOGGER = """
@main.logger
def log_model(run, mlflow):
    raise FileNotFoundError("no model.txt in " + run.dir.name)
"""


def test_a_failing_logger_is_reported_once_per_run(project: Path, store: str) -> None:
    """`xp log` and the run's own final sync each say a logger's failure once, with its name."""
    script = project / "failing.py"
    body, main_block = textwrap.dedent(STAGE_SCRIPT.format(name="failing")).split("if __name__")
    script.write_text(body + textwrap.dedent(FAILING_LOGGER) + "\nif __name__" + main_block)
    ran = subprocess.run(
        [sys.executable, "failing.py"],
        cwd=project,
        env=env_for(project, store, XPKIT_TRACKING="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    # the seconds spent importing mlflow after the run are announced
    assert "[xpkit] MLflow: syncing the run, then its loggers (log_model)" in ran.stderr
    assert ran.stderr.count("no model.txt") == 1, ran.stderr
    assert "logger log_model failed on" in ran.stderr
    done = subprocess.run(
        [sys.executable, "-m", "xpkit", "log", "results/failing"],
        cwd=project,
        env=env_for(project, store),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.count("no model.txt") == 1, done.stderr
    assert "logger log_model failed on" in done.stderr
    assert "1 problem(s)" in done.stderr


def test_stage_with_logger_syncs_before_returning(
    project: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tracking on, a stage's logger runs right after the run, with the run's locals."""
    monkeypatch.setenv("XPKIT_TRACKING", "1")

    @xp.stage(name="with_logger", src=False)
    def main(cfg: Any = {"n": 3}) -> None:  # noqa: B006 - a mapping default is the config
        total = cfg.n * 2  # noqa: F841 - read by the logger through run.locals
        xp.log_metrics({"loss": 0.25}, step=0)

    @main.logger
    def log_total(run: Run, mlflow: Any) -> None:
        assert run.locals is not None
        mlflow.log_text(str(run.locals["total"]), "total.txt")

    main()
    assert os.environ["MLFLOW_TRACKING_URI"] == store  # the fluent API's URI is restored
    run = main.last
    assert run is not None
    (ml,) = runs_tagged(store, "with_logger", run.id)
    text = mlflow.artifacts.load_text(f"{ml.info.artifact_uri}/total.txt")
    assert text == "6"
    assert ml.info.status == "FINISHED"
    assert history(store, ml.info.run_id, "loss") == [(0, 0.25)]


def test_live_sync_pushes_points_while_the_run_runs(
    project: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background syncer shows a running run's points in MLflow before it ends."""
    monkeypatch.setenv("XPKIT_TRACKING", "1")
    monkeypatch.setattr(_mlflow_live, "LIVE_DELAY_S", 0.1)
    monkeypatch.setattr(_mlflow_live, "LIVE_INTERVAL_S", 0.2)
    seen: dict[str, Any] = {}

    @xp.stage(name="live", src=False)
    def main(cfg: Any = {"n": 1}) -> None:  # noqa: B006 - a mapping default is the config
        run_id = xp.current().id
        xp.log_metrics({"loss": 1.0}, step=0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen:
            for ml in runs_tagged(store, "live", run_id):
                if history(store, ml.info.run_id, "loss"):
                    seen["status"] = ml.info.status
            time.sleep(0.1)
        xp.log_metrics({"loss": 0.5}, step=1)

    main()
    assert seen == {"status": "RUNNING"}
    assert _mlflow_live._tracker().drain(30)  # the final sync is done in the background
    run = main.last
    assert run is not None
    (ml,) = runs_tagged(store, "live", run.id)
    assert ml.info.status == "FINISHED"
    assert history(store, ml.info.run_id, "loss") == [(0, 1.0), (1, 0.5)]


def test_script_run_is_synced_by_a_detached_process(project: Path, store: str) -> None:
    """A short script exits at once; a detached `xp log` syncs its run shortly after."""
    (project / "quick.py").write_text(textwrap.dedent(STAGE_SCRIPT.format(name="quick")))
    done = subprocess.run(
        [sys.executable, "quick.py", "n=4"],
        cwd=project,
        env=env_for(project, store, XPKIT_TRACKING="1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    run = Run(project / "results" / "quick" / "latest")
    deadline = time.monotonic() + 60
    found: list[Any] = []
    while time.monotonic() < deadline and not (found and found[0].info.status == "FINISHED"):
        time.sleep(0.3)
        found = runs_tagged(store, "quick", run.id)
    assert [r.info.status for r in found] == ["FINISHED"]
    assert history(store, found[0].info.run_id, "n") == [(0, 4.0)]


def test_tracking_uri_defaults_to_a_sqlite_file_under_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without MLFLOW_TRACKING_URI, the store is results/mlflow.db of the project."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("XPKIT_ROOT", str(tmp_path))
    clear_settings_cache()
    assert tracking_uri() == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    (tmp_path / "pyproject.toml").write_text('[tool.xpkit]\ntracking_uri = "http://h:5000"\n')
    clear_settings_cache()
    assert tracking_uri() == "http://h:5000"


def test_runs_synced_into_the_default_store_are_listed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default store's artifact copies (results/mlartifacts/.../run.lock) are not runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XPKIT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("XPKIT_TRACKING", "0")
    clear_settings_cache()

    @xp.stage(name="listed_once", src=False)
    def main(cfg: Any = {"n": 1}) -> None:  # noqa: B006 - a config default, never mutated
        xp.log_metrics({"n": cfg.n})

    main()
    assert main.last is not None
    sync_run(main.last)
    clear_settings_cache()
    assert list((tmp_path / "results" / "mlartifacts").rglob("run.lock"))
    assert [r.dir for r in xp.runs()] == [main.last.dir]


def test_missing_mlflow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without mlflow installed, syncing says which extra to install."""
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match=r"xpkit\[mlflow\]"):
        _mlflow.import_mlflow()


def test_runs_are_found_by_directory_stage_directory_and_id_prefix(project: Path) -> None:
    """RUN is a run directory, a directory of runs, or a unique id prefix."""
    from xpkit._catalog._runs import resolve_runs
    from xpkit._core._settings import load_settings
    from xpkit.errors import RunNotFoundError

    @xp.stage(name="finding", src=False)
    def main(cfg: Any = {"n": 1}) -> None:  # noqa: B006 - a mapping default is the config
        pass

    made = []
    for _ in range(3):
        main()
        assert main.last is not None
        made.append(main.last)
    settings = load_settings()
    assert {r.dir for r in resolve_runs(["results/finding"], settings=settings)} == {
        r.dir for r in made
    }
    assert [r.dir for r in resolve_runs([str(made[1].dir)], settings=settings)] == [made[1].dir]
    assert [r.dir for r in resolve_runs([made[2].id[:8]], settings=settings)] == [made[2].dir]
    with pytest.raises(RunNotFoundError, match="zzz"):
        resolve_runs(["zzz"], settings=settings)


def test_stage_is_imported_again_from_the_entry_in_run_lock(project: Path) -> None:
    """run.lock records the stage's module and file; importing it skips the main block."""
    from xpkit._core._settings import load_settings
    from xpkit._execute._entry import load_stage, stage_of_run

    (project / "entry_stage.py").write_text(textwrap.dedent(STAGE_SCRIPT.format(name="entry")))
    done = subprocess.run(
        [sys.executable, "entry_stage.py"],
        cwd=project,
        env=env_for(project, "unused", XPKIT_TRACKING="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    run = Run(project / "results" / "entry" / "latest")
    assert run.lock.extra["entry"] == {
        "module": "__main__",
        "qualname": "main",
        "file": "entry_stage.py",
    }
    settings = load_settings()
    try:
        assert stage_of_run(run, settings).name == "entry"
        assert load_stage("entry_stage.py:main", settings).name == "entry"
    finally:
        sys.modules.pop("entry_stage", None)
    assert (project / "counter.txt").read_text() == "main block\nran\n"


def test_tracking_false_in_pyproject_switches_automatic_logging_off(
    project: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `tracking = false`, a run is neither synced nor logged by its loggers."""
    monkeypatch.delenv("XPKIT_TRACKING")
    (project / "pyproject.toml").write_text("[tool.xpkit]\ntracking = false\n")
    clear_settings_cache()
    called: list[Run] = []

    @xp.stage(name="untracked", src=False)
    def main(cfg: Any = {"n": 1}) -> None:  # noqa: B006 - a mapping default is the config
        pass

    main.logger(lambda run, mlflow: called.append(run))
    main()
    assert main.last is not None
    assert called == []
    assert runs_tagged(store, "untracked", main.last.id) == []
    assert not main.last.paths.mlflow_state.exists()


def test_loggers_leave_the_fluent_tracking_uri_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pointing the fluent API at the store for loggers neither keeps nor sets the URI."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    with _mlflow.fluent_uri(mlflow, "sqlite:////elsewhere/mlflow.db"):
        assert mlflow.get_tracking_uri() == "sqlite:////elsewhere/mlflow.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == before


# --- MLflow's own shape: sources, datasets, sweeps, maps, notes ------------------------------

KIND = "custom_model_development"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prepare -> train (lr=0.05) and a 3-point joblib sweep of train, made by their scripts."""
    return make_pipeline(tmp_path_factory.mktemp("pipeline") / "proj")


@pytest.fixture(scope="module")
def empty_store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite store, copied for each test that needs a store of its own."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def fresh_store(
    empty_store_file: Path, tmp_path: Path, pipeline: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A store of its own, the pipeline project as the current project."""
    path = tmp_path / "store" / "mlflow.db"
    path.parent.mkdir()
    shutil.copyfile(empty_store_file, path)
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("XPKIT_ROOT", str(pipeline))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(pipeline)
    clear_settings_cache()
    return uri


def pipeline_runs(root: Path) -> list[Run]:
    return [Run(d) for stage in ("prepare", "train") for d in run_dirs(root, stage)]


LOKY = "/venv/lib/python3.11/site-packages/joblib/externals/loky"


def sync_as_cd150c2(uri: str, run: Run, project: str) -> str:
    """Write what the syncer of cd150c2 (the previous version) wrote for a run never synced.

    Its experiment got no kind tag and no view; the run got today's ``tags_of`` plus
    ``mlflow.source.name`` = run.lock ``entry.file`` as recorded (loky's file for a joblib
    sweep point), its params and metric points, its status; no dataset input, no parent
    run, no note. Its sync cursor is saved as that version saved it (artifacts left out).
    """
    from mlflow.entities import Metric, Param

    c, lock = client(uri), run.lock
    exp = c.get_experiment_by_name(lock.stage)
    if exp is None:  # made as that version made it: artifacts in mlartifacts/<stage>
        root = _mlflow.artifacts_root(uri)
        assert root is not None
        exp_id = c.create_experiment(lock.stage, artifact_location=(root / lock.stage).as_uri())
    else:
        exp_id = exp.experiment_id
    tags = _mlflow.tags_of(lock, project=project)
    entry = lock.extra.get("entry")
    if isinstance(entry, dict) and entry.get("file"):
        tags["mlflow.source.name"] = entry["file"]
    if "sweep" in lock.extra:  # that version recorded loky's worker file as a point's entry
        tags["mlflow.source.name"] = f"{LOKY}/backend/popen_loky_posix.py"
    made = c.create_run(
        exp_id, start_time=_mlflow._ms(lock.started), tags=tags, run_name=run.dir.name
    )
    run_id = made.info.run_id
    points, offset, counts = _mlflow._read_points(run.paths.metrics, 0, {})
    c.log_batch(
        run_id,
        metrics=[Metric(p.key, p.value, p.timestamp, p.step) for p in points],
        params=[Param(k, v) for k, v in _mlflow.params_of(lock).items()],
    )
    c.set_terminated(run_id, status=_mlflow.STATUS[lock.status], end_time=_mlflow._ms(lock.ended))
    state = {"run_id": run_id, "offset": offset, "counts": counts, "pending": False}
    _mlflow._save_state(run.paths, uri, state)
    return str(run_id)


def ui_lines(uri: str) -> list[str]:
    """What `xp ui train` says about the store (without starting a server)."""
    from xpkit._cli._ui_cli import _addresses
    from xpkit._core._settings import load_settings

    return _addresses(client(uri), "http://h", "train", store=uri, settings=load_settings())[1:]


def shape_of(uri: str, root: Path) -> dict[str, Any]:
    """Check the pipeline's mirror through the MLflow client; return what a re-sync keeps."""
    c = client(uri)
    exps = {name: c.get_experiment_by_name(name) for name in ("prepare", "train")}
    assert {n: e.tags.get("mlflow.experimentKind") for n, e in exps.items()} == {
        "prepare": KIND,
        "train": KIND,
    }
    ids = [e.experiment_id for e in exps.values()]
    found = list(c.search_runs(ids, max_results=1000))
    mirrored = {r.data.tags["xpkit.run_id"]: r for r in found if "xpkit.run_id" in r.data.tags}
    runs = pipeline_runs(root)
    assert sorted(mirrored) == sorted(r.id for r in runs)  # one MLflow run per run directory
    for run in runs:
        ml = mirrored[run.id]
        assert ml.data.tags["mlflow.source.name"] == f"{run.stage}.py"
        recorded = {
            (k, v["hash"].removeprefix("xxh3_128:"), v["path"]) for k, v in run.lock.data.items()
        }
        logged = [
            (i.dataset.name, i.dataset.digest, json.loads(i.dataset.source)["uri"])
            for i in ml.inputs.dataset_inputs
        ]
        assert sorted(logged) == sorted(recorded)  # each once, with its xxh3 digest
    train = [r for r in runs if r.stage == "train"]
    assert len({mirrored[r.id].inputs.dataset_inputs[0].dataset.digest for r in train}) == 1
    points = [r for r in train if r.lock.extra.get("sweep")]
    assert len(points) == 3
    sweep_id = points[0].lock.extra["sweep"]["id"]
    train_exp = exps["train"].experiment_id
    (parent,) = c.search_runs([train_exp], f"tags.`xpkit.sweep.parent` = '{sweep_id}'")
    pid = parent.info.run_id
    children = c.search_runs([train_exp], f"tags.`mlflow.parentRunId` = '{pid}'")
    assert sorted(ch.data.tags["xpkit.run_id"] for ch in children) == sorted(r.id for r in points)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.source.name"] == "train.py"
    for child in children:
        assert f"/runs/{child.info.run_id}?" in parent.data.tags["mlflow.note.content"]
    alone = [r for r in train if not r.lock.extra.get("sweep")]
    assert [mirrored[r.id].data.tags.get("mlflow.parentRunId") for r in alone] == [None]
    prep = mirrored[next(r.id for r in runs if r.stage == "prepare")]
    link = f"(#/experiments/{prep.info.experiment_id}/runs/{prep.info.run_id}?workflowType="
    for run in train:
        assert link in mirrored[run.id].data.tags["mlflow.note.content"]
    assert (
        "- `lr`: `0.05` (default `0.1`)" in mirrored[alone[0].id].data.tags["mlflow.note.content"]
    )
    return {
        run_id: (
            ml.info.run_id,
            sorted((i.dataset.name, i.dataset.digest) for i in ml.inputs.dataset_inputs),
            ml.data.tags.get("mlflow.parentRunId"),
            ml.data.tags["mlflow.note.content"],
        )
        for run_id, ml in mirrored.items()
    } | {"parent": (pid, parent.data.tags["mlflow.note.content"])}


def test_first_sync_shows_sources_datasets_sweep_links_and_notes(
    fresh_store: str, pipeline: Path
) -> None:
    """Experiment kind, sources (even of loky workers), digests, 1 parent of 3, upstream links."""
    sync_runs(pipeline_runs(pipeline), loggers=())
    first = shape_of(fresh_store, pipeline)
    sync_runs(pipeline_runs(pipeline), loggers=())
    for run in pipeline_runs(pipeline):  # a lost cursor: the run is found by its tag again
        run.paths.mlflow_state.unlink()
    sync_runs(pipeline_runs(pipeline), loggers=())
    assert shape_of(fresh_store, pipeline) == first  # nothing duplicated, nothing changed


def test_runs_synced_by_the_previous_version_get_the_new_shape(
    fresh_store: str, pipeline: Path
) -> None:
    """Runs mirrored by cd150c2's syncer gain kind, sources, inputs, parent and notes."""
    old = {r.id: sync_as_cd150c2(fresh_store, r, pipeline.name) for r in pipeline_runs(pipeline)}
    c = client(fresh_store)
    train = c.get_experiment_by_name("train")
    assert "mlflow.experimentKind" not in train.tags
    before = c.search_runs([train.experiment_id])
    assert any(r.data.tags["mlflow.source.name"].endswith("popen_loky_posix.py") for r in before)
    assert all(not r.inputs.dataset_inputs for r in before)
    assert ui_lines(fresh_store)[-1].endswith("`xp log` adds them")  # `xp ui` says what to do
    sync_runs(pipeline_runs(pipeline), loggers=())
    assert ui_lines(fresh_store)[-1].startswith("runs of train: http://h/#/experiments/")
    first = shape_of(fresh_store, pipeline)
    assert {run_id: shape[0] for run_id, shape in first.items() if run_id != "parent"} == old
    sync_runs(pipeline_runs(pipeline), loggers=())
    assert shape_of(fresh_store, pipeline) == first


def test_a_sweep_parent_left_running_by_a_dead_sync_is_finished_by_the_next(
    fresh_store: str, pipeline: Path
) -> None:
    """A parent whose refresh never happened (sync killed) is set right by the next sync."""
    sync_runs(pipeline_runs(pipeline), loggers=())
    c = client(fresh_store)
    train = c.get_experiment_by_name("train").experiment_id
    (parent,) = c.search_runs([train], "tags.`xpkit.sweep.parent` != ''")
    c.update_run(parent.info.run_id, status="RUNNING")
    c.set_tag(parent.info.run_id, "mlflow.note.content", "stale")
    sync_runs(pipeline_runs(pipeline), loggers=())
    again = c.get_run(parent.info.run_id)
    assert again.info.status == "FINISHED"
    assert again.data.tags["mlflow.note.content"].startswith("**Sweep**")


def test_syncing_a_run_first_syncs_the_upstream_run_its_note_links(
    fresh_store: str, pipeline: Path
) -> None:
    """Only the train run is synced: its prepare run is mirrored too, and linked."""
    run = Run(run_dirs(pipeline, "train")[0])
    mlflow_id = sync_run(run)
    c = client(fresh_store)
    (prep,) = c.search_runs([c.get_experiment_by_name("prepare").experiment_id])
    note = c.get_run(mlflow_id).data.tags["mlflow.note.content"]
    assert f"/runs/{prep.info.run_id}?workflowType=machine_learning)" in note
    assert prep.data.tags["xpkit.run_id"] == run.lock.upstream["prep"]["id"]


def test_concurrent_syncs_of_sweep_points_make_one_parent(fresh_store: str, pipeline: Path) -> None:
    """Two `xp log` processes syncing points of one sweep at once agree on one parent run."""
    points = [d for d in run_dirs(pipeline, "train") if Run(d).lock.extra.get("sweep")]
    env = project_env(pipeline, MLFLOW_TRACKING_URI=fresh_store)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "xpkit", "log", "--no-loggers", "-q", str(d)],
            cwd=pipeline,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in points[:2]
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    c = client(fresh_store)
    exp = c.get_experiment_by_name("train").experiment_id
    parents = c.search_runs([exp], "tags.`xpkit.sweep.parent` != ''")
    assert len(parents) == 1
    children = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert len(children) == 2
    assert parents[0].info.status == "RUNNING"  # 2 of 3 points in MLflow so far


@pytest.mark.parametrize("backend", ["serial", "joblib"])
def test_a_map_is_one_run_whose_task_metrics_are_at_their_task_index(
    project: Path, store: str, backend: str
) -> None:
    """Tasks logging without a step: each point at its task's index, in one MLflow run."""
    name = f"mapped_{backend}"

    @xp.stage(name=name, src=False)
    def main(cfg: Any = {"n": 0}) -> None:  # noqa: B006 - a mapping default is the config
        xp.log_metrics({"x": cfg.n * 10 + 1})
        xp.log_metrics({"x": cfg.n * 10 + 2})

    run = main.map([{"n": n} for n in range(4)], backend=backend, jobs=2)
    mlflow_id = sync_run(run)
    assert [r.info.run_id for r in runs_tagged(store, name, run.id)] == [mlflow_id]
    assert history(store, mlflow_id, "x") == [(i, i * 10.0 + k) for i in range(4) for k in (1, 2)]
    assert "mlflow.parentRunId" not in client(store).get_run(mlflow_id).data.tags


def test_a_forged_run_id_is_a_one_line_error_and_a_foreign_upstream_is_not_synced(
    project: Path, store: str, tmp_path: Path
) -> None:
    """A run.lock id that could end a search filter is refused by name; an upstream outside."""

    @xp.stage(name="forged", src=False)
    def main(cfg: Any = {"n": 1}) -> None:  # noqa: B006 - a mapping default is the config
        pass

    main()
    main()
    assert main.last is not None
    forged, good = sorted((project / "results" / "forged").glob("2*"))
    text = (forged / "run.lock").read_text()
    lock_id = Run(forged).id
    (forged / "run.lock").write_text(text.replace(f"id: {lock_id}", "id: x' OR '1'='1"))
    outside = tmp_path / "outside" / "run"
    outside.mkdir(parents=True)
    (outside / "run.lock").write_text(Run(good).paths.lock.read_text())
    foreign = {**Run(good).lock.to_dict(), "stage": "elsewhere", "dir": "../outside/run"}
    upstream = {"up": foreign}
    text = Run(good).paths.lock.read_text() + yaml.safe_dump({"upstream": upstream})
    Run(good).paths.lock.write_text(text.replace("upstream: {}\n", ""))
    done = subprocess.run(
        [sys.executable, "-m", "xpkit", "log", "--no-loggers", "results/forged"],
        cwd=project,
        env=env_for(project, store),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "is not an xpkit run id" in done.stderr
    assert str(forged.name) in done.stderr
    assert client(store).get_experiment_by_name("elsewhere") is None
    (ml,) = runs_tagged(store, "forged", Run(good).id)
    assert "[elsewhere" not in ml.data.tags["mlflow.note.content"]


def test_a_kind_the_user_chose_is_kept(project: Path, store: str) -> None:
    """An experiment a user marked as GenAI stays so; xpkit only fills a missing kind."""
    c = client(store)
    exp_id = c.create_experiment("chosen_kind", artifact_location=(project / "art").as_uri())
    c.set_experiment_tag(exp_id, "mlflow.experimentKind", "genai_development")

    @xp.stage(name="chosen_kind", src=False)
    def main(cfg: Any = {"n": 1}) -> None:  # noqa: B006 - a mapping default is the config
        pass

    main()
    assert main.last is not None
    sync_run(main.last)
    assert c.get_experiment(exp_id).tags["mlflow.experimentKind"] == "genai_development"
