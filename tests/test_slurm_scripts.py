"""scripts/slurm_up.sh and slurm_down.sh: clusters side by side on free ports, clear refusals."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_cluster import OWNER, _owned_elsewhere, _probe

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
DEFAULT_PORTS = (6817, 6818, 6819, 3307)  # slurmctld, slurmd, slurmdbd, MariaDB


@pytest.fixture
def base() -> Iterator[Path]:
    """A fresh base directory (short: it holds unix sockets); whatever starts there is stopped."""
    wanted = os.environ.get("XPKIT_TEST_SLURM", "")
    if wanted == "0":
        pytest.skip("Slurm tests disabled (XPKIT_TEST_SLURM=0)")
    unavailable = pytest.fail if wanted == "1" else pytest.skip
    if os.geteuid() != 0 or shutil.which("slurmctld") is None:
        unavailable("needs root and the Slurm packages (scripts/slurm_up.sh installs them)")
    path = Path(tempfile.mkdtemp(prefix="xpkit-slurm-"))
    yield path
    script("slurm_down.sh", path, SLURM_CI_PURGE="1")


def script(name: str, base: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPTS / name), str(base)],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


def listener(port: int) -> socket.socket | None:
    """A socket listening on ``port`` of every address, or None if the port is taken."""
    sock = socket.socket()
    try:
        sock.bind(("", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


def slurm(conf: Path, *cmd: str) -> str:
    env = {**os.environ, "SLURM_CONF": str(conf)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def accounted(conf: Path) -> str:
    """The state sacct records for the cluster's first job (the record comes a moment late)."""
    deadline = time.monotonic() + 60
    while not (states := slurm(conf, "sacct", "-X", "-n", "-o", "State").split()):
        assert time.monotonic() < deadline, "no accounting record"
        time.sleep(0.5)
    return states[0]


def test_a_second_cluster_starts_beside_one_on_the_default_ports(base: Path) -> None:
    """With 6817-6819 and 3307 taken, slurm_up picks other ports; jobs run and are accounted."""
    with contextlib.ExitStack() as held:
        for port in DEFAULT_PORTS:
            sock = listener(port)  # None: another cluster holds it already, as wanted
            if sock is not None:
                held.callback(sock.close)
        up = script("slurm_up.sh", base)
        assert up.returncode == 0, up.stderr
        ports = [int(p) for p in (base / "ports").read_text().split()]
        assert len(ports) == 4
        assert not set(ports) & set(DEFAULT_PORTS)
        assert up.stdout == f"export SLURM_CONF={base / 'slurm.conf'}\n"
        assert f"slurmctld :{ports[0]}" in up.stderr
        conf = base / "slurm.conf"
        assert slurm(conf, "srun", "-N1", "-t", "1", "echo", "ran").strip() == "ran"
        again = script("slurm_up.sh", base)  # idempotent: same ports, same answer
        assert again.returncode == 0, again.stderr
        assert [int(p) for p in (base / "ports").read_text().split()] == ports
        assert accounted(conf) == "COMPLETED"
    down = script("slurm_down.sh", base)
    assert down.returncode == 0, down.stderr
    assert not (base / "ports").exists()
    assert not list(base.glob("*.pid"))


def free_ports(n: int) -> list[int]:
    """``n`` ports that nothing listens on (picked by the kernel, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


@pytest.mark.parametrize(
    ("ports", "error"),
    [
        ("TAKEN P1 P2 P3", "port TAKEN (slurmctld) is taken"),
        ("P0 P1 TAKEN P3", "port TAKEN (slurmdbd) is taken"),
        ("P0 P1", "SLURM_CI_PORTS='P0 P1': give 4 ports"),
        ("P0 P1 P2 http", "SLURM_CI_PORTS='P0 P1 P2 http': give 4 ports"),
        ("P0 P1 P2 70000", "give 4 ports (slurmctld slurmd slurmdbd MariaDB)"),
    ],
    ids=["slurmctld-taken", "slurmdbd-taken", "too-few", "not-a-number", "out-of-range"],
)
def test_given_ports_taken_or_malformed_are_a_one_line_refusal(
    base: Path, ports: str, error: str
) -> None:
    """SLURM_CI_PORTS naming a taken port, or not 4 ports, stops slurm_up before any daemon."""
    names = {f"P{i}": str(port) for i, port in enumerate(free_ports(4))}
    sock = listener(0)
    assert sock is not None
    with sock:
        names["TAKEN"] = str(sock.getsockname()[1])
        for name, port in names.items():
            ports, error = ports.replace(name, port), error.replace(name, port)
        done = script("slurm_up.sh", base, SLURM_CI_PORTS=ports)
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("slurm_up.sh: ")
    assert error in done.stderr
    assert not list(base.rglob("*.pid"))  # nothing was started


def test_a_cluster_another_live_test_session_started_is_not_used(tmp_path: Path) -> None:
    """The session fixture leaves alone a cluster whose owner still runs: it would stop it."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=xpkit\n")
    with subprocess.Popen(["sleep", "60"]) as other:
        (tmp_path / OWNER).write_text(str(other.pid))
        assert f"belongs to test session {other.pid}" in str(_probe(str(conf)))
        other.kill()
    assert _owned_elsewhere(str(conf)) is None  # its owner is gone: nobody will stop it
    (tmp_path / OWNER).write_text(str(os.getpid()))
    assert _owned_elsewhere(str(conf)) is None  # ours
    (tmp_path / OWNER).unlink()
    assert _owned_elsewhere(str(conf)) is None  # started by hand or by CI
