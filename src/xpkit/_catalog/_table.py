"""Many run heads as columns: one list per record key, no Python object per run.

A listing of 100,000 runs filters, sorts and prints a few columns of 100,000 values each;
built as one dict per run it spends most of its time making and reading dicts. A
:class:`HeadTable` keeps each record key (``id``, ``status``, ``config.lr``,
``metrics.acc``...) as one list indexed by row, :data:`ABSENT` where a run does not have
the key, and each row's key order (its *shape*) so that a row turns back into exactly the
record :func:`head_record` made. Every value is one ``marshal`` can store, so the run index
keeps a table on disk as it is.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._core._flat import flatten
from .._core._lock import RunLock

__all__ = ["ABSENT", "HeadTable", "data_hashes", "head_commit", "head_record", "take"]

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


@dataclass
class HeadTable:
    """Records of many runs by column; rows are only ever appended.

    ``columns[key][row]`` is the value of ``key`` in that row's record, :data:`ABSENT` when
    the run has no such key; ``shapes[shape[row]]`` is the row's keys in its record's order;
    ``data[row]`` its data hashes (:func:`data_hashes`). A column may be shorter than the
    table while rows are appended: :meth:`column` pads it.
    """

    columns: dict[str, list[Any]] = field(default_factory=dict)
    shapes: list[tuple[str, ...]] = field(default_factory=list)
    shape: list[int] = field(default_factory=list)
    data: list[dict[str, Any] | None] = field(default_factory=list)
    _shape_ids: dict[tuple[str, ...], int] = field(default_factory=dict, repr=False)

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
            return [ABSENT] * len(self)
        if len(values) < len(self):
            values.extend([ABSENT] * (len(self) - len(values)))
        return values

    def keys(self, rows: Iterable[int]) -> set[str]:
        """Every record key of these rows."""
        return set().union(*(self.shapes[s] for s in set(take(self.shape, list(rows)))))

    def record(self, row: int) -> dict[str, Any]:
        """The record of one row, as :func:`head_record` made it."""
        return {key: self.column(key)[row] for key in self.shapes[self.shape[row]]}

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

    def subset(self, rows: Sequence[int]) -> HeadTable:
        """A new table of ``rows``, in that order, without the keys none of them has."""
        old_shapes = take(self.shape, rows)
        kept = sorted(set(old_shapes))
        renumber = {old: new for new, old in enumerate(kept)}
        shapes = [self.shapes[s] for s in kept]
        keys = set().union(*shapes)
        return HeadTable(
            columns={k: take(self.column(k), rows) for k in self.columns if k in keys},
            shapes=shapes,
            shape=[renumber[s] for s in old_shapes],
            data=take(self.data, rows),
        )
