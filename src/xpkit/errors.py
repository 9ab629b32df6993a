"""Exceptions raised by xpkit.

Every error derives from :class:`XpkitError`; most also derive from the builtin they
resemble, so ``except ValueError`` keeps working for callers who do not know xpkit::

    XpkitError
    ├── ConfigError (ValueError)          bad config key, value, file or experiment
    ├── SettingsError (ValueError)        bad [tool.xpkit] table in pyproject.toml
    ├── ExpressionError (ValueError)      bad ``xp ls --where`` expression
    ├── LockError (ValueError)            unreadable or invalid run.lock
    │   └── LockVersionError              run.lock written by a newer xpkit
    ├── RunNotFoundError (LookupError)    no run matches a directory or id prefix
    │   └── AmbiguousRunError             an id prefix matches several runs
    ├── DataError (FileNotFoundError)     a tracked data path is missing or unreadable
    ├── WriteError (OSError)              a file xpkit must write cannot be (read-only, full)
    │   └── RunDirError                   a run directory cannot be created or written
    ├── UpstreamError (ValueError)        an upstream run is missing or not completed
    ├── RunInUseError (ValueError)        a run to delete is an upstream of a kept run
    ├── GitError (RuntimeError)           a git command failed
    ├── StoreError (RuntimeError)         push / pull to a store failed
    │   └── UnsafePathError (ValueError)  a store entry would write outside the project
    ├── TaskError (RuntimeError)          a map or sweep cannot run as asked
    │   └── TasksFailed                   tasks of a map failed or never ran (all recorded)
    ├── StageImportError (ImportError)    a stage recorded in run.lock cannot be imported
    ├── RerunError (RuntimeError)         a past run cannot be run again as asked
    │   ├── InputChangedError (ValueError) an input of the run changed since (xp rerun)
    │   └── NotReproducibleError          a rerun's outputs differ (xp rerun --verify)
    └── NotInRunError (RuntimeError)      a run-only function was called outside a run
"""

from __future__ import annotations

__all__ = [
    "AmbiguousRunError",
    "ConfigError",
    "DataError",
    "ExpressionError",
    "GitError",
    "InputChangedError",
    "LockError",
    "LockVersionError",
    "NotInRunError",
    "NotReproducibleError",
    "RerunError",
    "RunDirError",
    "RunInUseError",
    "RunNotFoundError",
    "SettingsError",
    "StageImportError",
    "StoreError",
    "TaskError",
    "TasksFailed",
    "UnsafePathError",
    "UpstreamError",
    "WriteError",
    "XpkitError",
    "missing_extra",
]


class XpkitError(Exception):
    """Base class of every error raised by xpkit."""


class ConfigError(XpkitError, ValueError):
    """A config key, value, file or experiment is invalid."""


class SettingsError(XpkitError, ValueError):
    """The ``[tool.xpkit]`` table of ``pyproject.toml`` is invalid."""


class ExpressionError(XpkitError, ValueError):
    """An ``xp ls --where`` expression cannot be parsed."""


class LockError(XpkitError, ValueError):
    """A run.lock file cannot be read or does not follow the schema."""


class LockVersionError(LockError):
    """A run.lock was written by a newer xpkit with a schema this one does not know."""


class RunNotFoundError(XpkitError, LookupError):
    """No run matches a run directory or run id prefix."""


class AmbiguousRunError(RunNotFoundError):
    """A run id prefix matches more than one run."""


class DataError(XpkitError, FileNotFoundError):
    """A tracked data path is missing or cannot be read."""


class WriteError(XpkitError, OSError):
    """A file or directory xpkit must write cannot be written (read-only, disk full, denied)."""


class RunDirError(WriteError):
    """A run directory cannot be created or written (read-only filesystem, disk full)."""


class UpstreamError(XpkitError, ValueError):
    """An upstream run is missing or did not complete."""


class RunInUseError(XpkitError, ValueError):
    """A run to delete is an upstream of a run that is kept."""


class GitError(XpkitError, RuntimeError):
    """A git command failed."""


class StoreError(XpkitError, RuntimeError):
    """Pushing to or pulling from a store failed."""


class UnsafePathError(StoreError, ValueError):
    """A store entry or pulled run.lock would write outside the project."""


class TaskError(XpkitError, RuntimeError):
    """A map or sweep cannot run as asked (bad tasks, inconsistent bookkeeping)."""


class TasksFailed(TaskError):
    """Tasks of a map failed or never ran; each failure is recorded with its traceback."""


class StageImportError(XpkitError, ImportError):
    """The stage that made a run (run.lock ``entry``, or ``--stage``) cannot be imported."""


class RerunError(XpkitError, RuntimeError):
    """A past run cannot be run again as asked (no code snapshot, no entry, a failed rerun)."""


class InputChangedError(RerunError, ValueError):
    """An input of a past run changed since it ran (``xp rerun`` without
    ``--allow-changed-data``)."""


class NotReproducibleError(RerunError):
    """A rerun's output files differ from the original's (``xp rerun --verify``)."""


class NotInRunError(XpkitError, RuntimeError):
    """A function that needs a running stage was called outside one."""


def missing_extra(package: str, extra: str) -> ImportError:
    """Return the ImportError raised when an optional dependency is not installed."""
    msg = f"{package} is not installed; install it with: pip install 'xpkit[{extra}]'"
    return ImportError(msg)
