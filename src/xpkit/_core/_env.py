"""The environment of a run: python, platform, host, packages, gpu, slurm."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

__all__ = ["collect_env", "hostname", "pid_alive"]

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


def hostname() -> str:
    """The machine's name (``socket.gethostname()``, without importing socket)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def pid_alive(pid: int) -> bool | None:
    """Whether process ``pid`` of this host is alive; None where this cannot be asked.

    Windows has no signal 0 (``os.kill`` would end the process): None there. A pid no
    process can have (0 or less, beyond the kernel's range) is not alive: ``os.kill`` would
    signal a process group, or fail.
    """
    if os.name == "nt":
        return None
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True  # alive, owned by someone else
    return True


def collect_env() -> dict[str, Any]:
    """Describe the interpreter, machine, installed packages, GPUs and Slurm job."""
    import platform

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": _platform(),
        "host": hostname(),
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

    Scans the ``sys.path`` directories for ``*.dist-info`` / ``*.egg-info`` like
    ``importlib.metadata`` does (the first found wins), reading only the header lines of
    each METADATA file: importing ``importlib.metadata`` and its email parser costs
    ~20 ms plus ~1 ms per package, paid in a thread competing with the body.
    """
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip file, a missing directory
            continue
        for name in names:
            if name.endswith(".dist-info"):
                meta = os.path.join(entry, name, "METADATA")
            elif name.endswith(".egg-info"):
                meta = os.path.join(entry, name)
                if os.path.isdir(meta):
                    meta = os.path.join(meta, "PKG-INFO")
            else:
                continue
            dist, version = _name_and_version(meta)
            if dist and version:
                found.setdefault(_normalize(dist), version)
    return dict(sorted(found.items()))


def _name_and_version(path: str) -> tuple[str | None, str | None]:
    """``Name`` and ``Version`` from the headers of a METADATA / PKG-INFO file."""
    name = version = None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # end of the headers
                if line.startswith("Name:"):
                    name = line[5:].strip()
                elif line.startswith("Version:"):
                    version = line[8:].strip()
                if name and version:
                    break
    except OSError:
        pass
    return name, version


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _platform() -> str:
    """``platform.platform()``, without its scan of the python binary for the libc on Linux."""
    import platform

    uname = platform.uname()
    libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    if uname.system == "Linux" and libc and libc.startswith("glibc "):
        return f"{uname.system}-{uname.release}-{uname.machine}-with-glibc{libc.split()[1]}"
    return platform.platform()


def gpus() -> list[dict[str, str]]:
    """List the GPUs reported by ``nvidia-smi``; empty when there is none or no driver."""
    import shutil
    import subprocess

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
