"""Ending a run: its status, its error record, and the final run.lock.

One place for both, used by the process that ran the body and by whoever ends a run on
behalf of others (the last worker of a Slurm map, ``xp tasks --wait`` ending an abandoned
map).
"""

from __future__ import annotations

import datetime as dt
import types
from collections.abc import Mapping
from typing import Any

from .._core._lock import RunLock, now
from .._core._paths import PACKAGE_DIR

__all__ = ["end_lock", "error_record", "in_user_code", "status_of", "user_traceback"]


def status_of(exc: BaseException | None) -> str:
    """``completed`` (no exception, or ``sys.exit(0)``), ``interrupted`` (Ctrl-C, SIGTERM)
    or ``failed``."""
    if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
        return "completed"
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


def error_record(exc: BaseException) -> dict[str, str]:
    """``{type, message, traceback}`` of an exception, xpkit's own frames left out."""
    import traceback

    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ != "builtins":
        name = f"{cls.__module__}.{name}"
    return {
        "type": name,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(cls, exc, user_traceback(exc))),
    }


def end_lock(
    lock: RunLock,
    *,
    status: str,
    error: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    ended: dt.datetime | None = None,
    **sections: Any,
) -> RunLock:
    """``lock`` as it ends: status, end time, duration, error, last metrics and ``sections``.

    ``duration_s`` counts from this attempt's start (the last entry of ``attempts`` for a
    resumed map, else ``started``), plus the durations of earlier attempts.
    """
    ended = ended or now()
    attempts = list(lock.extra.get("attempts") or ())
    duration_s = _seconds(ended, attempts[-1].get("started") if attempts else lock.started)
    if attempts:
        attempts[-1] = {**attempts[-1], "ended": ended.isoformat(), "duration_s": duration_s}
        duration_s = _total(attempts)
    extra = {**lock.extra, "attempts": attempts} if attempts else lock.extra
    return lock.replace(
        status=status,
        ended=ended.isoformat(),
        duration_s=duration_s,
        error=error,
        metrics=dict(metrics) if metrics else None,
        extra=extra,
        **sections,
    )


def _seconds(ended: dt.datetime, started: Any) -> float | None:
    try:
        return round((ended - dt.datetime.fromisoformat(str(started))).total_seconds(), 3)
    except (TypeError, ValueError):
        return None


def _total(attempts: list[Mapping[str, Any]]) -> float | None:
    values = [a.get("duration_s") for a in attempts]
    if not all(isinstance(v, (int, float)) for v in values):
        return None
    return round(sum(values), 3)  # type: ignore[arg-type]  # checked just above


def in_user_code(exc: BaseException) -> bool:
    """Whether a frame of ``exc``'s traceback is outside xpkit (the user's code)."""
    tb = exc.__traceback__
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(PACKAGE_DIR):
            return True
        tb = tb.tb_next
    return False


def user_traceback(exc: BaseException) -> types.TracebackType | None:
    """The traceback without xpkit's own frames (the run machinery, the SIGTERM handler)."""
    kept: list[types.TracebackType] = []
    tb = exc.__traceback__
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(PACKAGE_DIR):
            kept.append(tb)
        tb = tb.tb_next
    if not kept:
        return exc.__traceback__
    if all(a.tb_next is b for a, b in zip(kept, [*kept[1:], None], strict=True)):
        return kept[0]  # only leading frames were dropped: the chain is reused as it is
    out = None
    for kept_tb in reversed(kept):
        out = types.TracebackType(out, kept_tb.tb_frame, kept_tb.tb_lasti, kept_tb.tb_lineno)
    return out
