"""``xp ls``: the runs as a table, CSV or JSON, built a column at a time.

A listing of 100,000 runs with 50 config keys prints 5 million cells: each column is
formatted as one list (a value that repeats is formatted and padded once), and each line
is one join of its cells.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import math
import operator
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._catalog._runs import Runs
from .._catalog._table import ABSENT, Coded
from .._core._progress import duration_text
from .._core._settings import load_settings
from ._browse_cli import Column, _cell, _Out, _parser, _status_style, _when

__all__ = ["ls_command"]


def ls_command(argv: list[str]) -> int:
    """``xp ls [PATH...] [--where EXPR] [--sort KEY] [--limit N] [--format table|csv|json]``."""
    p = _parser("ls", "List runs, newest first, with the config keys that vary and metrics.")
    p.epilog = (
        "EXPR compares fields (config.KEY, metrics.NAME, id, stage, status, dir, started, "
        "duration_s, commit; KEY or NAME alone when unambiguous, as the table heads them) "
        "with == != < <= > >= (two numbers compare as numbers), "
        "combined with and, or, not and parentheses; strings may be quoted or bare. "
        "Example: xp ls --where 'config.lr > 0.01 and status == completed' --sort -metrics.acc"
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="run dirs, dirs of runs or globs")
    p.add_argument(
        "-w", "--where", metavar="EXPR", help="e.g. 'config.lr > 0.01 and status == completed'"
    )
    p.add_argument(
        "-s", "--sort", metavar="KEY", default="-started", help="field, '-' first for descending"
    )
    p.add_argument("-n", "--limit", metavar="N", type=int, help="show at most N runs")
    p.add_argument("-f", "--format", choices=("table", "csv", "json"), default="table")
    args = p.parse_args(_glue_sort(argv))
    found = Runs.find(args.paths or None, settings=load_settings())
    here = os.getcwd() + os.sep
    for message in found.skipped:
        shown_message = message[len(here) :] if message.startswith(here) else message
        print(f"xp ls: warning: skipped {shown_message}", file=sys.stderr)
    shown = found.where(args.where) if args.where else found
    shown = shown.sort(args.sort)
    if args.limit is not None:
        shown = shown.limit(args.limit)
    if args.format == "json":
        sys.stdout.write(_json(shown) + "\n")
    elif args.format == "csv":
        sys.stdout.write(_csv(shown))
    else:
        _ls_table(shown, found, _Out())
    return 0


def _glue_sort(argv: list[str]) -> list[str]:
    """Let ``--sort -metrics.acc`` through (argparse takes ``-metrics.acc`` for an option)."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("-s", "--sort"):
            value = next(args, None)
            out.append(arg if value is None else f"--sort={value}")
        else:
            out.append(arg)
    return out


# a flat record as json.dumps(indent=2) writes it inside a list, but by the C encoder
_FLAT = json.JSONEncoder(separators=(",\n    ", ": "), allow_nan=False, default=str).encode
_NESTED = frozenset({list, dict, tuple})


def _json(shown: Runs) -> str:
    """The records of ``shown`` as ``json.dumps(records, indent=2)`` writes them (NaN and
    infinities as null), a record at a time by the C encoder, which does not indent: the
    pure-Python encoder that indenting takes is 3x slower. A record holding a list, a
    mapping or a number JSON has not is written the slow way."""
    records = shown.records()
    if not records:
        return "[]"
    keys = shown._key_order()
    nested = {  # a coded column holds scalars only
        k
        for k in keys
        if shown._coded(k) is None and not _NESTED.isdisjoint(map(type, shown._values(k)))
    }
    parts = []
    for record in records:
        text = _flat_json(record) if record and nested.isdisjoint(record) else None
        if text is None:
            slow = {k: _json_value(v) for k, v in record.items()}
            whole = json.dumps(slow, indent=2, default=str)
            text = "\n".join("  " + line for line in whole.splitlines())
        parts.append(text)
    return "[\n" + ",\n".join(parts) + "\n]"


def _flat_json(record: dict[str, Any]) -> str | None:
    """A record of scalars as an item of an indented list; None for NaN or an infinity."""
    try:
        return f"  {{\n    {_FLAT(record)[1:-1]}\n  }}"
    except ValueError:
        return None


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN/Infinity
    return value


def _csv(shown: Runs) -> str:
    """One row per run, every record key a column (a run without it: an empty cell)."""
    keys = shown._key_order()
    columns = [_cells(shown._values(key)) for key in keys]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    writer.writerows(zip(*columns, strict=True))
    return buf.getvalue()


# -- the table ----------------------------------------------------------------------------


def _ls_table(shown: Runs, found: Runs, out: _Out) -> None:
    """The table of ``shown``; a ``*`` in ``data`` marks a run whose data differs from the
    previous run of its stage among ``found``."""
    if not shown:
        print("no runs found", file=sys.stderr)
        return
    keys = shown._key_order()
    config = _varying([k for k in keys if k.startswith("config.")], shown)
    metrics = [k for k in keys if k.startswith("metrics.")]
    pad = out.console is None  # rich pads by itself
    columns = [
        _column("id", shown._values("id"), str, pad=pad),
        _key_column("stage", shown, "stage", str, pad=pad),
        _key_column("status", shown, "status", str, pad=pad),
        _text_column("started", _when_cells(shown._values("started")), pad=pad),
        _text_column("duration", _duration_cells(shown._values("duration_s")), pad=pad),
    ]
    if "sweep" in keys:
        columns.append(_column("sweep", shown._values("sweep"), _sweep_cell, pad=pad))
    if shown._with_data():
        changed = found._data_changed_rows()
        marks = ["*" if row in changed else "" for row in shown._rows]
        columns.append(_column("data", marks, str, pad=pad))
    for key, header in zip(config + metrics, _short_names(config + metrics), strict=True):
        coded = shown._coded(key)
        if coded is not None:
            columns.append(_coded_column(header, coded, _scalar_cell, pad=pad))
        else:
            columns.append(_value_column(header, shown._values(key), pad=pad))
    columns.append(Column("commit", [(c or "")[:7] for c in shown._values("commit")]))
    styles: list[Callable[[str], str | None] | None] = [lambda _: "cyan", None, _status_style]
    out.table(columns, styles=styles)


def _varying(keys: list[str], shown: Runs) -> list[str]:
    """The ``config.*`` keys whose value differs between runs of the same stage
    (``save_dir`` left out: it always does)."""
    groups: list[list[int]] | None = None
    stages = shown._values("stage")
    if stages.count(stages[0]) != len(stages):
        by_stage: dict[Any, list[int]] = {}
        for i, stage in enumerate(stages):
            by_stage.setdefault(stage, []).append(i)
        groups = list(by_stage.values())
    out = []
    for key in keys:
        if key == "config.save_dir":
            continue
        coded = shown._coded(key) if groups is None else None
        if coded is not None:  # one code per value, of one type (1, 1.0 and True apart)
            varies = len(coded.present()) > 1
        elif groups is None:
            varies = _varies(shown._values(key))
        else:
            values = shown._values(key)
            varies = any(_varies([values[i] for i in group]) for group in groups)
        if varies:
            out.append(key)
    return out


_PLAIN = frozenset({str, int, float})
_SCALARS = frozenset({str, int, float, bool, type(None), type(ABSENT)})


def _varies(values: list[Any]) -> bool:
    """Whether two values differ, or are of different types (1, 1.0 and True differ); a
    run without the key differs from one with it."""
    if _varies_among(values[:64]):  # a column that varies mostly does so early
        return True
    kinds = set(map(type, values))
    if len(kinds) > 1:
        return True
    if kinds <= _SCALARS:  # one type: equality is sameness, and list.count runs in C
        return values.count(values[0]) != len(values)
    return _varies_among(values)


def _varies_among(values: list[Any]) -> bool:
    first = values[0]
    kind = type(first)
    for value in values[1:]:
        if value is first or (type(value) is kind and kind in _PLAIN and value == first):
            continue  # the common case, without building comparables
        if _comparable(value) != _comparable(first):
            return True
    return False


def _comparable(value: Any) -> Any:
    """A value that compares equal only to the same value of the same type (1 != 1.0 != True)."""
    if isinstance(value, (list, dict)):
        return ("json", json.dumps(value, sort_keys=True, default=repr))
    return (type(value).__name__, value)


def _column(header: str, values: list[Any], cell: Callable[[Any], str], *, pad: bool) -> Column:
    """A column of ``cell(value)`` for each value, padded when ``pad``; each distinct value
    is formatted and padded once when values repeat (a config key has a few values across
    thousands of runs). ``values`` must not mix 1, 1.0 and True (equal keys of a dict)."""
    memo = _memo(values, cell)
    if memo is not None:
        width = max([len(header), *map(len, memo.values())])
        if pad:
            memo = {v: c.ljust(width) for v, c in memo.items()}
        return Column(header, list(map(memo.__getitem__, values)), width if pad else None)
    cells = values if cell is str and set(map(type, values)) == {str} else list(map(cell, values))
    return _text_column(header, cells, pad=pad)


def _text_column(header: str, cells: list[str], *, pad: bool) -> Column:
    """A column of cells already written, padded to one width when ``pad``."""
    if not pad or not cells:
        return Column(header, cells)
    width = max(len(header), max(map(len, cells)))
    if min(map(len, cells)) != width:
        cells = [c.ljust(width) for c in cells]
    return Column(header, cells, width)


def _key_column(
    header: str, shown: Runs, key: str, cell: Callable[[Any], str], *, pad: bool
) -> Column:
    """The column of a record key, from its codes when it is dictionary-coded."""
    coded = shown._coded(key)
    if coded is not None:
        return _coded_column(header, coded, cell, pad=pad)
    return _column(header, shown._values(key), cell, pad=pad)


def _coded_column(header: str, coded: Coded, cell: Callable[[Any], str], *, pad: bool) -> Column:
    """As :func:`_column` makes it, from a dictionary-coded column: each value formatted
    and padded once, a cell per run picked by its code."""
    texts = [cell(value) for value in coded.values]
    width = max([len(header), *(len(texts[code]) for code in coded.present())])
    if pad:
        texts = [text.ljust(width) for text in texts]
    return Column(header, [texts[code] for code in coded.codes], width if pad else None)


def _memo(values: list[Any], cell: Callable[[Any], str]) -> dict[Any, str] | None:
    """``{value: cell(value)}`` when the values repeat (judged from the first ones)."""
    try:
        if len(set(values[:256])) > 64:
            return None
        return {v: cell(v) for v in set(values)}
    except TypeError:  # a list or a mapping among them
        return None


def _value_column(header: str, values: list[Any], *, pad: bool) -> Column:
    """A config key's or metric's column, as :func:`_cell` writes values ("" where a run
    has no such key)."""
    kinds = set(map(type, values))
    if kinds == {float} and len(set(values[:256])) > 64:  # as _cell writes floats, in C
        return _text_column(header, list(map(format, values, itertools.repeat(".6g"))), pad=pad)
    if kinds <= _SCALARS and len(kinds & {int, float, bool}) <= 1:
        return _column(header, values, _scalar_cell, pad=pad)
    return _column(header, [_scalar_cell(v) for v in values], str, pad=pad)


def _scalar_cell(value: Any) -> str:
    return "" if value is ABSENT else _cell(value)


def _cells(values: list[Any]) -> list[str]:
    """Values as :func:`_cell` writes them ("" where a run has no such key)."""
    kinds = set(map(type, values))
    if kinds == {str}:
        return values
    return list(map(_scalar_cell, values))


def _when_cells(values: list[Any]) -> list[str]:
    """``started`` in local time, as :func:`_when` writes it. A date written with the UTC
    offset local time had throughout its hour (as runs write it) is cut out of its text."""
    cut = _cut_local_dates(values)
    if cut is not None:
        return cut
    hours: dict[str, bool] = {}  # "YYYY-MM-DDTHH+HH:MM" -> its offset is local time's
    out = []
    for value in values:
        try:
            when = dt.datetime.fromisoformat(value)
        except (TypeError, ValueError):
            out.append(_when(None if value is ABSENT else value))
            continue
        if not _plain_iso(value):
            out.append(_when(when))
            continue
        hour = value[:13] + value[-6:]
        local = hours.get(hour)
        if local is None:
            local = hours[hour] = _local_hour(when)
        out.append(value[:10] + " " + value[11:19] if local else _when(when))
    return out


_LAYOUT = operator.itemgetter(slice(4, 17, 3))  # "--T::" in a plain ISO date
_HOUR = operator.itemgetter(slice(0, 13))  # "YYYY-MM-DDTHH"
_OFFSET = operator.itemgetter(slice(-6, None))  # "+HH:MM"


def _cut_local_dates(values: list[Any]) -> list[str] | None:
    """The cells of a column of plain ISO dates (:func:`_plain_iso`) all in offsets local
    time had throughout their hours, cut out of their texts a column at a time; None for
    any other column."""
    if not values or set(map(type, values)) != {str}:
        return None
    try:
        all(map(dt.datetime.fromisoformat, values))  # each a date (a datetime is true)
    except ValueError:
        return None
    if set(map(_LAYOUT, values)) != {"--T::"}:
        return None
    offsets = set(map(_OFFSET, values))
    hours: Iterable[tuple[str, str]]
    if len(offsets) == 1:  # runs of one machine in one season, or in UTC
        hours = itertools.product(set(map(_HOUR, values)), offsets)
    else:
        hours = set(zip(map(_HOUR, values), map(_OFFSET, values), strict=True))
    for hour, offset in hours:
        text = f"{hour}:00:00{offset}"
        try:
            if not _plain_iso(text) or not _local_hour(dt.datetime.fromisoformat(text)):
                return None
        except ValueError:
            return None
    return [v[:10] + " " + v[11:19] for v in values]


def _local_hour(when: dt.datetime) -> bool:
    """Whether local time has the UTC offset of ``when`` throughout its hour."""
    offset = when.utcoffset()
    if offset is None:
        return False
    start = when.replace(minute=0, second=0, microsecond=0).timestamp()
    try:
        first, last = time.localtime(start).tm_gmtoff, time.localtime(start + 3599).tm_gmtoff
    except (OverflowError, OSError):
        return False
    return first == last == offset.total_seconds()


def _plain_iso(text: str) -> bool:
    """Whether a date's text is ``YYYY-MM-DDTHH:MM:SS[.ffffff]+HH:MM`` (hours 00-23)."""
    return text[4:17:3] == "--T::" and text[11:13] < "24" and text[-6] in "+-" and text[-3] == ":"


def _duration_cells(values: list[Any]) -> list[str]:
    """``duration_s`` as :func:`duration_text` writes it: under a minute at C speed, a
    longer one (whole seconds) formatted once per length."""
    short = "{:.1f}s".format
    long: dict[int, str] = {}
    out = []
    for v in values:
        if type(v) is not float or not -math.inf < v < math.inf:
            out.append(duration_text(v))
        elif v < 60:
            out.append(short(v))
        else:
            seconds = round(v)
            text = long.get(seconds)
            if text is None:
                text = long[seconds] = duration_text(v)
            out.append(text)
    return out


def _sweep_cell(sweep: Any) -> str:
    """``"<sweep id> k/n"`` shortened to the id's first 6 digits, as ``xp ls`` shows ids."""
    if not sweep or sweep is ABSENT:
        return ""
    sweep_id, _, point = str(sweep).partition(" ")
    return f"{sweep_id[:6]} {point}"


def _short_names(keys: list[str]) -> list[str]:
    """``config.lr`` -> ``lr`` and ``metrics.acc`` -> ``acc`` unless two would collide."""
    short = [k.split(".", 1)[1] for k in keys]
    clash = {s for s in short if short.count(s) > 1}
    return [k if s in clash else s for k, s in zip(keys, short, strict=True)]
