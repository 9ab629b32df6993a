"""The backends by name: ``serial``, ``joblib``, ``slurm`` (each imported when chosen).

A new backend is one module with one class (see ``_backends.Backend``) and one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from ._backends import Backend

__all__ = ["BACKENDS", "make_backend"]

_Options = Mapping[str, Any]


def _serial(jobs: int | None, slurm: _Options) -> Backend:
    from ._serial import SerialBackend

    _no_slurm_options("serial", slurm)
    return SerialBackend()


def _joblib(jobs: int | None, slurm: _Options) -> Backend:
    from ._joblib import JoblibBackend

    _no_slurm_options("joblib", slurm)
    return JoblibBackend(jobs)


def _slurm(jobs: int | None, slurm: _Options) -> Backend:
    from ._slurm import SlurmBackend

    return SlurmBackend(slurm)


_FACTORIES: dict[str, Callable[[int | None, _Options], Backend]] = {
    "serial": _serial,
    "joblib": _joblib,
    "slurm": _slurm,
}
BACKENDS = tuple(_FACTORIES)


def make_backend(name: str, *, jobs: int | None = None, slurm: _Options | None = None) -> Backend:
    """The backend ``name`` with its options.

    Raises:
        ConfigError: an unknown backend, or options it does not take.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        msg = f"unknown backend {name!r} (valid: {', '.join(BACKENDS)})"
        raise ConfigError(msg)
    if jobs is not None and jobs < 1:
        msg = f"jobs must be a positive number of processes, got {jobs}"
        raise ConfigError(msg)
    return factory(jobs, slurm or {})


def _no_slurm_options(name: str, slurm: _Options) -> None:
    if slurm:
        msg = f"Slurm options were given for backend {name!r}; use backend='slurm'"
        raise ConfigError(msg)
