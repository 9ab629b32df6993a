"""Output capture into run.log: Python level everywhere, file descriptors in scripts."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import SRC
from xpkit._execute._capture import LogFile, capture_output


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fd_capture_gets_subprocesses_and_c_writes_and_still_shows_them(tmp_path: Path) -> None:
    """fds=True: print, os.write, subprocesses and stderr all reach run.log and the terminal."""
    out = run_python(
        """
        import os, subprocess, sys
        from pathlib import Path
        from xpkit._execute._capture import LogFile, capture_output
        log = LogFile(Path("run.log"))
        print("before")
        with capture_output(log, fds=True):
            print("py-out")
            print("py-err", file=sys.stderr)
            os.write(1, b"fd-out\\n")
            os.write(2, b"fd-err\\n")
            subprocess.run(["echo", "child-out"], check=True)
            subprocess.run(["sh", "-c", "echo child-err >&2"], check=True)
        print("after")
        log.close()
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "run.log").read_text()
    for text in ("py-out", "py-err", "fd-out", "fd-err", "child-out", "child-err"):
        assert log.count(text) == 1, (text, log)  # once: no double logging
    assert "before" not in log
    assert "after" not in log
    for text in ("before", "py-out", "fd-out", "child-out", "after"):
        assert text in out.stdout
    for text in ("py-err", "fd-err", "child-err"):
        assert text in out.stderr


def test_nested_capture_logs_inner_output_to_both_logs(tmp_path: Path) -> None:
    """A nested run (Python level) logs to its own log; the outer fd capture still sees it."""
    out = run_python(
        """
        import os
        from pathlib import Path
        from xpkit._execute._capture import LogFile, capture_output
        outer, inner = LogFile(Path("outer.log")), LogFile(Path("inner.log"))
        with capture_output(outer, fds=True):
            print("outer-line")
            with capture_output(inner, fds=True):
                print("inner-line")
                os.write(1, b"inner-fd\\n")
        outer.close(); inner.close()
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    outer = (tmp_path / "outer.log").read_text()
    inner = (tmp_path / "inner.log").read_text()
    assert outer.count("inner-line") == 1
    assert "outer-line" in outer
    assert "inner-fd" in outer
    assert inner == "inner-line\n"


# a child that holds the captured stdout until the test creates "release" (30 s at most)
_HOLDING_CHILD = (
    "echo {said}; touch started; i=0;"
    " while [ ! -e release ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo bg-end"
)


def test_a_child_holding_the_pipe_does_not_block_the_end(tmp_path: Path) -> None:
    """The capture ends while a background child still holds stdout; its later output shows."""
    out = run_python(
        f"""
        import subprocess, threading, time
        from pathlib import Path
        from xpkit._execute._capture import LogFile, capture_output
        log = LogFile(Path("run.log"))
        with capture_output(log, fds=True):
            child = subprocess.Popen(["sh", "-c", {_HOLDING_CHILD.format(said="bg-start")!r}])
            while not Path("started").exists():  # bg-start is in the pipe before the end
                time.sleep(0.05)
        print("child running at the end:", child.poll() is None, flush=True)
        Path("release").touch()
        child.wait()
        for pump in threading.enumerate():  # they copy bg-end to the terminal, then see EOF
            if pump.name.startswith("xpkit-fd"):
                pump.join(10)
        log.close()
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "child running at the end: True" in out.stdout  # the end did not wait for its exit
    assert "bg-start" in (tmp_path / "run.log").read_text()
    assert "bg-end" in out.stdout


def test_an_idle_child_holding_the_pipe_costs_no_wait(tmp_path: Path) -> None:
    """A quiet child holding stdout (joblib's idle workers) ends the capture once drained.

    The drain deadline is put out of reach: only seeing the pipe empty and quiet can end the
    capture before the child exits.
    """
    out = run_python(
        f"""
        import subprocess, time
        from pathlib import Path
        from xpkit._execute import _capture
        from xpkit._execute._capture import LogFile, capture_output
        _capture._DRAIN_S = 600.0
        log = LogFile(Path("run.log"))
        with capture_output(log, fds=True):
            child = subprocess.Popen(["sh", "-c", {_HOLDING_CHILD.format(said="idle-child")!r}])
            while not Path("started").exists():  # idle-child is in the pipe before the end
                time.sleep(0.05)
        print("child running at the end:", child.poll() is None, flush=True)
        Path("release").touch()
        child.wait()
        log.close()
        """,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "child running at the end: True" in out.stdout
    assert "idle-child" in (tmp_path / "run.log").read_text()


def test_python_level_capture_restores_streams(tmp_path: Path) -> None:
    """fds=False: print and stderr are copied; sys.stdout/stderr are restored, even on error."""
    log = LogFile(tmp_path / "run.log")
    before = sys.stdout, sys.stderr

    def body() -> None:
        with capture_output(log, fds=False):
            print("visible")
            print("on stderr", file=sys.stderr)
            raise RuntimeError

    with pytest.raises(RuntimeError):
        body()
    assert (sys.stdout, sys.stderr) == before
    print("not captured")
    log.close()
    assert (tmp_path / "run.log").read_text() == "visible\non stderr\n"


def test_stream_replaced_by_the_user_is_left_alone(tmp_path: Path) -> None:
    """A sys.stdout the body replaced (redirect_stdout) is not clobbered by the capture's end."""
    log = LogFile(tmp_path / "run.log")
    buffer = io.StringIO()
    with capture_output(log, fds=False), contextlib.redirect_stdout(buffer):
        print("into the buffer")
    assert buffer.getvalue() == "into the buffer\n"
    log.close()
    assert (tmp_path / "run.log").read_text() == ""


def test_writes_after_close_are_dropped(tmp_path: Path) -> None:
    """A late writer (a thread outliving the run) cannot fail on a closed run.log."""
    log = LogFile(tmp_path / "run.log")
    log.write("kept\n")
    log.close()
    log.write("dropped\n")
    time.sleep(0)
    assert (tmp_path / "run.log").read_text() == "kept\n"
