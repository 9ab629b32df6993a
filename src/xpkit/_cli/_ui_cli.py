"""``xp ui [STAGE] [--port N] [--open]``: the MLflow UI, opened where a researcher looks.

Prints where the store is and the address of the runs table of STAGE (with the ``xpkit``
view: its changed config keys and metrics as columns), or of the experiment list and each
stage's runs table; serves the project's own store on 127.0.0.1 (a store on an MLflow
server is only addressed, not served); ``--open`` opens the address in the user's browser
once the server answers.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path
from typing import Any

from .._catalog._run import Run
from .._core._settings import Settings, load_settings
from ..errors import LockError, RunNotFoundError

__all__ = ["ui_command"]

READY_TIMEOUT_S = 180.0  # `mlflow server` answers in ~20 s on a small machine; more when busy
STAGES_SHOWN = 12
STOP_TIMEOUT_S = 5.0  # then SIGKILL: mlflow server 3.17 hung on its job consumers after SIGTERM


def ui_command(argv: list[str]) -> int:
    """``xp ui [STAGE] [--port N] [--open]``."""
    parser = argparse.ArgumentParser(
        prog="xp ui",
        description="Serve the MLflow UI of the project's tracking store on 127.0.0.1 "
        "(foreground; Ctrl-C stops it) and print the address of the runs table.",
    )
    parser.add_argument(
        "stage",
        nargs="?",
        metavar="STAGE",
        help="the stage whose runs table to address (a name, or its results directory); "
        "default: the experiment list",
    )
    parser.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    parser.add_argument(
        "--open", action="store_true", help="open the address in a browser once served"
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be 1-65535, got {args.port}")
    settings = load_settings()
    from .._tracking._mlflow import Syncer

    syncer = Syncer(settings=settings)  # creates/migrates the store under the project lock
    remote = syncer.uri.startswith(("http://", "https://"))
    base = syncer.uri.rstrip("/") if remote else f"http://127.0.0.1:{args.port}"
    stage = _stage_name(args.stage) if args.stage else None
    try:
        addresses = _addresses(syncer.client, base, stage, store=syncer.uri, settings=settings)
    except (syncer.mlflow.exceptions.MlflowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _fail(f"cannot read the experiments of {syncer.uri}: {first}")
        return 2
    _say(f"store {_store_text(syncer.uri, settings)}")
    for line in addresses[1:]:
        _say(line)
    if remote:
        return _open(addresses[0], enabled=args.open, ready=None)
    if not _port_free(args.port):
        _fail(f"port {args.port} on 127.0.0.1 is in use; give another one: --port N")
        return 2
    return _serve(syncer.uri, args.port, addresses[0], open_browser=args.open)


def _say(text: str) -> None:
    print(f"xp ui: {text}", flush=True)


def _fail(text: str) -> None:
    print(f"xp ui: error: {text}", file=sys.stderr, flush=True)


def _stage_name(arg: str) -> str:
    """A stage name, from itself, a stage's results directory or a run directory."""
    path = Path(arg)
    if not path.is_dir():
        return arg
    with contextlib.suppress(LockError):
        return Run(path).stage
    return path.resolve().name


def _store_text(uri: str, settings: Settings) -> str:
    from .._tracking._mlflow import artifacts_root

    if not uri.startswith("sqlite:///"):
        return uri
    db = settings.relative(uri[len("sqlite:///") :])
    root = artifacts_root(uri)
    artifacts = f", artifacts in {settings.relative(root)}" if root is not None else ""
    return f"{db} ({uri}{artifacts})"


def _addresses(
    client: Any, base: str, stage: str | None, *, store: str, settings: Settings
) -> list[str]:
    """The address to open first, then the lines that say what each address shows."""
    from .._tracking._ui import VIEW_TAG, experiments_route, runs_route

    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    # a stage of this project whose experiment has no view: synced by an older xpkit
    old = [e for e in experiments if VIEW_TAG not in e.tags and _has_runs(settings, e.name)]
    hint = "runs synced by an older xpkit lack datasets, sweeps and notes: `xp log` adds them"
    by_name = {e.name: e for e in experiments}
    if stage is not None and stage not in by_name:
        known = sorted(by_name)
        close = difflib.get_close_matches(stage, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(known) or "none yet"
        msg = (
            f"no runs of stage {stage!r} in {store}{hint} (stages: {listing}; "
            "`xp log` syncs runs that are missing)"
        )
        raise RunNotFoundError(msg)

    def runs_url(exp: Any) -> str:
        return base + "/" + runs_route(exp.experiment_id, view=VIEW_TAG in exp.tags)

    if stage is not None:
        url = runs_url(by_name[stage])
        return [url, f"runs of {stage}: {url}"] + ([hint] if stage in {e.name for e in old} else [])
    url = f"{base}/{experiments_route()}"
    lines = [url, f"experiments: {url}"]
    shown = sorted(experiments, key=lambda e: e.name)
    lines += [f"runs of {e.name}: {runs_url(e)}" for e in shown[:STAGES_SHOWN]]
    if len(shown) > STAGES_SHOWN:
        lines.append(f"... and {len(shown) - STAGES_SHOWN} more stages (xp ui STAGE)")
    return lines + ([hint] if old else [])


def _has_runs(settings: Settings, stage: str) -> bool:
    try:
        return (settings.results_path / stage).is_dir()
    except (OSError, ValueError):  # an experiment name that is no path
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _serve(uri: str, port: int, url: str, *, open_browser: bool) -> int:
    from .._tracking._mlflow import artifacts_root

    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    root = artifacts_root(uri)
    if root is not None:
        cmd += ["--artifacts-destination", root.as_uri()]
    _say(f"starting the MLflow server on 127.0.0.1:{port} (Ctrl-C stops it)")
    # its own process group: `mlflow server` starts workers and job consumers that outlive a
    # SIGTERM to it alone (it then waits for them forever); stopping ends the whole group
    server = subprocess.Popen(cmd, start_new_session=True)
    ready = f"http://127.0.0.1:{port}/health"
    threading.Thread(
        target=_open,
        args=(url,),
        kwargs={"enabled": open_browser, "ready": (ready, server)},
        daemon=True,
    ).start()

    def stop(signum: int, frame: Any) -> None:
        raise _Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except (KeyboardInterrupt, _Stopped) as e:
        _say("stopping the MLflow server")
        _stop_group(server)
        return 130 if isinstance(e, KeyboardInterrupt) else 143
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stopped(Exception):
    """SIGTERM to `xp ui`."""


def _stop_group(server: subprocess.Popen[Any]) -> None:
    """End the server's process group: SIGTERM, then SIGKILL what is left after a while."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):  # its workers, if they linger
            os.killpg(server.pid, signal.SIGKILL)
        return


def _open(url: str, *, enabled: bool, ready: tuple[str, subprocess.Popen[Any]] | None) -> int:
    """Wait for the server (when ours) to answer, say so, and open ``url`` if asked."""
    if ready is not None:
        if not _wait_ready(*ready):
            return 1
        _say(f"ready: {url}")
    if not enabled:
        return 0
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        _say("no browser found here (set BROWSER to one); open the address above yourself")
        return 0
    if not browser.open(url):
        _say(f"the browser ({getattr(browser, 'name', 'default')}) did not open the address")
    return 0


def _wait_ready(health: str, server: subprocess.Popen[Any]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False  # it said why on its own output
        try:
            with urllib.request.urlopen(health, timeout=5) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    _say(f"the MLflow server did not answer in {READY_TIMEOUT_S:.0f} s")
    return False
