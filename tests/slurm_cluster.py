"""Session fixture giving the tests a real Slurm cluster.

Import it from conftest.py (``from slurm_cluster import slurm_cluster``). Order of choice:

1. ``XPKIT_TEST_SLURM=0``: skip every test that uses the fixture.
2. ``SLURM_CONF`` is set and ``sinfo`` answers: use that cluster (never stopped here).
3. The cluster of ``scripts/slurm_up.sh`` at ``XPKIT_TEST_SLURM_BASE`` (default
   ``/tmp/xpkit-slurm``) already answers: use it, leave it running.
4. Running as root: start it with ``scripts/slurm_up.sh`` and stop it at session end.
5. Otherwise skip, with the reason. With ``XPKIT_TEST_SLURM=1`` the tests fail instead of
   skipping (CI sets it, so a broken cluster cannot pass unnoticed).

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
DEFAULT_BASE = "/tmp/xpkit-slurm"


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


def _probe(conf: str) -> tuple[str, int] | str:
    """(default partition, cpus) if the cluster at ``conf`` answers, else why not."""
    if not Path(conf).is_file():
        return f"no file {conf}"
    ping = _run(["scontrol", "ping"], conf)  # fast when the controller is down; sinfo waits
    if ping is None or " is UP" not in ping.stdout:
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


def _script(name: str, base: str) -> tuple[bool, str]:
    """Run scripts/<name> BASE; (ok, tail of its output)."""
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: daemons outlive the script
        try:
            r = subprocess.run(
                ["bash", str(SCRIPTS / name), base],
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


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    wanted = os.environ.get("XPKIT_TEST_SLURM", "")
    if wanted == "0":
        pytest.skip("Slurm tests disabled (XPKIT_TEST_SLURM=0)")
    unavailable = pytest.fail if wanted == "1" else pytest.skip
    old_conf = os.environ.get("SLURM_CONF")
    base = os.environ.get("XPKIT_TEST_SLURM_BASE", DEFAULT_BASE)
    own_conf = str(Path(base) / "slurm.conf")
    started = False
    reasons = []

    conf, found = "", None
    for candidate in dict.fromkeys(c for c in (old_conf, own_conf) if c):
        probed = _probe(candidate)
        if isinstance(probed, tuple):
            conf, found = candidate, probed
            break
        reasons.append(probed)
    if found is None:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            unavailable(f"no Slurm cluster ({'; '.join(reasons)}) and not root to start one")
        ok, tail = _script("slurm_up.sh", base)
        probed = _probe(own_conf) if ok else f"scripts/slurm_up.sh failed:\n{tail}"
        if not isinstance(probed, tuple):
            _script("slurm_down.sh", base)  # whatever did start
            unavailable(f"could not start a Slurm cluster: {probed}")
            raise AssertionError  # unreachable: skip/fail raise
        conf, found, started = own_conf, probed, True
    partition, cpus = found

    os.environ["SLURM_CONF"] = conf
    try:
        yield SlurmCluster(conf=Path(conf), partition=partition, cpus=cpus, started=started)
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if started:
            _script("slurm_down.sh", base)
