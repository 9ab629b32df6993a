"""Many run heads as columns: one list per record key, no Python object per run.

A listing of 100,000 runs filters, sorts and prints a few columns of 100,000 values each;
built as one dict per run it spends most of its time making and reading dicts. A
:class:`HeadTable` keeps each record key (``id``, ``status``, ``config.lr``,
``metrics.acc``...) as one list indexed by row, :data:`ABSENT` where a run does not have
the key, or, when its values repeat (a config key), as a :class:`Coded` column; and each
row's key order (its *shape*) so that a row turns back into exactly the record
:func:`head_record` made. Every value is one ``marshal`` can store, so the run index keeps
a table on disk as it is.
"""

from __future__ import annotations

import array
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._core._flat import flatten
from .._core._lock import RunLock

__all__ = ["ABSENT", "Coded", "HeadTable", "data_hashes", "head_commit", "head_record", "take"]

# the value of a key a run does not have: marshal stores Ellipsis, and no YAML value is it
ABSENT: Any = ...


def head_record(lock: RunLock) -> dict[str, Any]:
    """A head as one flat record: ``id, stage, dir, status, started, duration_s, commit``,
    ``sweep`` for a point of a grid, then ``config.<dotted.key>`` and ``metrics.<name>``.

    ``status`` and ``duration_s`` are as recorded (``Run`` reads a dead ``running`` run as
    ``interrupted``); ``duration_s`` is a float.
    """
    duration = lock.duration_s
    record: dict[str, Any] = {
        "id": lock.id,
        "stage": lock.stage,
        "dir": lock.dir,
        "status": lock.status,
        "started": lock.started or None,
        "duration_s": None if duration is None else float(duration),
        "commit": head_commit(lock),
    }
    sweep = lock.extra.get("sweep")
    if isinstance(sweep, Mapping) and "id" in sweep:  # a point of a grid: "<sweep id> k/n"
        record["sweep"] = f"{sweep['id']} {int(sweep.get('point', 0)) + 1}/{sweep.get('total')}"
    flatten(lock.config, "config.", into=record)
    for name, value in (lock.metrics or {}).items():
        record[f"metrics.{name}"] = value
    return record


def head_commit(lock: RunLock) -> str | None:
    """The commit of the run's code snapshot (``src.commit``), or None."""
    src = lock.src
    commit = src.get("commit") if isinstance(src, Mapping) else None
    return commit if isinstance(commit, str) and commit else None


def data_hashes(lock: RunLock) -> dict[str, Any] | None:
    """``{name: hash}`` of the run's tracked data, or None when it tracks none."""
    data = lock.data or {}
    hashes = {str(k): v.get("hash") if isinstance(v, Mapping) else v for k, v in data.items()}
    return hashes or None


def take(values: Sequence[Any], rows: Sequence[int]) -> list[Any]:
    """``[values[i] for i in rows]`` at C speed."""
    if not rows:
        return []
    if len(rows) == 1:
        return [values[rows[0]]]
    return list(operator.itemgetter(*rows)(values))


# the types of values a column may be dictionary-coded with
_SCALARS = frozenset({str, int, float, bool, type(None), type(ABSENT)})
_NUMBERS = frozenset({int, float, bool})  # 1 == 1.0 == True: never two in one coded column
_CODED_MAX = 1 << 16  # distinct values of a coded column, at most


def _codable(kinds: set[type], distinct: Iterable[Any]) -> bool:
    """Whether values of these types, these distinct ones, can be one coded column."""
    if not kinds <= _SCALARS or len(kinds & _NUMBERS) > 1:
        return False
    return float not in kinds or 0.0 not in distinct


class Coded:
    """A column as its distinct values and, per row, the index of its value.

    A config key takes a handful of values across 100,000 runs: coded, it is a few values
    and 100,000 bytes, which load as one object, and a listing formats each value once.
    ``codes`` is ``bytes`` (fewer than 257 values) or a memoryview of 2-byte codes as
    loaded, a list once rows are appended. A coded column holds scalars only, and never two
    of the types whose values can be equal (1, 1.0, True), so that equal values are the
    same value; a float zero is never coded (0.0 == -0.0).
    """

    __slots__ = ("_ids", "_kinds", "codes", "values")

    def __init__(self, values: list[Any], codes: Sequence[int]) -> None:
        self.values = values
        self.codes = codes
        self._ids: dict[Any, int] | None = None  # made by the first append, with _kinds
        self._kinds: set[type] = set()

    @classmethod
    def of(cls, values: list[Any]) -> Coded | None:
        """``values`` coded, or None when they are not worth coding or cannot be."""
        n = len(values)
        if n < 64:
            return None
        kinds = set(map(type, values))
        if not kinds <= _SCALARS or len(set(values[:256])) > 64:  # values that do not repeat
            return None
        distinct = list(dict.fromkeys(values))  # a NaN is its own value
        if len(distinct) > min(_CODED_MAX, n // 2) or not _codable(kinds, distinct):
            return None
        ids = {v: i for i, v in enumerate(distinct)}
        return cls(distinct, [ids[v] for v in values])

    def decoded(self) -> list[Any]:
        values = self.values
        return [values[c] for c in self.codes]

    def append(self, value: Any) -> bool:
        """Add a row; False when ``value`` cannot be coded with the others."""
        if self._ids is None:
            self._ids = {v: i for i, v in enumerate(self.values)}
            self._kinds = set(map(type, self.values))
            self.codes = list(self.codes)
        kind = type(value)
        if kind not in self._kinds:
            if not _codable(self._kinds | {kind}, ()):
                return False
            self._kinds.add(kind)
        if kind is float and value == 0.0:
            return False
        code = self._ids.get(value)
        if code is None:
            if len(self.values) >= _CODED_MAX:
                return False
            code = self._ids[value] = len(self.values)
            self.values.append(value)
        self.codes.append(code)  # type: ignore[attr-defined]
        return True

    def present(self) -> list[int]:
        """The codes that occur (a few values: one search in C each)."""
        codes = self.codes
        if type(codes) is bytes and len(self.values) <= 32:
            return [code for code in range(len(self.values)) if bytes((code,)) in codes]
        return list(set(codes))

    def take(self, rows: Sequence[int]) -> Coded:
        """The column of ``rows``, in that order."""
        return Coded(self.values, take(self.codes, rows))

    def sliced(self, rows: slice) -> Coded:
        """The column of a slice of its rows (a copy in C)."""
        return Coded(self.values, self.codes[rows])

    def stored(self) -> tuple[list[Any], bytes, int]:
        """``(values, codes, bytes per code)`` as the run index stores them."""
        codes = self.codes
        if isinstance(codes, memoryview):
            codes = codes.tolist()
        if len(self.values) <= 256:
            return self.values, bytes(codes), 1
        return self.values, array.array("H", codes).tobytes(), 2

    @classmethod
    def loaded(cls, stored: Any, n: int) -> Coded | None:
        """A column :meth:`stored` wrote for ``n`` rows; None when it is not one."""
        if type(stored) is not tuple or len(stored) != 3:
            return None
        values, codes, size = stored
        if type(values) is not list or type(codes) is not bytes or len(codes) != n * size:
            return None
        if not values or len(values) > _CODED_MAX:
            return None
        if not _codable(set(map(type, values)), values):
            return None  # not a column this module codes
        if size == 1 and len(values) < 256:
            if codes.translate(None, bytes(range(len(values)))):
                return None  # a code beyond the values
        elif size == 2:
            view = memoryview(codes).cast("H")
            if n and max(view) >= len(values):
                return None
            return cls(values, view)
        elif size != 1:
            return None
        return cls(values, codes)


@dataclass
class HeadTable:
    """Records of many runs by column; rows are only ever appended.

    ``columns[key][row]`` is the value of ``key`` in that row's record, :data:`ABSENT` when
    the run has no such key, or ``coded[key]`` holds the column dictionary-coded;
    ``shapes[shape[row]]`` is the row's keys in its record's order; ``data[row]`` its data
    hashes (:func:`data_hashes`). A column may be shorter than the table while rows are
    appended: :meth:`column` pads it.
    """

    columns: dict[str, list[Any]] = field(default_factory=dict)
    shapes: list[tuple[str, ...]] = field(default_factory=list)
    shape: list[int] = field(default_factory=list)
    data: list[dict[str, Any] | None] = field(default_factory=list)
    coded: dict[str, Coded] = field(default_factory=dict)
    _shape_ids: dict[tuple[str, ...], int] = field(default_factory=dict, repr=False)
    _decoded: dict[str, list[Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._shape_ids = {keys: i for i, keys in enumerate(self.shapes)}

    def __len__(self) -> int:
        return len(self.shape)

    def append(self, record: Mapping[str, Any], data: dict[str, Any] | None) -> int:
        """Add one row; its index."""
        row = len(self.shape)
        keys = tuple(record)
        shape = self._shape_ids.get(keys)
        if shape is None:
            shape = self._shape_ids[keys] = len(self.shapes)
            self.shapes.append(keys)
        for key, value in record.items():
            coded = self.coded.get(key)
            if coded is not None:
                self._decoded.pop(key, None)
                while len(coded.codes) < row and coded.append(ABSENT):
                    pass
                if len(coded.codes) == row and coded.append(value):
                    continue
                self.columns[key] = coded.decoded()  # no longer codable: plain
                del self.coded[key]
            values = self.columns.setdefault(key, [])
            if len(values) < row:
                values.extend([ABSENT] * (row - len(values)))
            values.append(value)
        self.shape.append(shape)
        self.data.append(data)
        return row

    def column(self, key: str) -> list[Any]:
        """Every row's value of ``key`` (:data:`ABSENT` where a run has none)."""
        values = self.columns.get(key)
        if values is None:
            coded = self.coded.get(key)
            if coded is None:
                return [ABSENT] * len(self)
            values = self._decoded.get(key)
            if values is None:
                values = self._decoded[key] = coded.decoded()
        if len(values) < len(self):
            values.extend([ABSENT] * (len(self) - len(values)))
        return values

    def dictionary(self, key: str) -> Coded | None:
        """The column of ``key`` dictionary-coded, when it is held so and whole."""
        coded = self.coded.get(key)
        return coded if coded is not None and len(coded.codes) == len(self) else None

    def keys(self, rows: Iterable[int]) -> set[str]:
        """Every record key of these rows."""
        return set().union(*(self.shapes[s] for s in set(take(self.shape, list(rows)))))

    def record(self, row: int) -> dict[str, Any]:
        """The record of one row, as :func:`head_record` made it."""
        return {key: self.value(key, row) for key in self.shapes[self.shape[row]]}

    def value(self, key: str, row: int) -> Any:
        """The value of ``key`` in one row, no column decoded (:data:`ABSENT` when none)."""
        values = self.columns.get(key)
        if values is not None:
            return values[row] if row < len(values) else ABSENT
        coded = self.coded.get(key)
        if coded is None or row >= len(coded.codes):
            return ABSENT
        return coded.values[coded.codes[row]]

    def records(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """The records of ``rows``, built a shape at a time."""
        groups: dict[int, list[int]] = {}
        for i, shape in enumerate(take(self.shape, rows)):
            groups.setdefault(shape, []).append(i)
        out: list[dict[str, Any]] = [{}] * len(rows)
        for shape, where in groups.items():
            keys = self.shapes[shape]
            mine = take(rows, where)
            values = [take(self.column(key), mine) for key in keys]
            for i, row_values in zip(where, zip(*values, strict=True), strict=True):
                out[i] = dict(zip(keys, row_values, strict=True))
        return out

    def replaced(self, columns: Mapping[str, list[Any]]) -> HeadTable:
        """This table with some columns replaced by plain ones."""
        coded = {k: v for k, v in self.coded.items() if k not in columns}
        return HeadTable(
            columns={**self.columns, **columns},
            shapes=self.shapes,
            shape=self.shape,
            data=self.data,
            coded=coded,
        )

    def subset(self, rows: Sequence[int]) -> HeadTable:
        """A new table of ``rows``, in that order, without the keys none of them has;
        columns worth coding are coded."""
        old_shapes = take(self.shape, rows)
        kept = sorted(set(old_shapes))
        renumber = {old: new for new, old in enumerate(kept)}
        shapes = [self.shapes[s] for s in kept]
        keys = set().union(*shapes)
        columns: dict[str, list[Any]] = {}
        coded: dict[str, Coded] = {}
        for key in [*self.columns, *self.coded]:
            if key not in keys:
                continue
            was = self.dictionary(key)
            if was is not None:
                coded[key] = was.take(rows)
                continue
            values = take(self.column(key), rows)
            now = Coded.of(values)
            if now is None:
                columns[key] = values
            else:
                coded[key] = now
        return HeadTable(
            columns=columns,
            shapes=shapes,
            shape=[renumber[s] for s in old_shapes],
            data=take(self.data, rows),
            coded=coded,
        )
