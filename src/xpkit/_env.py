"""The environment of a run: python, platform, host, packages, gpu, slurm."""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from typing import Any

__all__ = ["collect_env"]

_SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NAME",
    "SLURM_JOB_PARTITION",
    "SLURM_JOB_NODELIST",
    "SLURM_NTASKS",
    "SLURM_CPUS_PER_TASK",
    "SLURM_RESTART_COUNT",
)


def collect_env() -> dict[str, Any]:
    """Describe the interpreter, machine, installed packages, GPUs and Slurm job."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "packages": installed_packages(),
    }
    gpu = gpus()
    if gpu:
        env["gpu"] = gpu
    slurm = {k: v for k in _SLURM_VARS if (v := os.environ.get(k)) is not None}
    if slurm:
        env["slurm"] = slurm
    return env


def installed_packages() -> dict[str, str]:
    """Map every installed distribution's normalized name to its version, sorted.

    Reads only the header lines of each METADATA file: ``Distribution.metadata`` runs the
    email parser over whole files (long descriptions included), ~1 ms per package, which
    a run would pay in a thread competing with the body.
    """
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
        name, version = _name_and_version(text)
        if name and version:
            found.setdefault(_normalize(name), version)
    return dict(sorted(found.items()))


def _name_and_version(text: str) -> tuple[str | None, str | None]:
    name = version = None
    for line in text.splitlines():
        if not line:
            break  # end of the headers
        if line.startswith("Name:"):
            name = line[5:].strip()
        elif line.startswith("Version:"):
            version = line[8:].strip()
        if name and version:
            break
    return name, version


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def gpus() -> list[dict[str, str]]:
    """List the GPUs reported by ``nvidia-smi``; empty when there is none or no driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        out = subprocess.run(
            [exe, query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    return [{"name": r[0], "memory": r[1], "driver": r[2]} for r in rows if len(r) == 3]
