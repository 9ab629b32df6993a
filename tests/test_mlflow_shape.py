"""run.lock in MLflow's shape without a store: source, datasets, sweep, note, view, defaults.

Each run.lock here is written as an attacker or a crash would leave it: the mirror must
show what is right and drop what is not, never raise.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from xpkit._core._config import changed_defaults
from xpkit._core._lock import RunLock
from xpkit._tracking._note import NOTE_MAX, code, run_note, sweep_note
from xpkit._tracking._shape import (
    datasets_of,
    is_project_file,
    source_of,
    sweep_of,
    upstream_of,
)
from xpkit._tracking._ui import (
    PROPOSED_TAG,
    VIEW_TAG,
    kind_to_set,
    merged_view,
    runs_route,
    view_columns,
)

markdown_it = pytest.importorskip("markdown_it")  # CommonMark, as the UI renders notes

HASH = "xxh3_128:" + "ab" * 16
LOKY = "/venv/lib/python3.11/site-packages/joblib/externals/loky/backend/popen_loky_posix.py"


def lock_of(**fields: Any) -> RunLock:
    extra = fields.pop("extra", {})
    base: dict[str, Any] = {"id": "a1b2c3d4e5f6", "stage": "train", "dir": "results/train/r1"}
    return RunLock(**{**base, **fields}, extra=extra)


def entry(file: str, module: str = "__main__") -> dict[str, Any]:
    return {"entry": {"module": module, "qualname": "main", "file": file}}


# --- source -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("train.py", True),
        ("pkg/train.py", True),
        ("notebooks/explore.ipynb", True),
        (LOKY, False),
        (".venv/lib/python3.11/site-packages/joblib/loky/popen_loky_posix.py", False),
        ("../elsewhere/train.py", False),
        ("./train.py", False),
        ("a\\b.py", False),
        ("train.py\n[x](javascript:1)", False),
        ("data.csv", False),
        ("", False),
        (None, False),
        (["train.py"], False),
    ],
)
def test_only_project_python_files_count_as_a_source(path: object, ok: bool) -> None:
    """A source is a project-relative .py/.ipynb path: no library, no escape, no control char."""
    assert is_project_file(path) is ok


def test_a_good_entry_is_the_source() -> None:
    """run.lock ``entry.file`` names the user's script."""
    assert source_of(lock_of(extra=entry("exp/train.py"))) == "exp/train.py"


def test_a_loky_entry_gives_way_to_the_script_named_by_argv() -> None:
    """A joblib sweep point's loky entry is not believed: argv[0] among src.files is."""
    lock = lock_of(
        argv=("train.py", "--sweep", "lr=0.1,1"),
        src={"files": {"exp/train.py": "b1", "exp/models.py": "b2"}},
        extra=entry(LOKY),
    )
    assert source_of(lock) == "exp/train.py"


def test_a_module_entry_finds_its_file_among_src_files() -> None:
    """``python -m pkg.train`` (argv[0] is no script): the module's file in src.files."""
    lock = lock_of(
        argv=("-m",),
        src={"files": {"src/pkg/train.py": "b1", "src/pkg/util.py": "b2"}},
        extra=entry(LOKY, module="pkg.train"),
    )
    assert source_of(lock) == "src/pkg/train.py"


def test_an_ambiguous_or_missing_name_falls_back_to_another_runs_source(tmp_path: Path) -> None:
    """Two files could be argv[0]'s: neither is guessed; another run's source is used."""
    lock = lock_of(
        argv=("train.py",),
        src={"files": {"a/train.py": "b1", "b/train.py": "b2"}},
        extra=entry("/tmp/ipykernel_1/123.py"),
    )
    assert source_of(lock, root=tmp_path) is None
    assert source_of(lock, root=tmp_path, fallback="a/train.py") == "a/train.py"
    assert source_of(lock, root=tmp_path, fallback=LOKY) is None


def test_without_src_files_argv_counts_only_when_the_file_is_in_the_project(
    tmp_path: Path,
) -> None:
    """A run without a code snapshot: argv[0] is the source only if it exists under the root."""
    lock = lock_of(argv=("train.py",), extra=entry(LOKY))
    assert source_of(lock, root=tmp_path) is None
    (tmp_path / "train.py").write_text("")
    assert source_of(lock, root=tmp_path) == "train.py"


@pytest.mark.parametrize("bad", [42, "entry", ["train.py"], {"file": 3}, None])
def test_a_malformed_entry_is_ignored(bad: object) -> None:
    """An entry of the wrong shape is not an error: other evidence decides."""
    lock = lock_of(argv=("train.py",), src={"files": {"train.py": "b"}}, extra={"entry": bad})
    assert source_of(lock) == "train.py"


# --- datasets, sweeps, upstream -----------------------------------------------------------------


def test_each_hashed_data_entry_is_a_dataset_with_its_xxh3_digest() -> None:
    """Name = config key (or path), digest = the 32 hex digits, source = the project path."""
    data = {
        "raw": {"path": "data/raw.csv", "hash": HASH, "files": 1, "bytes": 10},
        "data/extra": {"path": "data/extra", "hash": "xxh3_128:" + "cd" * 16, "files": 2},
        "pending": {"path": "data/p.csv"},  # still hashing: no digest yet
        "broken": {"path": "data/b.csv", "error": "missing"},
        "forged": {"path": "data/f.csv", "hash": "md5:" + "0" * 32},
        "short": {"path": "data/s.csv", "hash": "xxh3_128:abc"},
        "notamap": "data/x.csv",
    }
    refs = datasets_of(lock_of(data=data))
    assert [(r.name, r.digest) for r in refs] == [("raw", "ab" * 16), ("data/extra", "cd" * 16)]
    assert json.loads(refs[0].source) == {"uri": "data/raw.csv"}
    assert json.loads(refs[0].profile) == {"hash": HASH, "files": 1, "bytes": 10}
    assert all(len(r.digest) <= 36 for r in refs)  # MLflow's column


def test_a_dataset_name_is_cut_to_mlflows_limit() -> None:
    """A path used as a name longer than 500 characters is cut, not refused by MLflow."""
    long = "d/" * 400 + "f.csv"
    (ref,) = datasets_of(lock_of(data={long: {"path": long, "hash": HASH}}))
    assert len(ref.name) == 500


@pytest.mark.parametrize(
    "sweep",
    [
        {"id": "x'; DROP", "point": 0, "total": 2},
        {"id": "s1", "point": 2, "total": 2},
        {"id": "s1", "point": -1, "total": 2},
        {"id": "s1", "point": True, "total": 2},
        {"id": "s1", "point": "0", "total": 2},
        {"point": 0, "total": 2},
        "s1 1/2",
    ],
)
def test_a_malformed_sweep_entry_makes_no_sweep(sweep: object) -> None:
    """A sweep id that could break a search filter, or a point outside 0..total-1: no sweep."""
    assert sweep_of(lock_of(extra={"sweep": sweep})) is None


def test_a_sweep_point_keeps_its_values() -> None:
    """A valid sweep entry gives point, total and the swept values."""
    sweep = sweep_of(
        lock_of(extra={"sweep": {"id": "s1", "point": 1, "total": 3, "values": {"lr": 0.1}}})
    )
    assert sweep is not None
    assert (sweep.id, sweep.point, sweep.total, dict(sweep.values)) == ("s1", 1, 3, {"lr": 0.1})


def test_upstream_entries_without_id_or_stage_are_left_out() -> None:
    """An upstream entry whose id could not be searched for safely is dropped."""
    upstream = {
        "prep": {"id": "ba40bf89f369", "stage": "prepare", "dir": "results/prepare/r"},
        "evil": {"id": "x' OR '1'='1", "stage": "prepare"},
        "nostage": {"id": "c0ffee"},
        "flat": "results/prepare/r",
    }
    refs = upstream_of(lock_of(upstream=upstream))
    assert [(r.key, r.id, r.stage) for r in refs] == [("prep", "ba40bf89f369", "prepare")]


# --- the note --------------------------------------------------------------------------------


def test_code_spans_hold_backticks_newlines_and_markdown_inertly() -> None:
    """A value with backticks, newlines or link syntax stays one literal code span."""
    assert code("a`b") == "``a`b``"
    assert code("`x`") == "`` `x` ``"
    assert code("[click](javascript:alert(1))") == "`[click](javascript:alert(1))`"
    assert "\n" not in code("line1\nline2")
    assert code("") == "`''`"
    assert code({"a": [1, 2]}) == '`{"a": [1, 2]}`'
    assert len(code("x" * 500)) < 110


def test_the_note_says_what_changed_which_code_what_data_and_how_to_rerun() -> None:
    """Changed keys with defaults, snapshot and dirty flag, data, upstream link, commands."""
    lock = lock_of(
        config={"lr": 0.05, "epochs": 50, "prep": "results/prepare/r", "save_dir": "x"},
        src={"commit": "c" * 40, "branch": "main", "head": "h" * 40, "dirty": True},
        data={"raw": {"path": "data/raw.csv", "hash": HASH}},
        upstream={"prep": {"id": "ba40bf89f369", "stage": "prepare", "dir": "results/prepare/r"}},
        extra={"defaults": {"lr": 0.1, "prep": "results/prepare/latest"}},
    )
    route = "#/experiments/1/runs/abc?workflowType=machine_learning"
    note = run_note(lock, upstream_routes={"ba40bf89f369": route})
    assert "- `lr`: `0.05` (default `0.1`)" in note
    assert "`prep`: `results" not in note  # an upstream key is shown as a link, not a change
    assert "snapshot `cccccccccccc` of branch `main`" in note
    assert "**with uncommitted changes**" in note
    assert f"[prepare ba40bf89f369]({route})" in note
    assert "`raw`: `data/raw.csv` `" + HASH + "`" in note
    assert (
        "xp show results/train/r1\nxp rerun results/train/r1\nxp checkout results/train/r1" in note
    )


def test_the_note_tells_defaults_from_unknown() -> None:
    """No change, and defaults never recorded (older runs), read differently."""
    same = run_note(lock_of(config={"lr": 0.1}, extra={"defaults": {}}), upstream_routes={})
    assert "**Config**: the stage's defaults." in same
    unknown = run_note(lock_of(config={"lr": 0.1}), upstream_routes={})
    assert "not recorded" in unknown


def test_a_hostile_run_lock_cannot_inject_links_or_break_the_note() -> None:
    """Keys, values, dirs and errors from run.lock never become markdown links or lines."""
    evil = "x](javascript:alert(1)) [y"
    lock = lock_of(
        dir="results/train/r1\n```\n[pwn](http://evil)",
        config={evil: "a` [pwn](http://evil) `b", "big": "v" * 10_000},
        error={"type": "E\n# title", "message": evil},
        extra={"defaults": {evil: 1, "big": "d"}},
    )
    note = run_note(lock, upstream_routes={})
    html = markdown_it.MarkdownIt("commonmark").render(note)
    assert "<a " not in html
    assert "<h1>" not in html
    assert html.count("<pre>") == 1  # only the command block
    assert "javascript:alert(1)" in html  # shown, as text in a code span


def test_the_note_fits_mlflows_limit_whatever_run_lock_holds() -> None:
    """Thousands of changed keys and data entries are capped with a count of the rest."""
    config = {f"k{i}": "v" * 90 for i in range(3000)}
    data = {f"d{i}": {"path": f"data/{'p' * 200}{i}", "hash": HASH} for i in range(3000)}
    lock = lock_of(config=config, data=data, extra={"defaults": dict.fromkeys(config, "d")})
    note = run_note(lock, upstream_routes={})
    assert len(note) <= NOTE_MAX
    assert "… and 2975 more" in note


def test_the_sweep_note_lists_points_in_order_and_the_missing_ones() -> None:
    """A parent's note: one linked line per point found, then how many are not in yet."""
    from xpkit._tracking._note import PointRow
    from xpkit._tracking._shape import SweepRef

    sweep = SweepRef("s1", 0, 3, {"lr": 0.1})
    rows = [
        PointRow(1, {"lr": 1.0}, "FINISHED", "#/r/2"),
        PointRow(0, {"lr": 0.1}, "FAILED", "#/r/1"),
    ]
    note = sweep_note("train", sweep, rows, "results/train")
    assert note.index("[point 1](#/r/1)") < note.index("[point 2](#/r/2)")
    assert "`lr`: `0.1` · FAILED" in note
    assert "1 point(s) not in MLflow yet" in note
    assert "`xp ls results/train`" in note


# --- experiment kind and the xpkit view ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "wanted"),
    [
        (None, "custom_model_development"),
        ("", "custom_model_development"),
        ("genai_development_inferred", "custom_model_development"),
        ("no_inferred_type", "custom_model_development"),
        ("custom_model_development", None),
        ("genai_development", None),  # a user's choice stays
    ],
)
def test_experiment_kind_is_set_unless_a_user_chose_one(
    kind: str | None, wanted: str | None
) -> None:
    """The kind tag is set when absent or only inferred by the UI; never over a user's."""
    tags = {} if kind is None else {"mlflow.experimentKind": kind}
    assert kind_to_set(tags) == wanted


def test_view_columns_are_source_dataset_changed_or_swept_keys_and_metrics() -> None:
    """Upstream keys and unchanged keys are not columns; sanitized keys are."""
    lock = lock_of(
        config={"lr": 0.1, "a@b": 1, "prep": "r", "seed": 0, "save_dir": "x"},
        data={"raw": {"path": "d", "hash": HASH}},
        upstream={"prep": {"id": "ba40bf89f369", "stage": "prepare"}},
        metrics={"loss": 0.5},
        extra={
            "defaults": {"a@b": 0, "prep": "latest"},
            "sweep": {"id": "s1", "point": 0, "total": 2, "values": {"lr": 0.1}},
        },
    )
    columns = view_columns(lock, key=lambda k: k.replace("@", "_"), metric_keys=["acc"])
    assert columns == [
        "attributes.`Source`",
        "attributes.`Dataset`",
        "params.`a_b`",
        "params.`lr`",
        "metrics.`loss`",
        "metrics.`acc`",
    ]


def test_the_view_only_gets_columns_never_proposed_so_user_removals_stay() -> None:
    """A column the user removed from the view is not put back; a new one is added."""
    first = merged_view({}, ["params.`lr`", "metrics.`loss`"], now_ms=1)
    state = json.loads(json.loads(first[VIEW_TAG])["state"])
    assert state["selectedColumns"] == ["params.`lr`", "metrics.`loss`"]
    envelope = json.loads(first[VIEW_TAG])
    envelope["state"] = json.dumps({"selectedColumns": ["metrics.`loss`"]})  # user removed lr
    tags = {VIEW_TAG: json.dumps(envelope), PROPOSED_TAG: first[PROPOSED_TAG]}
    assert merged_view(tags, ["params.`lr`", "metrics.`loss`"], now_ms=2) == {}
    second = merged_view(tags, ["params.`lr`", "params.`seed`"], now_ms=3)
    state = json.loads(json.loads(second[VIEW_TAG])["state"])
    assert state["selectedColumns"] == ["metrics.`loss`", "params.`seed`"]
    assert json.loads(second[VIEW_TAG])["createdAt"] == 1


@pytest.mark.parametrize("saved", ["H4sIAAAA-compressed", '{"name": "x", "state": 3}', "[]"])
def test_a_view_saved_in_a_form_xpkit_cannot_read_is_left_alone(saved: str) -> None:
    """A view the UI compressed, or a foreign value under the tag, is not overwritten."""
    tags = {VIEW_TAG: saved, PROPOSED_TAG: "[]"}
    assert merged_view(tags, ["params.`lr`"], now_ms=1) == {}


def test_a_deleted_view_is_made_again_whole() -> None:
    """The view tag gone (deleted in the UI): every wanted column is proposed again."""
    tags = {PROPOSED_TAG: json.dumps(["params.`lr`"])}
    made = merged_view(tags, ["params.`lr`"], now_ms=1)
    assert json.loads(json.loads(made[VIEW_TAG])["state"])["selectedColumns"] == ["params.`lr`"]


def test_runs_route_opens_the_runs_table_with_the_view_whatever_the_ui_switch() -> None:
    """The address names the runs tab, the model-training workflow and the xpkit view."""
    assert runs_route("7", view=True) == (
        "#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=xpkit"
    )
    assert runs_route("a/b") == "#/experiments/a%2Fb/runs?workflowType=machine_learning"


# --- what run.lock records as the stage's defaults --------------------------------------------


WHEN = dt.datetime(2026, 1, 2, 3, 4, 5)


def test_changed_defaults_names_the_keys_a_run_changed_with_their_defaults() -> None:
    """Nested keys are dotted; save_dir and unchanged keys are left out."""
    defaults = OmegaConf.create(
        {"lr": 0.1, "opt": {"name": "adam", "wd": 0.0}, "save_dir": "results/x/${now:%y}"}
    )
    config = {"lr": 0.5, "opt": {"name": "sgd", "wd": 0.0}, "save_dir": "results/x/26"}
    assert changed_defaults(lambda: defaults, config, when=WHEN) == {
        "lr": 0.1,
        "opt.name": "adam",
    }


def test_changed_defaults_resolves_now_at_the_run_start() -> None:
    """A ``${now:...}`` default is compared as the run resolved it, not as a template."""
    defaults = OmegaConf.create({"tag": "run-${now:%y%m%d}"})
    assert changed_defaults(lambda: defaults, {"tag": "run-260102"}, when=WHEN) == {}


def test_changed_defaults_is_unknown_when_the_defaults_do_not_match_the_config() -> None:
    """Defaults that lack a key of the config (a stage's schema lost) record nothing."""
    assert changed_defaults(lambda: OmegaConf.create({}), {"lr": 1}, when=WHEN) is None

    def broken() -> Any:
        raise TypeError("no config parameter")

    assert changed_defaults(broken, {"lr": 1}, when=WHEN) is None
