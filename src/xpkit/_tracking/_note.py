"""The description of a mirrored run (``mlflow.note.content``): what a researcher asks first.

A run's note says what the run changed (the config keys that differ from the stage's
defaults, recorded in run.lock ``defaults``; a sweep point's values), which code made it (the
snapshot commit, and whether uncommitted changes were in it), what it read (data hashes) and
consumed (upstream runs, linked to their MLflow runs), and the commands that show it again,
re-run it or check its code out. A sweep's parent run lists its points.

Everything from run.lock is shown as inline code (or a quoted shell word), never as markdown,
so a key or value cannot inject links or markup; the note stays within MLflow's 8000
characters by capping each list.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from .._core._flat import flatten
from .._core._lock import RunLock
from ._shape import SweepRef, datasets_of, sweep_of, upstream_of

__all__ = ["NOTE_TAG", "PointRow", "code", "run_note", "sweep_note"]

NOTE_TAG = "mlflow.note.content"
NOTE_MAX = 8000  # MLflow's limit on a tag value
LINES_MAX = 25  # items of one list
VALUE_MAX = 100  # characters of one shown value
_BACKTICKS = re.compile(r"`+")


def code(value: Any, *, limit: int = VALUE_MAX) -> str:
    """``value`` as one markdown code span, on one line, cut at ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = " ".join(text.splitlines()) if text else "''"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    fence = "`" * (max((len(m) for m in _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _link(text: str, route: str | None) -> str:
    """A markdown link to a UI route (ours, URL-quoted), or the plain text without one."""
    return f"[{text}]({route})" if route else text


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= LINES_MAX:
        return lines
    return [*lines[:LINES_MAX], f"- … and {len(lines) - LINES_MAX} more"]


# --- a run's note ---------------------------------------------------------------------------


def run_note(
    lock: RunLock, *, upstream_routes: Mapping[str, str], sweep_route: str | None = None
) -> str:
    """The markdown note of a run.

    Args:
        lock: the run's run.lock.
        upstream_routes: xpkit run id -> UI route of that run's MLflow run (those found).
        sweep_route: UI route of the sweep's parent run, when the run is a sweep point.
    """
    parts = [
        _config_part(lock),
        _sweep_part(sweep_of(lock), sweep_route),
        _code_part(lock.src),
        _tasks_part(lock),
        _error_part(lock.error),
        _data_part(lock),
        _upstream_part(lock, upstream_routes),
        _commands_part(lock),
    ]
    return _fit("\n\n".join(p for p in parts if p))


def _config_part(lock: RunLock) -> str:
    defaults = lock.extra.get("defaults")
    if not isinstance(defaults, Mapping):
        return "**Config**: the stage's defaults are not recorded for this run."
    upstream = {ref.key for ref in upstream_of(lock)}
    config = flatten(dict(lock.config))
    lines = [
        f"- {code(key)}: {code(config[key])} (default {code(default)})"
        for key, default in defaults.items()
        if key in config and key not in upstream
    ]
    if not lines:
        return "**Config**: the stage's defaults."
    return "\n".join(["**Config** changed from the stage's defaults:", *_capped(lines)])


def _sweep_part(sweep: SweepRef | None, route: str | None) -> str:
    if sweep is None:
        return ""
    values = ", ".join(f"{code(k)}: {code(v)}" for k, v in flatten(dict(sweep.values)).items())
    where = _link(f"sweep {sweep.id}", route)
    return f"**Sweep**: point {sweep.point + 1} of {sweep.total} of {where}" + (
        f": {values}" if values else ""
    )


def _code_part(src: Mapping[str, Any] | None) -> str:
    src = src or {}
    commit = src.get("commit")
    if not isinstance(commit, str) or not commit:
        why = src.get("error")
        return "**Code**: not snapshotted" + (f" ({code(why)})" if why else "") + "."
    text = f"**Code**: snapshot {code(commit[:12])}"
    branch, head = src.get("branch"), src.get("head")
    if isinstance(branch, str) and branch:
        text += f" of branch {code(branch)}"
    if isinstance(head, str) and head:
        text += f" at commit {code(head[:12])}"
    if src.get("dirty") is True:
        return text + ", **with uncommitted changes** (they are in the snapshot)."
    return text + ", no uncommitted change."


def _tasks_part(lock: RunLock) -> str:
    tasks = lock.tasks or {}
    total = tasks.get("total")
    if not isinstance(total, int):
        return ""
    done, failed = tasks.get("done"), tasks.get("failed")
    return f"**Tasks**: {total}, {code(done)} done, {code(failed)} failed."


def _error_part(error: Mapping[str, Any] | None) -> str:
    if not error:
        return ""
    text = f"{error.get('type')}: {error.get('message')}"
    return f"**Error**: {code(text, limit=300)}"


def _data_part(lock: RunLock) -> str:
    lines = []
    for ref in datasets_of(lock):
        path = json.loads(ref.source)["uri"]
        lines.append(f"- {code(ref.name)}: {code(path)} {code('xxh3_128:' + ref.digest)}")
    return "\n".join(["**Data**:", *_capped(lines)]) if lines else ""


def _upstream_part(lock: RunLock, routes: Mapping[str, str]) -> str:
    lines = []
    for ref in upstream_of(lock):
        run = _link(f"{ref.stage} {ref.id}", routes.get(ref.id))
        where = f" in {code(ref.dir)}" if ref.dir else ""
        lines.append(f"- {code(ref.key)}: {run}{where}")
    return "\n".join(["**Upstream runs**:", *_capped(lines)]) if lines else ""


def _commands_part(lock: RunLock) -> str:
    where = shlex.quote(" ".join(lock.dir.splitlines()))
    commands = [f"xp show {where}", f"xp rerun {where}"]
    if lock.tasks:
        commands.append(f"xp tasks {where}")
    if (lock.src or {}).get("commit"):
        commands.append(f"xp checkout {where}  # its code, as a git worktree")
    return "\n".join(["```", *commands, "```"])


def _fit(text: str) -> str:
    """The note within MLflow's limit (only a pathological run.lock gets here)."""
    if len(text) <= NOTE_MAX:
        return text
    return text[: NOTE_MAX - 40] + "\n\n… (cut: too long for MLflow)"


# --- a sweep's parent run ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PointRow:
    """One point of a sweep as its parent's note lists it."""

    point: int
    values: Mapping[str, Any]
    status: str
    route: str | None


def sweep_note(stage: str, sweep: SweepRef, points: Sequence[PointRow], where: str) -> str:
    """The markdown note of a sweep's parent run.

    Args:
        stage: the stage swept.
        sweep: the sweep (from any of its points).
        points: the points found in MLflow so far.
        where: the directory of the stage's runs, relative to the project.
    """
    keys = list(dict.fromkeys(k for p in points for k in flatten(dict(p.values))))
    over = ", ".join(code(k) for k in keys) or "the config"
    head = f"**Sweep** {code(sweep.id)} of stage {code(stage)}: {sweep.total} points over {over}."
    lines = []
    for row in sorted(points, key=lambda p: p.point):
        values = ", ".join(f"{code(k)}: {code(v)}" for k, v in flatten(dict(row.values)).items())
        lines.append(f"- {_link(f'point {row.point + 1}', row.route)} {values} · {row.status}")
    if len(points) < sweep.total:
        lines.append(f"- {sweep.total - len(points)} point(s) not in MLflow yet")
    compare = f"Compare them: `xp ls {shlex.quote(where)}` (the `sweep` column says which point)."
    return _fit("\n".join([head, "", *_capped(lines), "", compare]))
