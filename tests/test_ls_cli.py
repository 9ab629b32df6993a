"""How ``xp ls`` writes a table a column at a time: the same cells as one value at a time."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpkit._catalog._table import ABSENT
from xpkit._cli._browse_cli import Column, _plain_table, _when
from xpkit._cli._ls_cli import (
    _duration_cells,
    _scalar_cell,
    _value_column,
    _varies,
    _when_cells,
)
from xpkit._core._progress import duration_text

DATES = [
    "2024-03-31T00:30:00+00:00",  # Paris: the hour before summer time
    "2024-03-31T01:30:00+00:00",
    "2024-03-31T03:30:00+02:00",
    "2024-10-27T02:30:00+02:00",  # Paris: the hour that happens twice
    "2024-10-27T02:30:00+01:00",
    "2024-06-01T12:00:00.123456+02:00",
    "2024-06-01T12:00:00+05:30",
    "2024-06-01T12:00:00-03:30",
    "2024-06-01T12:00:00",  # no offset: local time
    "2024-06-01 12:00:00+02:00",
    "2024-06-01T12:00+02:00",
    "2024-01-01T00:00:00Z",
    "not a date",
    "",
    None,
    ABSENT,
]


@pytest.fixture(params=["UTC", "Europe/Paris", "Asia/Kolkata", "America/St_Johns"])
def zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Local time in another zone for the test."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def test_started_cells_are_local_time_as_one_at_a_time(zone: str) -> None:
    """Dates cut out of their text or converted: what _when writes for each, in any zone,
    across a change of summer time, for odd shapes and for no date."""
    expected = [_when(None if v is ABSENT else v) for v in DATES]
    assert _when_cells(DATES) == expected, zone


def test_columns_of_dates_as_runs_write_them_are_cut_as_one_at_a_time(zone: str) -> None:
    """A year of start times every 37 minutes, written in UTC, in the local offset of the
    moment, with microseconds: cut out of their texts when local time had their offsets
    throughout, and each cell what _when writes, in any zone."""
    from xpkit._cli._ls_cli import _cut_local_dates

    base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    moments = [base + dt.timedelta(minutes=37 * i) for i in range(14_300)]
    utc = [m.isoformat() for m in moments]
    local = [m.astimezone().isoformat() for m in moments]
    micro = [(m + dt.timedelta(microseconds=7)).astimezone().isoformat() for m in moments]
    for column in (utc, local, micro, [*local, "not a date"], [*local, "2024-06-01T12:00"]):
        assert _when_cells(column) == [_when(v) for v in column], zone
    assert _cut_local_dates(local) is not None
    assert _cut_local_dates(micro) is not None
    assert (_cut_local_dates(utc) is not None) == (zone == "UTC")


def test_duration_cells_are_duration_text() -> None:
    """Seconds under and over a minute, rounding at the edges, NaN, infinity, None."""
    values = [0.0, 59.94, 59.96, 60.0, 61.4, 3599.6, 7300.0, -5.0, float("nan"), float("inf")]
    values += [None, 12]
    assert _duration_cells(values) == [duration_text(v) for v in values]


@pytest.mark.parametrize(
    "values",
    [
        [1, 2, 3] * 50,
        [1, True, 1.0, None, ABSENT] * 40,  # equal as keys of a dict, not as cells
        [0.1 * i for i in range(300)],
        [0.5, float("nan"), float("inf"), None] * 30,
        ["a", "b", ABSENT] * 50,
        [[1, 2], {"a": 1}, "x", 3] * 10,
    ],
)
def test_value_cells_are_the_cells_of_each_value(values: list[object]) -> None:
    """Whatever a column mixes, each cell is what _cell writes for its value (a run without
    the key: empty), padded to one width."""
    column = _value_column("key", values, pad=True)
    expected = [_scalar_cell(v) for v in values]
    assert [c.rstrip() for c in column.cells] == [e.rstrip() for e in expected]
    assert {len(c) for c in column.cells} == {column.width}
    assert _value_column("key", values, pad=False).cells == expected


@pytest.mark.parametrize(
    ("values", "varies"),
    [
        ([1] * 200, False),
        ([1] * 200 + [2], True),
        ([1] * 200 + [1.0], True),  # 1 and 1.0 differ, as do 1 and True
        ([True] * 100 + [1], True),
        ([None] * 100 + [ABSENT], True),  # a run without the key differs
        ([ABSENT] * 100, False),
        ([[1, 2]] * 100, False),
        ([{"a": 1}] * 100 + [{"a": 2}], True),
        (["x"] * 100, False),
    ],
)
def test_a_config_key_varies_when_a_value_or_its_type_differs(
    values: list[object], varies: bool
) -> None:
    """Equality over a whole column, in C, tells 1, 1.0, True and a missing key apart."""
    assert _varies(values) is varies


def test_plain_table_pads_strips_and_streams() -> None:
    """Columns two spaces apart, no trailing spaces (an empty last cell), the same text
    however many lines are written at once."""
    columns = [
        Column("id", ["a", "bbb"]),
        Column("n", ["1", "22"]),
        Column("commit", ["", "c0ffee1"]),
    ]
    whole = "".join(_plain_table(columns))
    assert whole == "id   n   commit\na    1\nbbb  22  c0ffee1\n"
    assert "".join(_plain_table(columns, rows_at_once=1)) == whole


# -- dictionary-coded columns ------------------------------------------------------------


def test_a_column_is_coded_only_when_equal_values_are_the_same_value() -> None:
    """Coded: scalars that repeat. Not coded: 1 beside True or 1.0 (equal keys of a dict),
    a float zero (0.0 == -0.0), lists, values that do not repeat, short columns."""
    from xpkit._catalog._table import Coded

    coded = Coded.of([1, 2, ABSENT, None, 2] * 20)
    assert coded is not None
    assert coded.decoded() == [1, 2, ABSENT, None, 2] * 20
    assert len(coded.values) == 4
    nan = float("nan")
    assert Coded.of([nan, 0.5] * 50) is not None  # one NaN object: one value
    for values in (
        [1, True] * 50,
        [1, 1.0] * 50,
        [0.0, -0.0, 1.5] * 50,
        [[1], "x"] * 50,
        [float("nan") for _ in range(100)],
        [f"id{i}" for i in range(100)],
        [1, 2] * 10,
    ):
        assert Coded.of(values) is None, values[:3]


def test_a_coded_column_takes_rows_until_a_value_cannot_be_coded() -> None:
    """Appending keeps a column coded while it can; stored and loaded back it is the same
    column; a stored column whose codes or size do not fit its rows is refused."""
    from xpkit._catalog._table import Coded, HeadTable

    coded = Coded.of(["a", "b"] * 50)
    assert coded is not None
    assert coded.append("c")
    assert coded.append(ABSENT)
    assert not coded.append([1])
    assert Coded.of([1, 2] * 50).append(True) is False  # type: ignore[union-attr]
    assert Coded.of([1.5, 2.5] * 50).append(0.0) is False  # type: ignore[union-attr]
    stored = coded.stored()
    back = Coded.loaded(stored, 102)
    assert back is not None
    assert back.decoded() == ["a", "b"] * 50 + ["c", ABSENT]
    values, codes, size = stored
    assert Coded.loaded((values, codes[:-1], size), 102) is None
    assert Coded.loaded((values, codes[:-1] + b"\x07", size), 102) is None
    assert Coded.loaded((values, codes, 4), 102) is None
    assert Coded.loaded((values[:2], codes, size), 102) is None
    wide = Coded.of([f"v{i // 4}" for i in range(1200)])  # 300 values: 2-byte codes
    assert wide is not None
    assert wide.stored()[2] == 2
    assert Coded.loaded(wide.stored(), 1200).decoded() == wide.decoded()  # type: ignore[union-attr]
    table = HeadTable(coded={"k": Coded.of([1, 2] * 50)})  # type: ignore[dict-item]
    table.shape.extend([0] * 100)
    table.shapes.append(("k",))
    table.data.extend([None] * 100)
    table.append({"k": True}, None)
    table.append({}, None)
    assert table.column("k") == [1, 2] * 50 + [True, ABSENT]
    assert "k" in table.columns
    assert "k" not in table.coded


def _write_runs(root: Path, first: int, configs: list[dict[str, object]]) -> None:
    """Runs ``first``, ``first + 1``... of stage ``s`` with these configs, dated an hour ago."""
    from xpkit._core._yaml import dump_yaml

    for i, config in enumerate(configs, start=first):
        run_dir = root / "results" / "s" / f"r{i:04d}"
        run_dir.mkdir(parents=True)
        lock = {
            "xpkit": 1,
            "id": f"{i:04d}abcdef",
            "stage": "s",
            "dir": f"results/s/r{i:04d}",
            "status": ["completed", "failed"][i % 2],
            "started": f"2024-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
            "duration_s": i / 7,
            "config": config,
            "metrics": {"acc": i / 1000, "epochs": i % 3},
        }
        (run_dir / "run.lock").write_text(dump_yaml(lock))
        past = time.time_ns() - 3600 * 10**9
        os.utime(run_dir / "run.lock", ns=(past, past))


def _listings(capsys: pytest.CaptureFixture[str]) -> list[str]:
    from xpkit._cli._ls_cli import ls_command
    from xpkit._core._settings import clear_settings_cache

    out = []
    for argv in (
        [],
        ["--where", "lr > 0.01 or flag"],
        ["--sort", "name", "-n", "40"],
        ["--where", "status == failed", "--sort", "-acc"],
        ["-f", "csv"],
        ["-f", "json", "-n", "30"],
    ):
        clear_settings_cache()
        assert ls_command(argv) == 0
        out.append(capsys.readouterr().out)
    return out


def test_listings_from_coded_columns_are_those_from_plain_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tables, CSV, JSON and DataFrames of 150 runs whose config keys repeat (ints, floats,
    strings, booleans, None, missing keys), listed cold, from the index, after runs are
    removed and after runs whose values cannot be coded with the others join them: the same
    as with no column coded."""
    import pandas as pd

    import xpkit as xp
    from xpkit._catalog._table import Coded

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XPKIT_ROOT", str(tmp_path))
    configs: list[dict[str, object]] = []
    for i in range(150):
        config: dict[str, object] = {"lr": [0.1, 0.01, 0.001][i % 3], "depth": i % 4}
        config["name"] = ["a", "bb", "ccc"][i % 3]
        config["flag"] = [True, False, None][i % 3]
        config["mode"] = "a-long-mode-name" if i in (7, 8) else "xy"[i % 2]
        if i % 5:
            config["opt"] = {"beta": 0.9 if i % 2 else 0.99}
        configs.append(config)
    _write_runs(tmp_path, 0, configs)
    index = tmp_path / "results" / ".xpkit" / "runs.marshal"

    def plain() -> list[str]:
        """The listings with no column coded (the index put back after)."""
        kept = index.read_bytes() if index.exists() else None
        with monkeypatch.context() as m:
            m.setattr(Coded, "of", classmethod(lambda cls, values: None))
            index.unlink(missing_ok=True)
            listed = _listings(capsys)
            frames.append(xp.runs().to_pandas())
        index.unlink()
        if kept is not None:
            index.write_bytes(kept)
        return listed

    def listings() -> list[str]:
        listed = _listings(capsys)
        pd.testing.assert_frame_equal(xp.runs().to_pandas(), frames[-1])
        return listed

    frames: list[pd.DataFrame] = []

    expected = plain()
    assert listings() == expected  # cold: read, coded, saved
    table = xp.runs()._store.table
    assert {"config.lr", "config.depth", "config.name", "config.flag"} <= table.coded.keys()
    assert listings() == expected  # from the index
    for i in (7, 8):  # the runs of the long value: the index keeps the value, not its runs
        shutil.rmtree(tmp_path / "results" / "s" / f"r{i:04d}")
    expected = plain()
    assert listings() == expected
    assert "a-long-mode-name" in xp.runs()._store.table.coded["config.mode"].values
    assert listings() == expected
    _write_runs(tmp_path, 150, [{"lr": 1, "depth": True, "name": ["x"], "flag": 0.0}] * 3)
    expected = plain()
    assert listings() == expected
    assert listings() == expected
    assert not {"config.lr", "config.depth", "config.name"} & xp.runs()._store.table.coded.keys()


def test_rereading_every_run_decodes_no_column_per_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run.lock touched after the index coded its columns (a checkout, a copy): the
    listing reads each head again into the coded columns, decoding each column at most
    once, not once per run."""
    import xpkit as xp
    from xpkit._catalog._table import Coded

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XPKIT_ROOT", str(tmp_path))
    _write_runs(tmp_path, 0, [{"lr": [0.1, 0.01][i % 2], "depth": i % 3} for i in range(300)])
    assert len(xp.runs()) == 300
    assert {"config.lr", "config.depth"} <= xp.runs()._store.table.coded.keys()
    later = time.time_ns() - 1800 * 10**9
    for lock in (tmp_path / "results").rglob("run.lock"):
        os.utime(lock, ns=(later, later))
    decoded = 0
    real = Coded.decoded

    def counted(self: Coded) -> list[object]:
        nonlocal decoded
        decoded += 1
        return real(self)

    monkeypatch.setattr(Coded, "decoded", counted)
    found = xp.runs()
    assert len(found) == 300
    assert found.where("lr > 0.05 and depth == 2")
    assert decoded <= 20


def test_json_is_that_of_the_indenting_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``xp ls -f json`` writes each record as json.dumps(records, indent=2) would, NaN and
    infinities as null: flat records, nested values, text beyond ASCII, quotes and commas."""
    import json
    import math

    import xpkit as xp
    from xpkit._cli._ls_cli import ls_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XPKIT_ROOT", str(tmp_path))
    configs: list[dict[str, object]] = [
        {"lr": 0.1, "name": 'a "b", c: NaN'},
        {"lr": float("nan"), "name": "é"},
        {"lr": float("-inf"), "tags": ["x", {"y": 1}]},
        {"opt": {"beta": [0.9, 0.99]}, "flag": True},
        {"flag": None, "n": 10**30},
    ]
    _write_runs(tmp_path, 0, configs)
    assert ls_command(["-f", "json"]) == 0
    written = capsys.readouterr().out

    def plain(value: object) -> object:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    records = [{k: plain(v) for k, v in r.items()} for r in xp.runs().records()]
    assert written == json.dumps(records, indent=2, default=str) + "\n"
    assert '"config.tags": [\n' in written  # nested: the slow way
    assert ls_command(["-f", "json", "--where", "lr > 100"]) == 0
    assert capsys.readouterr().out == "[]\n"


def test_a_column_of_many_values_is_coded_two_bytes_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """300 values of a config key over 1,200 runs: two bytes a run, listed newest first (the
    codes read backwards) and filtered, as with no column coded."""
    import pandas as pd

    import xpkit as xp
    from xpkit._catalog._table import Coded

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XPKIT_ROOT", str(tmp_path))
    configs: list[dict[str, object]] = [
        {"lr": 0.1 * (i % 2 + 1), "k": i // 4, "flag": i % 3 == 0, "name": "abc"[i % 3]}
        for i in range(1200)
    ]
    _write_runs(tmp_path, 0, configs)
    with monkeypatch.context() as m:
        m.setattr(Coded, "of", classmethod(lambda cls, values: None))
        expected = _listings(capsys)
        frame = xp.runs().to_pandas()
    (tmp_path / "results" / ".xpkit" / "runs.marshal").unlink()
    assert _listings(capsys) == expected
    assert _listings(capsys) == expected  # from the index
    column = xp.runs()._store.table.coded["config.k"]
    assert (len(column.values), type(column.codes)) == (300, memoryview)
    pd.testing.assert_frame_equal(xp.runs().to_pandas(), frame)
