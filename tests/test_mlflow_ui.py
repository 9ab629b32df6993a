"""`xp ui` as a researcher meets it: addresses, the served UI, and the page a real browser shows.

One project (prepare -> train, a run with overrides and a 3-point joblib sweep) is synced by
`xp log` into its default store, and one `xp ui --open` server (~20 s to start) serves it
for the whole module; its "browser" is a script that records the address it was given.
Stopping that `xp ui` with SIGTERM must end the MLflow server and all its workers (checked
when the module ends). The rendering tests drive headless Chromium (skipped, saying so,
when it is not installed; CI installs it) and keep a screenshot: in
``$XPKIT_TEST_ARTIFACTS`` when set, else in the test's temporary directory.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlflow_project import make_pipeline, project_env, run_dirs, run_in
from xpkit._catalog._run import Run

mlflow = pytest.importorskip("mlflow")

READY_S = 240  # the server answers in ~20 s; much more when the machine is busy
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # as root, Chromium refuses to start with its sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1920,1080",
    "--virtual-time-budget=30000",  # let the app fetch and render before the dump
]


@dataclass(frozen=True)
class Served:
    """The module's project and its running `xp ui`."""

    root: Path
    port: int
    lines: list[str]  # what `xp ui` printed
    opened: Path  # where the recording "browser" writes the address it got

    def address(self, label: str) -> str:
        """The address printed after ``xp ui: <label>: ``."""
        prefix = f"xp ui: {label}: "
        found = [line[len(prefix) :] for line in self.lines if line.startswith(prefix)]
        assert found, f"no {label!r} line in {self.lines}"
        return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The pipeline synced by `xp log` into results/mlflow.db, served by `xp ui --open`."""
    base = tmp_path_factory.mktemp("ui")
    root = make_pipeline(base / "proj")
    run_in(root, sys.executable, "-m", "xpkit", "log")
    opened = base / "opened.txt"
    browser = base / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {opened}\n')
    browser.chmod(0o755)
    port = free_port()
    out = base / "xp-ui.out"
    env = project_env(root, BROWSER=str(browser))
    with out.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "xpkit", "ui", "--port", str(port), "--open"],
            cwd=root,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        lines = _wait_for_line(out, "xp ui: ready", server)
        mlflow_server = _children(server.pid)
        yield Served(root=root, port=port, lines=lines, opened=opened)
        # SIGTERM to `xp ui` alone ends the MLflow server and every worker it started
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 143
        assert mlflow_server
        assert _session_members(mlflow_server[0], wait_s=30) == []
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _session_members(sid: int, *, wait_s: float) -> list[int]:
    """Processes still in session ``sid`` after at most ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(stat.parent.name))
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.5)


def _wait_for_line(out: Path, start: str, server: subprocess.Popen[bytes]) -> list[str]:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        lines = out.read_text().splitlines()
        if any(line.startswith(start) for line in lines):
            return [line for line in lines if line.startswith("xp ui:")]
        assert server.poll() is None, f"xp ui exited {server.returncode}:\n{out.read_text()}"
        time.sleep(0.5)
    pytest.fail(f"xp ui never said {start!r}:\n{out.read_text()}")


def experiment_id(served: Served, name: str) -> str:
    client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{served.port}")
    return str(client.get_experiment_by_name(name).experiment_id)


def test_xp_ui_says_where_the_store_is_and_the_address_of_each_runs_table(
    served: Served,
) -> None:
    """The store's path, the experiment list, and each stage's runs table with the xpkit view."""
    db = served.root / "results" / "mlflow.db"
    store = [line for line in served.lines if line.startswith("xp ui: store ")]
    assert store == [
        f"xp ui: store results/mlflow.db (sqlite:///{db}, artifacts in results/mlartifacts)"
    ]
    base = f"http://127.0.0.1:{served.port}"
    assert served.address("experiments") == f"{base}/#/experiments?workflowType=machine_learning"
    train = experiment_id(served, "train")
    assert served.address("runs of train") == (
        f"{base}/#/experiments/{train}/runs?workflowType=machine_learning&viewStateShareKey=xpkit"
    )


def test_xp_ui_serves_the_synced_runs_on_localhost(served: Served) -> None:
    """The MLflow REST API answers on 127.0.0.1 with every run of the project."""
    base = f"http://127.0.0.1:{served.port}/api/2.0/mlflow"
    with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=train") as r:
        exp = json.load(r)["experiment"]
    body = json.dumps({"experiment_ids": [exp["experiment_id"]], "max_results": 100}).encode()
    request = urllib.request.Request(
        f"{base}/runs/search", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.load(response)["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs]
    mirrored = sorted(t["xpkit.run_id"] for t in tags if "xpkit.run_id" in t)
    assert mirrored == sorted(Run(d).id for d in run_dirs(served.root, "train"))
    assert sum("xpkit.sweep.parent" in t for t in tags) == 1


def test_open_gives_the_address_to_the_users_browser_once_it_is_served(served: Served) -> None:
    """`--open` hands the printed address to $BROWSER after the server answered."""
    deadline = time.monotonic() + 30
    while not served.opened.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert served.opened.read_text().splitlines() == [served.address("experiments")]


def test_an_unknown_stage_is_a_one_line_error_naming_the_closest(served: Served) -> None:
    """`xp ui trian`: exit 2, the stages there are and the closest one, no server, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "xpkit", "ui", "trian", "--port", str(free_port())],
        cwd=served.root,
        env=project_env(served.root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("xp ui: error: no runs of stage 'trian' in sqlite:///")
    assert "did you mean 'train'?" in line
    assert "(stages: prepare, train;" in line
    assert "starting" not in done.stdout


def test_a_busy_port_is_a_one_line_error(served: Served) -> None:
    """A second `xp ui` on the port in use says so and how to choose another."""
    done = subprocess.run(
        [sys.executable, "-m", "xpkit", "ui", "--port", str(served.port)],
        cwd=served.root,
        env=project_env(served.root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr == (
        f"xp ui: error: port {served.port} on 127.0.0.1 is in use; give another one: --port N\n"
    )


def test_a_server_store_is_addressed_not_served_and_open_says_when_no_browser(
    served: Served, tmp_path: Path
) -> None:
    """With MLFLOW_TRACKING_URI on an MLflow server: its addresses, no local server started."""
    base = f"http://127.0.0.1:{served.port}"
    env = project_env(served.root, MLFLOW_TRACKING_URI=base, PATH=str(tmp_path))
    for name in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "xpkit", "ui", "train", "--open"],
        cwd=served.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"xp ui: store {base}" in lines
    train = experiment_id(served, "train")
    assert f"xp ui: runs of train: {base}/#/experiments/{train}/runs?" in done.stdout
    assert "starting the MLflow server" not in done.stdout
    assert "no browser found here" in lines[-1]


# --- in a real browser ---------------------------------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (apt-get install chromium; CI installs it)")


def render(url: str, shot: Path, profile: Path) -> str:
    """The page's text as Chromium renders it (after its JS ran), and a screenshot of it."""
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}"]
    done = subprocess.run(
        [*cmd, "--dump-dom", url], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.stat().st_size > 10_000  # a real picture, not an empty page
    return done.stdout


def text_of(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def artifact(tmp_path: Path, name: str) -> Path:
    """Where a screenshot is kept: $XPKIT_TEST_ARTIFACTS when set, else the test's tmp dir."""
    where = Path(os.environ.get("XPKIT_TEST_ARTIFACTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where / name


def test_the_browser_opens_on_the_train_runs_table_with_config_metric_and_dataset(
    served: Served, tmp_path: Path
) -> None:
    """Chromium renders the runs, an `lr` column, the metric and the dataset, not GenAI."""
    shot = artifact(tmp_path, "xp-ui-train-runs.png")
    dom = render(served.address("runs of train"), shot, tmp_path / "profile")
    text = text_of(dom)
    assert "No data available" not in text  # the GenAI overview's empty charts
    assert "Token Usage" not in text
    alone, *_ = run_dirs(served.root, "train")
    sweep = Run(run_dirs(served.root, "train")[-1]).lock.extra["sweep"]["id"]
    for shown in (alone.name, f"sweep-{sweep}", "Parameters", "lr", "Metrics", "train_loss"):
        assert shown in text, f"{shown!r} not on the page (screenshot: {shot})"
    runs = len(run_dirs(served.root, "train")) + 1  # and the sweep's parent, its points nested
    assert f"{runs} matching runs" in text
    assert "labels" in text  # the dataset column names what the runs read
    assert "train.py" in text  # the source, also of the loky-run sweep points


def test_the_run_page_shows_the_note_with_a_link_to_the_upstream_run(
    served: Served, tmp_path: Path
) -> None:
    """A train run's description renders; its upstream run is a link to prepare's run."""
    client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{served.port}")
    train = Run(run_dirs(served.root, "train")[0])
    (ml,) = client.search_runs(
        [experiment_id(served, "train")], f"tags.`xpkit.run_id` = '{train.id}'"
    )
    (prep,) = client.search_runs([experiment_id(served, "prepare")])
    url = f"http://127.0.0.1:{served.port}/#/experiments/{ml.info.experiment_id}/runs/"
    url += f"{ml.info.run_id}?workflowType=machine_learning"
    dom = render(url, artifact(tmp_path, "xp-ui-train-run.png"), tmp_path / "profile")
    route = f"#/experiments/{prep.info.experiment_id}/runs/{prep.info.run_id}"
    links = re.findall(r'<a [^>]*href="([^"]*)"[^>]*>([^<]*)</a>', dom)
    upstream = [text for href, text in links if href.startswith(route)]
    assert upstream == [f"prepare {prep.data.tags['xpkit.run_id']}"]
    text = text_of(dom)
    assert "changed from the stage's defaults" in text
    assert f"xp rerun {train.lock.dir}" in text


def test_a_server_store_that_does_not_answer_is_a_one_line_error(tmp_path: Path) -> None:
    """MLFLOW_TRACKING_URI on a server that is down: exit 2, one line naming it, no traceback."""
    uri = f"http://127.0.0.1:{free_port()}"
    env = project_env(
        tmp_path,
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    done = subprocess.run(
        [sys.executable, "-m", "xpkit", "ui"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"xp ui: error: cannot read the experiments of {uri}: ")
