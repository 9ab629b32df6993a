"""Tee a run's output into its run.log while it still shows on the terminal or console.

Two levels:

* Python level (always): ``sys.stdout`` / ``sys.stderr`` are wrapped so that ``print``,
  warnings and logging reach run.log. Works in Jupyter, where fd 1 is not the notebook.
* File-descriptor level (scripts only): fds 1 and 2 are redirected into pipes drained by
  threads, so that subprocesses and C extensions are captured too.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

from .._core._threads import start_thread

__all__ = ["LogFile", "capture_output"]

_fd_capture_active = False
# a captured pipe that stays empty this long after the run is drained
_QUIET_S = 0.1
_QUIET_POLL_S = 0.02
# a child still holding a pipe open (and writing) keeps its pump alive: the end of a capture
# waits this long at most for both pumps
_DRAIN_S = 2.0


class LogFile:
    """An append-only run.log shared by every writer of a run, safe across threads.

    A write that fails (the disk is full) never reaches the writer, a ``print`` of the
    run's body: the log stops there, ``error`` says why, and the terminal still shows all.
    """

    def __init__(self, path: Path) -> None:
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()
        self.error: OSError | None = None

    def write_bytes(self, data: bytes) -> None:
        """Append raw bytes."""
        with self._lock:
            if self._file.closed or self.error is not None:
                return
            try:
                self._file.write(data)
            except OSError as e:
                self.error = e

    def write(self, text: str) -> None:
        """Append text (UTF-8)."""
        self.write_bytes(text.encode("utf-8", "replace"))

    def close(self) -> None:
        """Close the file; later writes are dropped."""
        with self._lock:
            self._file.close()


class _Sink:
    """Where a run's Python-level output goes: its run.log, unless the fds are captured."""

    def __init__(self, log: LogFile, *, python_level: bool) -> None:
        self.log = log
        self.python_level = python_level


# The run whose output this thread/task writes (set per run); threads a run starts do not
# inherit it and fall back to the innermost run still going in the process.
_sink: ContextVar[_Sink | None] = ContextVar("xpkit_output_sink", default=None)
_open_sinks: list[_Sink] = []
_state = threading.Lock()
_installed: tuple[_Dispatch, _Dispatch] | None = None


class _Dispatch(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while runs are going: the original stream, and the
    run.log of the run writing (found per thread, so concurrent runs do not mix logs)."""

    def __init__(self, original: IO[str]) -> None:
        self._original = original

    def write(self, s: str) -> int:
        n = self._original.write(s)
        sink = _sink.get()
        if sink is None and _open_sinks:
            sink = _open_sinks[-1]
        if sink is not None and sink.python_level:
            sink.log.write(s)
        return len(s) if n is None else n

    def flush(self) -> None:
        self._original.flush()

    def isatty(self) -> bool:
        return self._original.isatty()

    def fileno(self) -> int:
        return self._original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # a property, as on real streams
        return getattr(self._original, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]  # a property, as on real streams
        return getattr(self._original, "errors", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


@contextlib.contextmanager
def capture_output(log: LogFile, *, fds: bool) -> Iterator[None]:
    """Copy everything written to stdout/stderr into ``log`` inside the block.

    With ``fds=True`` (scripts) the process's fds 1 and 2 are captured as well, once per
    process: a nested run captures at the Python level only. Runs in concurrent threads
    each get their own output.
    """
    global _fd_capture_active
    with _state:
        use_fds = fds and not _fd_capture_active and _fds_usable()
        if use_fds:
            _fd_capture_active = True
    pumps: list[_FdPump] = []
    if use_fds:
        _flush_std()
        pumps = [_FdPump(1, log), _FdPump(2, log)]
    # at fd level the pumps log the bytes; the Python level must not log them twice
    sink = _Sink(log, python_level=not use_fds)
    _install(sink)
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)
        _uninstall(sink)
        if use_fds:
            _flush_std()
            for pump in pumps:
                pump.restore()
            deadline = time.monotonic() + _DRAIN_S
            for pump in pumps:
                pump.finish(timeout_s=max(0.0, deadline - time.monotonic()))
            with _state:
                _fd_capture_active = False


def _install(sink: _Sink) -> None:
    global _installed
    with _state:
        if not _open_sinks:
            _installed = (_Dispatch(sys.stdout), _Dispatch(sys.stderr))
            sys.stdout, sys.stderr = _installed
        _open_sinks.append(sink)


def _uninstall(sink: _Sink) -> None:
    global _installed
    with _state:
        _open_sinks.remove(sink)
        if _open_sinks or _installed is None:
            return
        out, err = _installed
        # a stream replaced meanwhile (by the user, by another tool) is left alone
        if sys.stdout is out:
            sys.stdout = out._original
        if sys.stderr is err:
            sys.stderr = err._original
        _installed = None


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _fds_usable() -> bool:
    try:
        os.fstat(1)
        os.fstat(2)
    except OSError:
        return False
    return threading.current_thread() is threading.main_thread()


class _FdPump:
    """Redirect one fd into a pipe; a thread copies it to the saved fd and to run.log."""

    def __init__(self, fd: int, log: LogFile) -> None:
        self._fd = fd
        self._log = log
        self._saved = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self._read_end = read_end
        self._waiting = False
        self._thread = start_thread(self._pump, name=f"xpkit-fd{fd}")

    def _pump(self) -> None:
        # the terminal gets bytes at once; run.log gets whole lines, so that stdout and
        # stderr (two pumps) interleave there line by line, never mid-line
        pending = b""
        while True:
            self._waiting = True
            try:
                chunk = os.read(self._read_end, 65536)
            except OSError:
                break
            finally:
                self._waiting = False
            if not chunk:
                break
            with contextlib.suppress(OSError):
                _write_all(self._saved, chunk)
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if cut:
                self._log.write_bytes(pending[:cut])
                pending = pending[cut:]
        if pending:
            self._log.write_bytes(pending)

    def restore(self) -> None:
        """Point the fd back where it was; the pump drains what is left in the pipe."""
        os.dup2(self._saved, self._fd)

    def finish(self, *, timeout_s: float) -> None:
        """Wait for the pump to drain the pipe (``timeout_s`` at most) and release its fds.

        Children still holding the pipe (joblib's idle workers and resource trackers live
        until the process exits) never let it close: once it is empty and quiet, stop
        waiting; the pump keeps copying anything they write later to the terminal.
        """
        deadline = time.monotonic() + timeout_s
        quiet_since: float | None = None
        while True:
            self._thread.join(timeout=_QUIET_POLL_S)
            now = time.monotonic()
            if not self._thread.is_alive() or now >= deadline:
                break
            if self._waiting and _unread_bytes(self._read_end) == 0:
                quiet_since = now if quiet_since is None else quiet_since
                if now - quiet_since >= _QUIET_S:
                    break
            else:
                quiet_since = None
        if not self._thread.is_alive():
            os.close(self._read_end)
            os.close(self._saved)
        # else: leave both fds open; the pump may still write to them when the child exits


def _unread_bytes(fd: int) -> int:
    """Bytes waiting in pipe ``fd``; -1 where the platform cannot tell (then wait for EOF)."""
    try:
        import fcntl
        import termios

        buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except (ImportError, OSError):
        return -1
    return int.from_bytes(buf, sys.byteorder, signed=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
