"""Session fixture giving the tests a real Slurm cluster.

Import it from conftest.py (``from slurm_cluster import slurm_cluster``). Order of choice:

1. ``XPKIT_TEST_SLURM=0``: skip every test that uses the fixture.
2. ``SLURM_CONF`` is set and that cluster answers, with accounting: use it, never stop it.
3. ``XPKIT_TEST_SLURM_BASE`` is set: the cluster of ``scripts/slurm_up.sh`` in that
   directory, used if it answers, else started there (and then stopped at session end).
4. Running as root: start a cluster of our own in a fresh directory, on free ports, and stop
   and delete it at session end.
5. Otherwise skip, with the reason. With ``XPKIT_TEST_SLURM=1`` the tests fail instead of
   skipping (CI sets it, so a broken cluster cannot pass unnoticed).

A cluster this fixture starts is marked with the session's pid (``owner`` in its directory).
Another session never uses such a cluster while its owner runs (the owner stops it when it
ends, maybe in the middle of the other's tests): it starts its own instead. Clusters on the
machine do not collide: ``slurm_up.sh`` picks free ports for each.

The cluster must have accounting (``sacct``): without it submitit cannot tell that a job died
and waits for it forever.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
OWNER = "owner"  # in a cluster's base directory: the pid of the test session that started it


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path  # the slurm.conf, also exported as SLURM_CONF
    partition: str  # the default partition
    cpus: int  # CPUs the (single) node advertises
    started: bool  # True when this session started it (and stops it)


def _run(cmd: list[str], conf: str, timeout: float = 15) -> subprocess.CompletedProcess[str] | None:
    """Run a Slurm client command against ``conf``; None when it cannot run or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    env = {**os.environ, "SLURM_CONF": conf}
    try:
        return subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _owned_elsewhere(conf: str) -> str | None:
    """Why the cluster of ``conf`` is not ours to use (another live session owns it), or None."""
    try:
        pid = int((Path(conf).parent / OWNER).read_text())
    except (OSError, ValueError):
        return None
    if pid == os.getpid() or not Path(f"/proc/{pid}").exists():
        return None
    return f"the cluster of {conf} belongs to test session {pid}, which stops it when it ends"


def _controller_up(conf: str) -> bool:
    ping = _run(["scontrol", "ping"], conf)  # fast when the controller is down; sinfo waits
    return ping is not None and " is UP" in ping.stdout


def _probe(conf: str) -> tuple[str, int] | str:
    """(default partition, cpus) if the cluster at ``conf`` is usable, else why not."""
    if not Path(conf).is_file():
        return f"no file {conf}"
    owned = _owned_elsewhere(conf)
    if owned:
        return owned
    if not _controller_up(conf):
        return f"no Slurm controller answers for {conf}"
    r = _run(["sinfo", "-h", "-o", "%P %c %T"], conf)
    if r is None or r.returncode != 0 or not r.stdout.strip():
        return f"sinfo does not answer for {conf}: {(r.stderr.strip() if r else 'no sinfo')}"
    rows = [line.split() for line in r.stdout.splitlines() if line.strip()]
    default = [row for row in rows if row[0].endswith("*")]
    partition, cpus, _state = (default or rows)[0]
    a = _run(["sacct", "-n", "-X", "-o", "JobID"], conf)
    if a is None or a.returncode != 0:
        return f"sacct does not work for {conf} (Slurm accounting is required)"
    return partition.rstrip("*"), int(cpus.rstrip("+"))


def _script(name: str, base: Path, *, purge: bool = False) -> tuple[bool, str]:
    """Run scripts/<name> BASE; (ok, tail of its output)."""
    env = {**os.environ, "SLURM_CI_PURGE": "1" if purge else "0"}
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: daemons outlive the script
        try:
            r = subprocess.run(
                ["bash", str(SCRIPTS / name), str(base)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=900,
            )
            ok = r.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        log.seek(0)
        tail = "\n".join(log.read().splitlines()[-20:])
    return ok, tail


def _start(base: Path) -> tuple[str, int] | str:
    """Start the cluster of ``base`` as this session's own; (partition, cpus) or why not."""
    ok, tail = _script("slurm_up.sh", base)
    if ok:
        (base / OWNER).write_text(str(os.getpid()))
    return _probe(str(base / "slurm.conf")) if ok else f"scripts/slurm_up.sh failed:\n{tail}"


def _existing(reasons: list[str]) -> tuple[str, tuple[str, int]] | None:
    """A usable cluster named by SLURM_CONF or XPKIT_TEST_SLURM_BASE: (conf, probe)."""
    base = os.environ.get("XPKIT_TEST_SLURM_BASE")
    named = (os.environ.get("SLURM_CONF"), str(Path(base) / "slurm.conf") if base else None)
    for conf in dict.fromkeys(c for c in named if c):
        probed = _probe(conf)
        if isinstance(probed, tuple):
            return conf, probed
        reasons.append(probed)
    return None


def _new_base() -> tuple[Path, bool]:
    """Where to start a cluster of our own: (base directory, delete it at the end).

    XPKIT_TEST_SLURM_BASE when no controller runs there (so all of it is ours to stop),
    else a fresh directory with a short path (for the unix sockets of munge and MariaDB).
    """
    named = os.environ.get("XPKIT_TEST_SLURM_BASE")
    if named:
        conf = str(Path(named) / "slurm.conf")
        if not _owned_elsewhere(conf) and not _controller_up(conf):
            return Path(named), False
    return Path(tempfile.mkdtemp(prefix="xpkit-slurm-")), True


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    wanted = os.environ.get("XPKIT_TEST_SLURM", "")
    if wanted == "0":
        pytest.skip("Slurm tests disabled (XPKIT_TEST_SLURM=0)")
    unavailable = pytest.fail if wanted == "1" else pytest.skip
    reasons: list[str] = []
    found = _existing(reasons)
    base, purge = None, False
    if found is None:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            unavailable(f"no Slurm cluster ({'; '.join(reasons)}) and not root to start one")
        base, purge = _new_base()
        probed = _start(base)
        if not isinstance(probed, tuple):
            _script("slurm_down.sh", base, purge=purge)  # whatever did start
            unavailable(f"could not start a Slurm cluster: {'; '.join([*reasons, probed])}")
            raise AssertionError  # unreachable: skip/fail raise
        found = str(base / "slurm.conf"), probed
    conf, (partition, cpus) = found

    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield SlurmCluster(
            conf=Path(conf), partition=partition, cpus=cpus, started=base is not None
        )
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if base is not None:
            (base / OWNER).unlink(missing_ok=True)
            _script("slurm_down.sh", base, purge=purge)
