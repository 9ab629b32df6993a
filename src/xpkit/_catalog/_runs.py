"""Finding runs: ``xp.runs(...)`` collections and ``resolve_run`` for one ``RUN`` argument.

Run directories are found by their ``run.lock`` below the results directory (or the paths
and globs given); ``latest`` links are not followed, so no run is listed twice, and the
inside of a run directory is never walked. Heads of run.lock files come from
:class:`~xpkit._runindex.RunIndex`, so listing unchanged runs parses no YAML.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from .._core._config import flatten
from .._core._paths import LATEST, LOCK, RunPaths, latest_link
from .._core._settings import Settings, load_settings
from ..errors import (
    AmbiguousRunError,
    ExpressionError,
    LockError,
    RunNotFoundError,
    missing_extra,
)
from ._run import Run
from ._runindex import RunIndex
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
    settings = settings or load_settings()
    found = Runs.load(find_run_dirs(path_or_glob, settings=settings), settings=settings)
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
    if path_or_glob is None:
        tops = [str(settings.results_path)]
    elif isinstance(path_or_glob, (str, os.PathLike)):
        tops = _expand(path_or_glob)
    else:
        tops = [t for p in path_or_glob for t in _expand(p)]
    found: list[str] = []
    seen: set[str] = set()
    for top in tops:
        if os.path.isfile(os.path.join(top, LOCK)):
            _add(top, found, seen)
        else:
            _walk(top, found, seen)
    return found


def _expand(path: PathLike) -> list[str]:
    text = os.fspath(path)
    if os.path.exists(text):
        return [os.path.abspath(text)]
    if glob.has_magic(text):
        return [os.path.abspath(p) for p in sorted(glob.glob(text))]
    msg = f"{text}: no such run directory or directory of runs"
    raise RunNotFoundError(msg)


def _add(run_dir: str, found: list[str], seen: set[str], real: str | None = None) -> None:
    real = real or os.path.realpath(run_dir)
    if real not in seen:
        seen.add(real)
        found.append(run_dir)


# MLflow's artifact stores (the default one lives under results/) hold copies of run.lock
_NOT_RUNS = frozenset({"mlartifacts", "mlruns"})


def _walk(top: str, found: list[str], seen: set[str], real: str | None = None) -> None:
    """Collect run directories below ``top``; ``real`` is its resolved path when known."""
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError:
        return
    real = real or os.path.realpath(top)
    subdirs: list[tuple[str, str]] = []
    for entry in entries:
        if entry.name == LOCK and entry.is_file():
            _add(top, found, seen, real)
            return  # never walk the inside of a run directory
        if entry.name.startswith(".") or (entry.name == LATEST and entry.is_symlink()):
            continue
        if entry.name in _NOT_RUNS:
            continue
        if entry.is_dir():
            # realpath only across symlinks (a run linked from a store): it costs a syscall
            # per path component
            link = entry.is_symlink()
            sub_real = os.path.realpath(entry.path) if link else os.path.join(real, entry.name)
            subdirs.append((entry.path, sub_real))
    if real in seen:
        return  # a symlink loop
    seen.add(real)
    for sub, sub_real in subdirs:
        if os.path.isfile(os.path.join(sub, LOCK)):
            _add(sub, found, seen, sub_real)  # a run: one stat, no listing of its files
        else:
            _walk(sub, found, seen, sub_real)


def _index(settings: Settings) -> RunIndex:
    results = settings.results_path
    return RunIndex(results / ".xpkit" / "runs.marshal" if results.is_dir() else None)


class Runs(Sequence[Run]):
    """An ordered collection of runs: filter, sort, limit, iterate, or make a DataFrame.

    Each operation returns a new collection. ``skipped`` lists one message per run.lock
    that could not be read (corrupt, truncated, foreign or from a newer xpkit).
    """

    def __init__(self, items: Iterable[Run], *, skipped: Sequence[str] = ()) -> None:
        self._runs = list(items)
        self.skipped = list(skipped)
        self._records: dict[Run, dict[str, Any]] = {}

    @classmethod
    def load(cls, run_dirs: Iterable[str], *, settings: Settings | None = None) -> Runs:
        """Read the run.lock head of each directory; unreadable ones go to ``skipped``."""
        index = _index(settings or load_settings())
        found: list[Run] = []
        skipped: list[str] = []
        for run_dir in run_dirs:
            try:
                head = index.head(os.path.join(run_dir, LOCK))
            except LockError as e:
                skipped.append(str(e))
                continue
            found.append(Run(run_dir, _head=head))
        index.save()
        return cls(found, skipped=skipped)

    def _derive(self, items: Iterable[Run]) -> Runs:
        out = Runs(items, skipped=self.skipped)
        out._records = self._records
        return out

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(self._runs)

    @overload
    def __getitem__(self, i: int) -> Run: ...

    @overload
    def __getitem__(self, i: slice) -> Runs: ...

    def __getitem__(self, i: int | slice) -> Run | Runs:
        if isinstance(i, slice):
            return self._derive(self._runs[i])
        return self._runs[i]

    def __repr__(self) -> str:
        return f"<Runs: {len(self)} runs>"

    def record(self, run: Run) -> dict[str, Any]:
        """The flat record of ``run`` (see :func:`run_record`), computed once."""
        rec = self._records.get(run)
        if rec is None:
            rec = self._records[run] = run_record(run)
        return rec

    def records(self) -> list[dict[str, Any]]:
        """One flat record per run, as ``xp ls --format json`` prints them."""
        return [self.record(r) for r in self._runs]

    def where(self, test: str | Callable[[Run], bool]) -> Runs:
        """The runs for which ``test`` (an expression or a predicate) holds.

        Raises:
            ExpressionError: ``test`` is an invalid expression.
        """
        if isinstance(test, str):
            check = compile_where(test, self._keys())
            return self._derive(r for r in self._runs if check(self.record(r)))
        return self._derive(r for r in self._runs if test(r))

    def sort(self, key: str | Callable[[Run], Any] = "-started", *, reverse: bool = False) -> Runs:
        """Sorted by a field (``-`` first for descending) or a key function; missing last.

        Raises:
            ExpressionError: ``key`` is not a known field.
        """
        if callable(key):
            return self._derive(sorted(self._runs, key=key, reverse=reverse))
        descending = key.startswith("-") != reverse
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
        values = [(self._sort_value(r, name), r) for r in self._runs]
        present = [(v, r) for v, r in values if v is not None]
        present.sort(key=lambda pair: pair[0], reverse=descending)
        missing = [r for v, r in values if v is None]
        return self._derive([r for _, r in present] + missing)

    def _sort_value(self, run: Run, name: str) -> tuple[int, float, str] | None:
        if name == "started":
            started = run.started
            return None if started is None else (0, started.timestamp(), "")
        value = self.record(run).get(name)
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (0, float(value), "")
        return (1, 0.0, str(value))

    def _keys(self) -> set[str]:
        """Every record key of these runs (for ``lr`` to stand for ``config.lr``)."""
        return set().union(*map(self.record, self._runs))

    def limit(self, n: int) -> Runs:
        """The first ``n`` runs."""
        return self._derive(self._runs[: max(n, 0)])

    def data_changed(self) -> set[Run]:
        """Runs whose data hashes differ from those of the previous run of the same stage."""
        by_stage: dict[str, list[Run]] = {}
        for run in self._runs:
            by_stage.setdefault(run.stage, []).append(run)
        changed: set[Run] = set()
        for group in by_stage.values():
            group.sort(key=lambda r: self._sort_value(r, "started") or (0, 0.0, ""))
            for before, after in itertools.pairwise(group):
                a, b = _data_hashes(before), _data_hashes(after)
                if a and b and a != b:
                    changed.add(after)
        return changed

    def to_pandas(self) -> pandas.DataFrame:
        """A DataFrame, one row per run: the fields, ``config.*`` and ``metrics.*`` columns.

        Numbers stay numbers (int64/float64 columns) and ``started`` is a datetime.
        """
        try:
            import pandas as pd
        except ImportError:
            raise missing_extra("pandas", "pandas") from None
        records = self.records()
        columns = list(BASE_COLUMNS)
        known = set(columns)
        for rec in records:
            for key in rec:
                if key not in known:
                    known.add(key)
                    columns.append(key)
        frame = pd.DataFrame.from_records(records, columns=columns)
        frame["started"] = pd.to_datetime(frame["started"], utc=True, format="ISO8601")
        for name in columns[len(BASE_COLUMNS) :]:
            kind = _nullable_kind([rec.get(name) for rec in records])
            if kind is not None:
                frame[name] = frame[name].astype(kind)
        return frame


def _nullable_kind(values: list[Any]) -> str | None:
    """``Int64``/``boolean`` for ints/bools with gaps (pandas would make floats/objects)."""
    present = [v for v in values if v is not None]
    if len(present) == len(values) or not present:
        return None
    if all(isinstance(v, bool) for v in present):
        return "boolean"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "Int64"
    return None


def run_record(run: Run) -> dict[str, Any]:
    """A run as one flat mapping: ``id, stage, dir, status, started, duration_s, commit``,
    then ``config.<dotted.key>`` and ``metrics.<name>``."""
    lock = run._brief
    record: dict[str, Any] = {
        "id": lock.id,
        "stage": lock.stage,
        "dir": lock.dir,
        "status": run.status,
        "started": lock.started or None,
        "duration_s": run.duration_s,
        "commit": run.commit,
    }
    sweep = lock.extra.get("sweep")
    if isinstance(sweep, Mapping) and "id" in sweep:  # a point of a grid: "<sweep id> k/n"
        record["sweep"] = f"{sweep['id']} {int(sweep.get('point', 0)) + 1}/{sweep.get('total')}"
    flatten(lock.config, "config.", into=record)
    for name, value in (lock.metrics or {}).items():
        record[f"metrics.{name}"] = value
    return record


def _data_hashes(run: Run) -> dict[str, Any]:
    data = run._brief.data or {}
    return {k: v.get("hash") if isinstance(v, Mapping) else v for k, v in data.items()}


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
        index = _index(settings)
        for run_dir in find_run_dirs(None, settings=settings):
            try:
                head = index.head(os.path.join(run_dir, LOCK))
            except LockError:
                continue
            if head.id == prefix:
                return Run(run_dir, _head=head)
            if head.id.startswith(prefix):
                matches.append(Run(run_dir, _head=head))
        index.save()
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
