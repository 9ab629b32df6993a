"""How ``xp ls`` writes a table a column at a time: the same cells as one value at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator

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
