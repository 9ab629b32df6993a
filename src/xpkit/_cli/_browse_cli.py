"""``xp show``, ``xp diff`` and ``xp lineage`` (and the output of ``xp ls``): browsing runs
from the shell.

Output is a rich table/tree with colours on a terminal (or with ``FORCE_COLOR`` set), plain
aligned text when piped (``NO_COLOR`` forces it); rich is imported only in the first case.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._catalog._run import Run
from .._catalog._runs import resolve_run
from .._core._flat import flatten
from .._core._progress import duration_text
from .._record._diff import (
    MISSING,
    Change,
    code_diff,
    config_changes,
    data_changes,
    env_changes,
    metric_changes,
)
from .._record._lineage import LineageNode, lineage, upstream_changes

__all__ = ["diff_command", "lineage_command", "show_command"]

_STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "running": "yellow",
    "interrupted": "magenta",
}


# -- output -------------------------------------------------------------------------------


class _Out:
    """Lines, tables and trees: rich on a terminal, plain text otherwise."""

    def __init__(self) -> None:
        self.console: Any = None
        if _want_color():
            try:
                from rich.console import Console
            except ImportError:
                return
            # piped with FORCE_COLOR: no terminal width to fit, so do not cut lines
            width = None if sys.stdout.isatty() else 100_000
            self.console = Console(highlight=False, force_terminal=True, width=width)

    def line(self, text: str = "", style: str | None = None) -> None:
        if self.console is None:
            sys.stdout.write(text + "\n")
        else:
            from rich.markup import escape

            self.console.print(escape(text), style=style)

    def table(
        self,
        columns: Sequence[Column],
        *,
        styles: Sequence[Callable[[str], str | None] | None] = (),
    ) -> None:
        """Columns of cells under their headers."""
        if self.console is None:
            for text in _plain_table(columns):
                sys.stdout.write(text)
            return
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in columns:
            table.add_column(column.header, no_wrap=True, overflow="fold")
        for row in zip(*(c.cells for c in columns), strict=True):
            cells = []
            for i, cell in enumerate(row):
                pick = styles[i] if i < len(styles) else None
                style = pick(cell) if pick is not None else None
                cells.append(f"[{style}]{_escape(cell)}[/]" if style else _escape(cell))
            table.add_row(*cells)
        self.console.print(table)


def _want_color() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or sys.stdout.isatty()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@dataclass(frozen=True)
class Column:
    """A column of a table: its header and cells; ``width`` when every cell is already
    padded to it (a plain table pads the others)."""

    header: str
    cells: Sequence[str]
    width: int | None = None


def _plain_table(columns: Sequence[Column], *, rows_at_once: int = 4096) -> Iterator[str]:
    """Aligned columns, two spaces apart, no trailing spaces: the header line, then the
    text of a few thousand lines at a time (the lines of 100,000 runs at once would take
    memory)."""
    padded = [_padded(c) for c in columns[:-1]]
    heads = [c.header.ljust(width) for c, (width, _) in zip(columns, padded, strict=False)]
    yield "  ".join([*heads, columns[-1].header]).rstrip() + "\n"
    cells = [*(cells for _, cells in padded), columns[-1].cells]
    lines = map(str.rstrip, map("  ".join, zip(*cells, strict=True)))
    while chunk := list(itertools.islice(lines, rows_at_once)):
        chunk.append("")
        yield "\n".join(chunk)


def _padded(column: Column) -> tuple[int, Sequence[str]]:
    """The width of ``column`` and its cells padded to it."""
    width, cells = column.width, column.cells
    if width is None:
        width = max([len(column.header), *map(len, cells)])
        cells = [c.ljust(width) for c in cells]
    return width, cells


def _status_style(status: str) -> str | None:
    return _STATUS_STYLE.get(status)


# -- formatting ---------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or value is MISSING:
        return "" if value is None else "(missing)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _when(value: Any) -> str:
    started = value if isinstance(value, dt.datetime) else _parse_time(value)
    if started is None:
        return "" if not value else str(value)
    return started.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _parse_time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _size(n_bytes: Any) -> str:
    if not isinstance(n_bytes, (int, float)):
        return ""
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""  # pragma: no cover


def _parser(name: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"xp {name}", description=description)


# -- xp show ------------------------------------------------------------------------------


def show_command(argv: list[str]) -> int:
    """``xp show RUN``: summary, config, metrics, data, lineage and error of one run."""
    p = _parser("show", "Show one run: summary, config, metrics, data, upstream, error.")
    p.add_argument("run", metavar="RUN", help="run directory, latest link or id prefix")
    args = p.parse_args(argv)
    run = resolve_run(args.run)
    lock = run.lock
    out = _Out()
    out.line(f"{lock.stage} {lock.id}  {run.status}", style=_status_style(run.status))
    _pairs(out, _summary(run))
    _section(out, "config", [(k, _cell(v)) for k, v in flatten(lock.config).items()])
    _section(out, "metrics", [(k, _cell(v)) for k, v in run.metrics.items()])
    _section(out, "data", _data_rows(lock.data or {}))
    _section(out, "upstream", [(k, _brief(v)) for k, v in (lock.upstream or {}).items()])
    for change in upstream_changes(run):
        out.line(f"warning: {change}", style="yellow")
    if lock.error:
        out.line("error", style="bold red")
        error = lock.error
        out.line(f"  {error.get('type', 'Error')}: {error.get('message', '')}", style="red")
        for text in str(error.get("traceback") or "").rstrip().splitlines():
            out.line(f"  {text}")
    return 0


def _summary(run: Run) -> list[tuple[str, str]]:
    lock = run.lock
    took = duration_text(run.duration_s)
    rows = [
        ("dir", lock.dir),
        ("started", _when(lock.started) + (f"  (took {took})" if took else "")),
    ]
    if lock.host or lock.pid:
        rows.append(("host", f"{lock.host or '?'}  pid {lock.pid}"))
    if lock.argv:
        rows.append(("command", " ".join(lock.argv)))
    rows.append(("code", _code_line(lock.src)))
    rows += _reuse_rows(run)
    if lock.tasks:
        rows.append(("tasks", _tasks_line(lock.tasks, run.task_counts())))
    return rows


def _tasks_line(tasks: Mapping[str, Any], counts: Mapping[str, int] | None) -> str:
    """A map's ``tasks``: counts as ``xp tasks`` has them (from the records while it runs),
    its Slurm jobs as Slurm writes ranges (``683_[0-999]``), not one id each."""
    from .._parallel._jobs import job_ranges

    shown = {**tasks, **(counts or {})}
    if isinstance(shown.get("jobs"), list):
        shown["jobs"] = job_ranges([str(j) for j in shown["jobs"]])
    return ", ".join(f"{k} {v}" for k, v in shown.items())


def _reuse_rows(run: Run) -> list[tuple[str, str]]:
    """``rerun of`` (run.lock ``rerun_of``) and ``reused`` (calls that returned this run)."""
    from .._execute._returned import read_reuses

    rows = []
    if run.lock.extra.get("rerun_of"):
        rows.append(("rerun of", str(run.lock.extra["rerun_of"])))
    reuses = read_reuses(run.dir)
    if reuses:
        last = str(reuses[-1].get("time") or "")
        rows.append(("reused", f"{len(reuses)} time(s) instead of running, last {_when(last)}"))
    return rows


def _code_line(src: Mapping[str, Any] | None) -> str:
    if not src:
        return "no code snapshot"
    commit = src.get("commit")
    if not commit:
        return f"no code snapshot ({src.get('error') or src.get('reason') or 'not recorded'})"
    text = str(commit)[:12]
    if src.get("branch"):
        text += f" on {src['branch']}"
    text += " (dirty)" if src.get("dirty") else ""
    return text + (f"; {src['error']}" if src.get("error") else "")  # e.g. kept off run_logs


def _data_rows(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for name, entry in data.items():
        if not isinstance(entry, Mapping):
            rows.append((str(name), _cell(entry)))
            continue
        parts = [str(entry.get("path", name)), _short_hash(entry.get("hash"))]
        if entry.get("files") is not None:
            parts.append(f"{entry['files']} files")
        parts.append(_size(entry.get("bytes")))
        rows.append((str(name), "  ".join(p for p in parts if p)))
    return rows


def _short_hash(value: Any) -> str:
    text = str(value or "")
    algo, _, digest = text.rpartition(":")
    return f"{algo}:{digest[:12]}" if algo else text[:12]


def _brief(lock: Any) -> str:
    if not isinstance(lock, Mapping):
        return _cell(lock)
    fields = [lock.get("stage"), lock.get("id"), lock.get("status"), _when(lock.get("started"))]
    return "  ".join(str(f) for f in fields if f) + f"  {lock.get('dir', '')}"


def _pairs(out: _Out, rows: Sequence[tuple[str, str]], indent: str = "  ") -> None:
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        out.line(f"{indent}{key:<{width}}  {value}")


def _section(out: _Out, title: str, rows: Sequence[tuple[str, str]]) -> None:
    if rows:
        out.line(title, style="bold")
        _pairs(out, rows)


# -- xp diff ------------------------------------------------------------------------------


def diff_command(argv: list[str]) -> int:
    """``xp diff RUN_A RUN_B [--code]``: config, code, data, environment and metrics."""
    p = _parser("diff", "Compare two runs: config, code, data, environment and metrics.")
    p.add_argument("run_a", metavar="RUN_A", help="run directory, latest link or id prefix")
    p.add_argument("run_b", metavar="RUN_B", help="run directory, latest link or id prefix")
    p.add_argument("--code", action="store_true", help="the full code diff, not only its stat")
    args = p.parse_args(argv)
    a, b = resolve_run(args.run_a), resolve_run(args.run_b)
    out = _Out()
    for label, run in (("A", a), ("B", b)):
        out.line(f"{label}: {run.stage} {run.id}  {run.lock.dir}  ({_when(run.lock.started)})")
    _changes(out, "config", config_changes(a, b))
    _code(out, a, b, full=args.code)
    _data(out, a, b)
    _changes(out, "environment", env_changes(a, b))
    _changes(out, "metrics", metric_changes(a, b), numeric=True)
    return 0


def _changes(out: _Out, title: str, changes: list[Change], *, numeric: bool = False) -> None:
    out.line(title, style="bold")
    if not changes:
        out.line("  (no differences)")
    for c in changes:
        if c.before is MISSING:
            out.line(f"  + {c.key}: {_cell(c.after)}", style="green")
        elif c.after is MISSING:
            out.line(f"  - {c.key}: {_cell(c.before)}", style="red")
        else:
            delta = _delta(c.before, c.after) if numeric else ""
            out.line(f"  {c.key}: {_cell(c.before)} -> {_cell(c.after)}{delta}", style="yellow")


def _delta(before: Any, after: Any) -> str:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after))
    return f"  ({after - before:+.4g})" if numbers else ""


def _code(out: _Out, a: Run, b: Run, *, full: bool) -> None:
    out.line("code", style="bold")
    diff = code_diff(a, b, stat=not full)
    if diff.note:
        out.line(f"  ({diff.note})")
        return
    out.line(f"  {(diff.commit_a or '')[:7]} -> {(diff.commit_b or '')[:7]}")
    for text in diff.text.rstrip().splitlines():
        style = None
        if full and text.startswith("+") and not text.startswith("+++"):
            style = "green"
        elif full and text.startswith("-") and not text.startswith("---"):
            style = "red"
        out.line(f"  {text}", style=style)


def _data(out: _Out, a: Run, b: Run) -> None:
    out.line("data", style="bold")
    changes = data_changes(a, b)
    if not changes:
        out.line("  (no differences)")
    for c in changes:
        before, after = _short_hash(c.before) or "(none)", _short_hash(c.after) or "(none)"
        out.line(f"  {c.name}: {before} -> {after}", style="yellow")
        if c.added is None:
            out.line("    (no readable file manifests: only the hash is known to differ)")
            continue
        for mark, files, style in (("+", c.added, "green"), ("-", c.removed, "red")):
            for f in files or ():
                out.line(f"    {mark} {f}", style=style)
        for f in c.modified or ():
            out.line(f"    ~ {f}", style="yellow")


# -- xp lineage ---------------------------------------------------------------------------


def lineage_command(argv: list[str]) -> int:
    """``xp lineage RUN``: the tree of upstream runs with stage, id, status and date."""
    p = _parser("lineage", "Draw the tree of the runs RUN consumed, recursively.")
    p.add_argument("run", metavar="RUN", help="run directory, latest link or id prefix")
    args = p.parse_args(argv)
    run = resolve_run(args.run)
    tree = lineage(run)
    out = _Out()
    if out.console is not None:
        _rich_tree(out, tree, run)
        return 0
    out.line(_node_text(tree, run.status))
    _plain_children(out, tree.children, "")
    return 0


def _node_text(node: LineageNode, status: str | None = None) -> str:
    lock = node.lock
    label = f"{node.key}: " if node.key else ""
    status = status or str(lock.get("status"))
    text = f"{label}{lock.get('stage')} {lock.get('id')} {status} {_when(lock.get('started'))}"
    text += f"  {lock.get('dir', '')}"
    return text + (f"  [changed since: {node.change}]" if node.change else "")


def _plain_children(out: _Out, children: list[LineageNode], prefix: str) -> None:
    for i, child in enumerate(children):
        last = i == len(children) - 1
        out.line(f"{prefix}{'└── ' if last else '├── '}{_node_text(child)}")
        _plain_children(out, child.children, prefix + ("    " if last else "│   "))


def _rich_tree(out: _Out, tree: LineageNode, run: Run) -> None:
    from rich.tree import Tree

    def label(node: LineageNode, status: str | None = None) -> str:
        text = _escape(_node_text(node, status))
        style = "yellow" if node.change else _status_style(status or str(node.lock.get("status")))
        return f"[{style}]{text}[/]" if style else text

    def add(parent: Any, node: LineageNode) -> None:
        for child in node.children:
            add(parent.add(label(child)), child)

    root = Tree(label(tree, run.status))
    add(root, tree)
    out.console.print(root)
