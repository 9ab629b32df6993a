"""Progress bars: rich on a terminal, nothing elsewhere (rich is imported only to draw one);
and how long things take, as people read it."""

from __future__ import annotations

import math
import sys
from typing import IO, Any

__all__ = ["ProgressBar", "duration_text"]


def duration_text(seconds: float | None) -> str:
    """``0.4s``, ``12.5s``, ``3m07s``, ``2h05m``; ``""`` for None (or no finite number)."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressBar:
    """A rich progress bar on stderr (or ``stream``); every method is a no-op when none is drawn.

    Args:
        description: the text before the bar.
        total: the amount of work (None: unknown yet; see :meth:`update` and :meth:`grow`).
        enabled: draw it; default when the stream is a terminal. Without rich, no bar.
        in_bytes: show sizes and a transfer speed instead of counts.
        stream: a terminal to draw on instead of stderr (always drawn as one).
        transient: erase the bar when it stops.

    Example:
        >>> with ProgressBar("syncing", total=len(runs)) as bar:  # doctest: +SKIP
        ...     for run in runs:
        ...         bar.advance()
    """

    def __init__(
        self,
        description: str,
        *,
        total: float | None = None,
        enabled: bool | None = None,
        in_bytes: bool = False,
        stream: IO[str] | None = None,
        transient: bool = True,
    ) -> None:
        if enabled is None:
            enabled = (stream or sys.stderr).isatty()
        self._bar: Any = _rich_progress(in_bytes, stream, transient) if enabled else None
        self._task: Any = None
        if self._bar is not None:
            self._task = self._bar.add_task(description, total=total)

    @property
    def shown(self) -> bool:
        """Whether a bar is drawn."""
        return self._bar is not None

    def start(self) -> None:
        if self._bar is not None:
            self._bar.start()

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> ProgressBar:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def advance(self, n: float = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def update(self, *, completed: float, total: float | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, total=total)

    def grow(self, n: float) -> None:
        """Add ``n`` to the total (work found on the way)."""
        if self._bar is not None:
            total = self._bar.tasks[0].total or 0
            self._bar.update(self._task, total=total + n)


def _rich_progress(in_bytes: bool, stream: IO[str] | None, transient: bool) -> Any:
    try:
        from rich import progress as rp
        from rich.console import Console
    except ImportError:  # the bar is a nicety: without rich, no bar
        return None
    console = Console(stderr=True) if stream is None else Console(file=stream, force_terminal=True)
    columns: tuple[Any, ...] = (
        (
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.DownloadColumn(),
            rp.TransferSpeedColumn(),
        )
        if in_bytes
        else ()
    )
    return rp.Progress(*columns, console=console, transient=transient)
