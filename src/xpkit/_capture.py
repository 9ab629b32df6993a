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
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["LogFile", "capture_output"]

_fd_capture_active = False


class LogFile:
    """An append-only run.log shared by every writer of a run, safe across threads."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def write_bytes(self, data: bytes) -> None:
        """Append raw bytes."""
        with self._lock:
            if not self._file.closed:
                self._file.write(data)

    def write(self, text: str) -> None:
        """Append text (UTF-8)."""
        self.write_bytes(text.encode("utf-8", "replace"))

    def close(self) -> None:
        """Close the file; later writes are dropped."""
        with self._lock:
            self._file.close()


class _Tee(io.TextIOBase):
    """A text stream writing to the original stream and to run.log."""

    def __init__(self, original: IO[str], log: LogFile, *, to_log: bool) -> None:
        self._original = original
        self._log = log
        self._to_log = to_log

    def write(self, s: str) -> int:
        n = self._original.write(s)
        if self._to_log:
            self._log.write(s)
        return len(s) if n is None else n

    def flush(self) -> None:
        self._original.flush()

    def isatty(self) -> bool:
        return self._original.isatty()

    def fileno(self) -> int:
        return self._original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._original, "errors", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


@contextlib.contextmanager
def capture_output(log: LogFile, *, fds: bool) -> Iterator[None]:
    """Copy everything written to stdout/stderr into ``log`` inside the block.

    With ``fds=True`` (scripts) the process's fds 1 and 2 are captured as well, once per
    process: a nested run captures at the Python level only.
    """
    global _fd_capture_active
    use_fds = fds and not _fd_capture_active and _fds_usable()
    pumps: list[_FdPump] = []
    if use_fds:
        _flush_std()
        pumps = [_FdPump(1, log), _FdPump(2, log)]
        _fd_capture_active = True
    # at fd level the pumps log the bytes; the Python tee must not log them twice
    out = _Tee(sys.stdout, log, to_log=not use_fds)
    err = _Tee(sys.stderr, log, to_log=not use_fds)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        if sys.stdout is out:
            sys.stdout = saved[0]
        if sys.stderr is err:
            sys.stderr = saved[1]
        if use_fds:
            _flush_std()
            for pump in pumps:
                pump.stop()
            _fd_capture_active = False


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
        self._thread = threading.Thread(target=self._pump, name=f"xpkit-fd{fd}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self._read_end, 65536)
            except OSError:
                break
            if not chunk:
                break
            with contextlib.suppress(OSError):
                _write_all(self._saved, chunk)
            self._log.write_bytes(chunk)

    def stop(self) -> None:
        """Restore the fd and drain what is left in the pipe."""
        os.dup2(self._saved, self._fd)
        # a child still holding the pipe open would keep the pump alive: don't wait forever
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive():
            os.close(self._read_end)
            os.close(self._saved)
        # else: leave both fds open; the pump may still write to them when the child exits


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
