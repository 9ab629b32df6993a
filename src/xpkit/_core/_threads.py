"""xpkit's background threads leave SIGINT and SIGTERM to the main thread.

The kernel delivers a signal sent to a process to any thread that does not block it. When
it lands in one of xpkit's threads (the output pumps, the hashing or environment threads),
Python runs the handler in the main thread only at its next bytecode: a body sleeping or
waiting in ``time.sleep``, a lock or a read would not notice Ctrl-C or SIGTERM until that
call returns. Blocked in every thread of ours, the signals reach the main thread at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["leave_signals_to_main", "start_thread", "unblock_signals"]

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def leave_signals_to_main() -> None:
    """Block SIGINT and SIGTERM in the calling thread (never call it in the main thread)."""
    if threading.current_thread() is threading.main_thread():
        return
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no pthreads (Windows)
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)


def start_thread(target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` with the signals left to main."""

    def run() -> None:
        leave_signals_to_main()
        target(*args)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def unblock_signals() -> None:
    """Undo an inherited blocked mask (a process started from one of xpkit's threads)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
