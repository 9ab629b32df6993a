"""Finding runs: ``xp.runs(...)`` collections and ``resolve_run`` for one ``RUN`` argument.

Run directories are found by their ``run.lock`` below the results directory (or the paths
and globs given); ``latest`` links are not followed, so no run is listed twice, and the
inside of a run directory is never walked: one stat per run, which also tells the run
index whether its cached head still holds. Heads of run.lock files come from
:class:`~xpkit._catalog._runindex.RunIndex` as columns, so listing unchanged runs parses no
YAML and makes no object per run; a :class:`Run` is made for a run only when asked for.
"""

from __future__ import annotations

import bisect
import datetime as dt
import glob
import itertools
import math
import os
import stat as stat_module
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from .._core._lock import RunLock
from .._core._paths import LATEST, LOCK, RunPaths, latest_link
from .._core._settings import Settings, load_settings
from ..errors import (
    AmbiguousRunError,
    ExpressionError,
    RunNotFoundError,
    missing_extra,
)
from ._run import Run
from ._runindex import Found, RunIndex, Stamp, lock_stamp
from ._table import ABSENT, Coded, HeadTable, data_hashes, head_record, take
from ._where import (
    FIELDS,
    closest_keys,
    compile_where,
    known_field,
    resolve_field,
    unknown_key,
)

if TYPE_CHECKING:
    import pandas

__all__ = [
    "Runs",
    "find_run_dirs",
    "resolve_run",
    "resolve_runs",
    "run_record",
    "runs",
]

PathLike = str | os.PathLike[str]
BASE_COLUMNS = ("id", "stage", "dir", "status", "started", "duration_s", "commit")


def runs(
    path_or_glob: PathLike | Sequence[PathLike] | None = None,
    *,
    where: str | Callable[[Run], bool] | None = None,
    sort: str | Callable[[Run], Any] = "-started",
    limit: int | None = None,
    settings: Settings | None = None,
) -> Runs:
    """The runs below the results directory, or below/at the paths or globs given.

    Args:
        path_or_glob: run directories, directories holding runs, or globs of them
            (default: every run under the project's results directory).
        where: an expression (``"config.lr > 0.01 and status == completed"``) or a
            predicate on :class:`Run`.
        sort: a field (``started``, ``config.lr``, ``metrics.acc``...), ``-`` first for
            descending; default newest first.
        limit: keep at most this many runs (after sorting).

    Returns:
        A :class:`Runs`; unreadable run.lock files are left out and described in
        ``Runs.skipped``.

    Example:
        >>> df = xp.runs("results/train", where="metrics.acc > 0.9").to_pandas()  # doctest: +SKIP
    """
    found = Runs.find(path_or_glob, settings=settings or load_settings())
    if where is not None:
        found = found.where(where)
    found = found.sort(sort)
    return found.limit(limit) if limit is not None else found


def find_run_dirs(
    path_or_glob: PathLike | Sequence[PathLike] | None = None, *, settings: Settings
) -> list[str]:
    """Run directories (holding a run.lock) at or below each path or glob, without duplicates.

    Raises:
        RunNotFoundError: a path (not a glob) does not exist.
    """
    return _find(path_or_glob, settings=settings).dirs()


def _find(
    path_or_glob: PathLike | Sequence[PathLike] | None = None, *, settings: Settings
) -> Found:
    if path_or_glob is None:
        tops = [str(settings.results_path)]
    elif isinstance(path_or_glob, (str, os.PathLike)):
        tops = _expand(path_or_glob)
    else:
        tops = [t for p in path_or_glob for t in _expand(p)]
    walk = _Walk(overlapping=len(tops) > 1)
    for top in tops:
        walk.walk(top)
    return walk.runs()


def _lock_stamp(lock: str) -> Stamp | None:
    """The stamp of a run.lock that is a file (following links), else None."""
    try:
        st = os.stat(lock)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    return lock_stamp(st) if stat_module.S_ISREG(st.st_mode) else None


def _expand(path: PathLike) -> list[str]:
    text = os.fspath(path)
    if os.path.exists(text):
        return [os.path.abspath(text)]
    if glob.has_magic(text):
        return [os.path.abspath(p) for p in sorted(glob.glob(text))]
    msg = f"{text}: no such run directory or directory of runs"
    raise RunNotFoundError(msg)


_FILE = stat_module.S_IFREG

# MLflow's artifact stores (the default one lives under results/) hold copies of run.lock
_NOT_RUNS = frozenset({"mlartifacts", "mlruns"})


class _Walk:
    """The runs below some directories, each once.

    A run is reached twice only through overlapping paths or a symbolic link to a directory
    (a run linked from a store); only then are runs told apart by their resolved paths,
    made after the walk from each run's resolved directory and its name, so that a walk of
    100,000 plain run directories builds no path per run. A directory already walked is not
    walked again (a symlink loop).
    """

    def __init__(self, *, overlapping: bool) -> None:
        self.found = Found()
        # per found run: the resolved directory holding it, or (True) its own resolved path
        self._where: list[tuple[str, bool]] = []
        self.linked = overlapping  # whether a run may have been reached twice
        self._walked: set[str] = set()  # resolved directories walked

    def add_run(self, run_dir: str, stamp: Stamp, real: str) -> None:
        """A run reached by its own path, which resolves to ``real``."""
        self.found.add_dir(run_dir, stamp)
        self._where.append((real, True))

    def runs(self) -> Found:
        """The runs found, the first of each resolved path when one may repeat."""
        if not self.linked:
            return self.found
        kept = Found()
        seen: set[str] = set()
        for (parent, name, stamp), (real, whole) in zip(
            self.found.runs(), self._where, strict=True
        ):
            resolved = real if whole else f"{real}{os.sep}{name}"
            if resolved not in seen:
                seen.add(resolved)
                kept.add(parent, [name], [stamp])
        return kept

    def walk(self, top: str, real: str | None = None) -> None:
        """Collect the runs below ``top``; ``real`` is its resolved path when known."""
        stamp = _lock_stamp(os.path.join(top, LOCK))
        if stamp is not None:
            self.add_run(top, stamp, real or os.path.realpath(top))
            return  # never walk the inside of a run directory
        real = real or os.path.realpath(top)
        if real in self._walked:
            return  # a symlink loop
        self._walked.add(real)
        names: list[str] = []
        links: dict[str, str] = {}  # symbolic links to directories (runs linked from a store)
        try:
            with os.scandir(top) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        names.append(entry.name)
                    elif entry.is_symlink() and entry.name != LATEST and entry.is_dir():
                        # realpath only across links: it costs a syscall per path component
                        links[entry.name] = os.path.realpath(entry.path)
        except OSError:
            return
        if links:
            self.linked = True
            names += links
        self._runs_or_walk(top, real, _visible(names), links)

    def _runs_or_walk(self, top: str, real: str, names: list[str], links: dict[str, str]) -> None:
        """Each subdirectory of ``top`` is a run (one stat of its run.lock, no listing of its
        files) or is walked. The stats are relative to ``top``: 100,000 of them are the
        bulk of a listing of unchanged runs."""
        try:
            fd = os.open(top, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        stat = os.stat
        relative_lock = os.sep + LOCK
        runs: list[str] = []
        stamps: list[Stamp] = []
        try:
            for name in names:
                try:
                    st = stat(name + relative_lock, dir_fd=fd)
                except (OSError, ValueError):  # ValueError: a NUL in the name
                    st = None
                if st is not None and st.st_mode & 0o170000 == _FILE and name not in links:
                    runs.append(name)
                    stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
                    continue
                self._add(top, real, runs, stamps)  # those before, in order
                runs, stamps = [], []
                run_dir = os.path.join(top, name)
                if st is None or st.st_mode & 0o170000 != _FILE:
                    self.walk(run_dir, links.get(name) or f"{real}{os.sep}{name}")
                else:
                    self.add_run(run_dir, lock_stamp(st), links[name])
        finally:
            os.close(fd)
        self._add(top, real, runs, stamps)

    def _add(self, top: str, real: str, names: list[str], stamps: list[Stamp]) -> None:
        """Runs ``names`` of ``top``, which resolves to ``real``."""
        self.found.add(top, names, stamps)
        self._where.extend([(real, False)] * len(names))


def _visible(names: list[str]) -> list[str]:
    """``names`` sorted, without hidden names and MLflow's artifact stores (found by
    bisection: a stage holds 100,000 runs)."""
    names.sort()
    del names[bisect.bisect_left(names, ".") : bisect.bisect_left(names, "/")]  # ".*"
    for name in _NOT_RUNS:
        at = bisect.bisect_left(names, name)
        if names[at : at + 1] == [name]:
            del names[at]
    return names


def _index(settings: Settings) -> RunIndex:
    results = settings.results_path
    return RunIndex(results / ".xpkit" / "runs.marshal" if results.is_dir() else None)


class _Store:
    """The table a collection's rows index, and the :class:`Run` of each row, made when
    first asked for (shared by a collection and those derived from it)."""

    def __init__(
        self,
        table: HeadTable,
        dirs: Callable[[], Iterable[tuple[int, str]]],
        heads: Callable[[int], RunLock | None],
        *,
        pending: list[Run] | None = None,
    ) -> None:
        self.table = table
        self._dir_pairs = dirs
        self._dirs: dict[int, str] | None = None
        self._heads = heads
        self._runs: dict[int, Run] = dict(enumerate(pending or ()))
        self._pending = pending

    @classmethod
    def of_runs(cls, runs: list[Run]) -> _Store:
        """A store of given runs, their records made when the table is first used."""
        dirs = [(i, str(run.dir)) for i, run in enumerate(runs)]
        return cls(HeadTable(), lambda: dirs, lambda row: None, pending=runs)

    def dir(self, row: int) -> str:
        """The run directory of a row."""
        if self._dirs is None:
            self._dirs = dict(self._dir_pairs())
        return self._dirs[row]

    def ready(self) -> HeadTable:
        """The table, once the records of given runs are in it."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            for run in pending:
                self.table.append(run_record(run), data_hashes(run._brief))
        return self.table

    def run(self, row: int) -> Run:
        run = self._runs.get(row)
        if run is None:
            run = self._runs[row] = Run(self.dir(row), _head=self._heads(row))
        return run

    def column(self, key: str, rows: Sequence[int]) -> list[Any]:
        """The values of ``key`` in ``rows`` (``ABSENT`` where a run has none)."""
        return take(self.ready().column(key), rows)

    def live(self, rows: Sequence[int]) -> None:
        """Record ``status`` and ``duration_s`` as ``Run`` reads them, for running rows: a
        dead process's run is ``interrupted``, a live one's duration is its age."""
        table = self.ready()
        status = table.column("status")
        if "running" not in status:
            return
        running = [r for r in rows if status[r] == "running"]
        status, duration = list(status), list(table.column("duration_s"))
        for row in running:
            run = self.run(row)
            status[row], duration[row] = run.status, run.duration_s
        self.table = table.replaced({"status": status, "duration_s": duration})


class Runs(Sequence[Run]):
    """An ordered collection of runs: filter, sort, limit, iterate, or make a DataFrame.

    Each operation returns a new collection. ``skipped`` lists one message per run.lock
    that could not be read (corrupt, truncated, foreign or from a newer xpkit). A
    collection keeps the runs' records as columns and makes a :class:`Run` only for the
    runs asked for.
    """

    def __init__(self, items: Iterable[Run] = (), *, skipped: Sequence[str] = ()) -> None:
        runs = list(items)
        self._store = _Store.of_runs(runs)
        self._rows = list(range(len(runs)))
        self.skipped = list(skipped)

    @classmethod
    def load(cls, run_dirs: Iterable[str], *, settings: Settings | None = None) -> Runs:
        """Read the run.lock head of each directory; unreadable ones go to ``skipped``."""
        found = Found()
        skipped: list[str] = []
        for run_dir in run_dirs:
            lock = os.path.join(run_dir, LOCK)
            try:
                stamp = lock_stamp(os.stat(lock))
            except OSError as e:
                skipped.append(f"{lock}: cannot read run.lock ({e.strerror})")
                continue
            found.add_dir(run_dir, stamp)
        loaded = cls._of(found, settings=settings or load_settings())
        loaded.skipped[:0] = skipped
        return loaded

    @classmethod
    def find(
        cls, path_or_glob: PathLike | Sequence[PathLike] | None = None, *, settings: Settings
    ) -> Runs:
        """The runs at or below each path or glob (as :func:`find_run_dirs`), unsorted.

        Raises:
            RunNotFoundError: a path (not a glob) does not exist.
        """
        return cls._of(_find(path_or_glob, settings=settings), settings=settings)

    @classmethod
    def _of(cls, found: Found, *, settings: Settings) -> Runs:
        """The runs found, their heads from the run index."""
        index = _index(settings)
        rows, skipped = index.lookup(found)
        index.save()
        dirs: Callable[[], Iterable[str]] = found.dirs
        if skipped:
            kept = [i for i, row in enumerate(rows) if row >= 0]
            rows = take(rows, kept)
            dirs = lambda: take(found.dirs(), kept)  # noqa: E731
        store = _Store(index.table, lambda: zip(rows, dirs(), strict=True), index.head_of)
        store.live(rows)
        return cls._view(store, rows, skipped)

    @classmethod
    def _view(cls, store: _Store, rows: list[int], skipped: Sequence[str]) -> Runs:
        out = cls.__new__(cls)
        out._store, out._rows, out.skipped = store, rows, list(skipped)
        return out

    def _derive(self, rows: list[int]) -> Runs:
        return Runs._view(self._store, rows, self.skipped)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Run]:
        return map(self._store.run, self._rows)

    @overload
    def __getitem__(self, i: int) -> Run: ...

    @overload
    def __getitem__(self, i: slice) -> Runs: ...

    def __getitem__(self, i: int | slice) -> Run | Runs:
        if isinstance(i, slice):
            return self._derive(self._rows[i])
        return self._store.run(self._rows[i])

    def __repr__(self) -> str:
        return f"<Runs: {len(self)} runs>"

    def record(self, run: Run) -> dict[str, Any]:
        """The flat record of ``run`` (see :func:`run_record`)."""
        if self._row_map is None:
            dirs = (os.path.abspath(self._store.dir(r)) for r in self._rows)
            self._row_map = dict(zip(map(Path, dirs), self._rows, strict=True))
        row = self._row_map.get(run.dir)
        return run_record(run) if row is None else self._store.ready().record(row)

    _row_map: dict[Path, int] | None = None

    def records(self) -> list[dict[str, Any]]:
        """One flat record per run, as ``xp ls --format json`` prints them."""
        return self._store.ready().records(self._rows)

    def _values(self, key: str) -> list[Any]:
        """The values of one record key, one per run (``ABSENT`` where a run has none);
        the list is shared: never change it."""
        order = self._order()
        values = self._columns.get(key)
        if values is None:
            column = self._store.ready().column(key)
            values = column[order] if order else take(column, self._rows)
            self._columns[key] = values
        return values

    _columns: dict[str, list[Any]]  # made by _order, as _codes
    _codes: dict[str, Coded | None]
    _sliced: tuple[slice | None] | None = None

    def _coded(self, key: str) -> Coded | None:
        """The values of one record key dictionary-coded, one code per run, when the
        column is held so (a config key's few values); shared like :meth:`_values`."""
        order = self._order()
        if key not in self._codes:
            coded = self._store.ready().dictionary(key)
            if coded is not None:
                coded = coded.take(self._rows) if order is None else coded.sliced(order)
            self._codes[key] = coded
        return self._codes[key]

    def _order(self) -> slice | None:
        """The slice of the table these runs are, when they are all of it in order or
        reversed (newest first of runs named by their start): copied in C."""
        if self._sliced is None:
            self._columns, self._codes = {}, {}
            self._sliced = (_order_of(self._rows, len(self._store.ready())),)
        return self._sliced[0]

    def where(self, test: str | Callable[[Run], bool]) -> Runs:
        """The runs for which ``test`` (an expression or a predicate) holds.

        Raises:
            ExpressionError: ``test`` is an invalid expression.
        """
        if isinstance(test, str):
            check = compile_where(test, self._keys())
            mask = check.mask(self._values, len(self._rows))
            return self._derive(list(itertools.compress(self._rows, mask)))
        return self._derive([row for row, run in zip(self._rows, self, strict=True) if test(run)])

    def sort(self, key: str | Callable[[Run], Any] = "-started", *, reverse: bool = False) -> Runs:
        """Sorted by a field (``-`` first for descending) or a key function; missing last.

        Raises:
            ExpressionError: ``key`` is not a known field.
        """
        if callable(key):
            pairs = sorted(
                zip(self, self._rows, strict=True), key=lambda p: key(p[0]), reverse=reverse
            )
            return self._derive([row for _, row in pairs])
        descending = key.startswith("-") != reverse
        name = self._sort_field(key)
        values = _sort_values(self._values(name), name)
        if None not in values:  # every run has the field (a C scan)
            order = sorted(range(len(values)), key=values.__getitem__, reverse=descending)
            return self._derive(take(self._rows, order))
        present = [i for i, v in enumerate(values) if v is not None]
        present.sort(key=values.__getitem__, reverse=descending)
        missing = [i for i, v in enumerate(values) if v is None]
        return self._derive(take(self._rows, present + missing))

    def _sort_field(self, key: str) -> str:
        keys = self._keys()
        name = resolve_field(key.lstrip("-"), keys) or key.lstrip("-")
        if name not in FIELDS and not name.startswith(("config.", "metrics.")):
            fields = ", ".join(FIELDS)
            close = ", ".join(closest_keys(name, keys))
            msg = (
                f"bad sort key {key!r}: use {fields}, config.KEY or metrics.NAME "
                f"('-' first for descending){f'; closest: {close}' if close else ''}"
            )
            raise ExpressionError(msg)
        if keys and not known_field(name, keys):
            msg = f"bad sort key {key!r}: {unknown_key(name, keys)}"
            raise ExpressionError(msg)
        return name

    def _keys(self) -> set[str]:
        """Every record key of these runs (for ``lr`` to stand for ``config.lr``)."""
        return self._store.ready().keys(self._rows)

    def limit(self, n: int) -> Runs:
        """The first ``n`` runs."""
        return self._derive(self._rows[: max(n, 0)])

    def _key_order(self) -> list[str]:
        """Every record key of these runs, in the order the records first have them."""
        table = self._store.ready()
        shapes = dict.fromkeys(take(table.shape, self._rows))
        return list(dict.fromkeys(k for s in shapes for k in table.shapes[s]))

    def _with_data(self) -> bool:
        """Whether any of these runs tracks data."""
        return any(take(self._store.ready().data, self._rows))

    def data_changed(self) -> set[Run]:
        """Runs whose data hashes differ from those of the previous run of the same stage."""
        return {self._store.run(row) for row in self._data_changed_rows()}

    def _data_changed_rows(self) -> set[int]:
        table = self._store.ready()
        hashes = take(table.data, self._rows)
        if not any(hashes):
            return set()
        stages = self._values("stage")
        started = _sort_values(self._values("started"), "started")
        by_stage: dict[str, list[int]] = {}
        for i, stage in enumerate(stages):
            by_stage.setdefault(stage, []).append(i)
        changed: set[int] = set()
        for group in by_stage.values():
            group.sort(key=lambda i: started[i] or 0.0)
            for before, after in itertools.pairwise(group):
                a, b = hashes[before], hashes[after]
                if a and b and a != b:
                    changed.add(self._rows[after])
        return changed

    def to_pandas(self) -> pandas.DataFrame:
        """A DataFrame, one row per run: the fields, ``config.*`` and ``metrics.*`` columns.

        Numbers stay numbers (int64/float64 columns) and ``started`` is a datetime.
        """
        try:
            import pandas as pd
        except ImportError:
            raise missing_extra("pandas", "pandas") from None
        names = dict.fromkeys([*BASE_COLUMNS, *self._key_order()])
        data = {name: self._frame_data(name) for name in names}
        frame = pd.DataFrame({name: column for name, (column, _) in data.items()})
        frame["started"] = pd.to_datetime(frame["started"], utc=True, format="ISO8601")
        for name in list(names)[len(BASE_COLUMNS) :]:
            kind = data[name][1]
            if kind is not None:
                frame[name] = frame[name].astype(kind)
        return frame

    def _frame_data(self, key: str) -> tuple[Any, str | None]:
        """The column of ``key`` for pandas (see :func:`_frame_column`); a coded column of
        ints or floats is one numpy take of its values by its codes."""
        coded = self._coded(key)
        if coded is not None:
            made = _frame_coded(coded)
            if made is not None:
                return made, None
        return _frame_column(self._values(key))


def _frame_coded(coded: Coded) -> Any:
    """A coded column of ints only or floats only as a numpy array, else None."""
    import numpy as np

    present = coded.present()
    kinds = {type(coded.values[code]) for code in present}
    dtype = {int: np.int64, float: np.float64}.get(kinds.pop()) if len(kinds) == 1 else None
    if dtype is None:
        return None
    values = np.zeros(len(coded.values), dtype=dtype)
    try:
        values[present] = [coded.values[code] for code in present]
    except OverflowError:  # an int beyond int64: objects, as _frame_column keeps them
        return None
    codes = coded.codes
    return values[np.frombuffer(codes, np.uint8) if type(codes) is bytes else np.asarray(codes)]


def _order_of(rows: list[int], n: int) -> slice | None:
    """The slice of a table of ``n`` rows that ``rows`` are, when they are all of them in
    order or in reverse (newest first of runs named by their start): a copy in C."""
    if len(rows) != n or not rows:
        return None
    if rows[0] == 0 and rows == list(range(n)):
        return slice(None)
    if rows[0] == n - 1 and rows == list(range(n - 1, -1, -1)):
        return slice(None, None, -1)
    return None


def _sort_values(values: list[Any], name: str) -> list[Any]:
    """Sort keys of a column: a number's value, a text after every number, None for none."""
    if name == "started":
        try:  # ISO dates, as xpkit writes them: at C speed
            return list(map(dt.datetime.timestamp, map(dt.datetime.fromisoformat, values)))
        except (TypeError, ValueError, OverflowError, OSError):
            return list(map(_timestamp, values))
    kinds = set(map(type, values)) - {type(None), type(ABSENT)}
    if kinds <= {int, float}:
        return [None if v is None or v is ABSENT else v for v in values]
    return list(map(_sort_value, values))


def _sort_value(value: Any) -> tuple[int, float, str] | None:
    if value is None or value is ABSENT:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _timestamp(value: Any) -> float | None:
    """When a run started, as ``Run.started`` reads it (None when not a date)."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _frame_column(values: list[Any]) -> tuple[Any, str | None]:
    """A column for pandas, as ``DataFrame.from_records`` would make it from records (a key
    a run does not have is NaN), and the nullable dtype it takes: ``Int64``/``boolean`` for
    ints/bools with gaps (pandas would make floats/objects). Whole columns of ints or floats
    go to numpy at once."""
    import numpy as np

    kinds = set(map(type, values))
    if kinds == {int}:
        try:
            return np.array(values, dtype=np.int64), None
        except OverflowError:
            return values, None
    if kinds == {float}:
        return np.array(values, dtype=np.float64), None
    gaps = kinds & {type(None), type(ABSENT)}
    column = [math.nan if v is ABSENT else v for v in values] if type(ABSENT) in gaps else values
    present = kinds - gaps
    if not gaps or not present:
        return column, None
    if present == {bool}:
        return column, "boolean"
    if present == {int}:
        return column, "Int64"
    return column, None


def run_record(run: Run) -> dict[str, Any]:
    """A run as one flat mapping: ``id, stage, dir, status, started, duration_s, commit``,
    then ``config.<dotted.key>`` and ``metrics.<name>``."""
    record = head_record(run._brief)
    record.update(status=run.status, duration_s=run.duration_s)
    return record


def resolve_run(spec: PathLike | Run, *, settings: Settings | None = None) -> Run:
    """The run named by ``spec``: a run directory, a ``latest`` link, a run.lock file, a
    unique run id prefix, or a stage name (its latest run) under the results directory.

    Raises:
        AmbiguousRunError: an id prefix matches several runs (they are listed).
        RunNotFoundError: nothing matches.
    """
    if isinstance(spec, Run):
        return spec
    settings = settings or load_settings()
    text = os.fspath(spec)
    if not text:
        msg = "empty run: give a run directory or a run id prefix"
        raise RunNotFoundError(msg)
    for candidate in dict.fromkeys((Path(text), settings.resolve(text))):
        if candidate.name == LOCK and candidate.is_file():
            candidate = candidate.parent
        if RunPaths(candidate).lock.is_file():
            return Run(candidate)
        if candidate.exists():
            msg = f"{text}: not a run directory (it has no run.lock)"
            raise RunNotFoundError(msg)
    return _by_id(text, settings)


def resolve_runs(specs: Iterable[PathLike | Run], *, settings: Settings | None = None) -> list[Run]:
    """The runs named by ``specs``, each once: what :func:`resolve_run` accepts, or a
    directory of runs (a stage's) meaning every run below it.

    Raises:
        AmbiguousRunError: an id prefix matches several runs.
        RunNotFoundError: a spec matches no run.
    """
    settings = settings or load_settings()
    found: dict[str, Run] = {}
    for spec in specs:
        for run in _runs_of(spec, settings):
            found.setdefault(os.path.realpath(run.dir), run)
    return list(found.values())


def _runs_of(spec: PathLike | Run, settings: Settings) -> list[Run]:
    if isinstance(spec, Run):
        return [spec]
    text = os.fspath(spec)
    for candidate in dict.fromkeys((Path(text), settings.resolve(text))) if text else ():
        if candidate.is_dir() and not RunPaths(candidate).lock.is_file():
            dirs = find_run_dirs(candidate, settings=settings)
            if not dirs:
                msg = f"no run directory (with a run.lock) at or below {text}"
                raise RunNotFoundError(msg)
            return [Run(d) for d in dirs]
    return [resolve_run(text, settings=settings)]


def _by_id(prefix: str, settings: Settings) -> Run:
    matches: list[Run] = []
    if "/" not in prefix and os.sep not in prefix:
        found = Runs._of(_find(None, settings=settings), settings=settings)
        ids = found._values("id")
        if prefix in ids:
            return found[ids.index(prefix)]
        matches = [found[i] for i, run_id in enumerate(ids) if run_id.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(f"{r.id} ({r.stage}, {r._brief.dir})" for r in matches[:6])
        more = f" and {len(matches) - 6} more" if len(matches) > 6 else ""
        msg = (
            f"run id prefix {prefix!r} matches {len(matches)} runs: {shown}{more}; "
            "give more characters"
        )
        raise AmbiguousRunError(msg)
    latest = latest_link(settings.results_path / prefix)
    if "/" not in prefix and RunPaths(latest).lock.is_file():
        return Run(latest)
    msg = (
        f"no run matches {prefix!r}: not a run directory, nor a run id prefix or stage name "
        f"under {settings.relative(settings.results_path)}/"
    )
    raise RunNotFoundError(msg)
