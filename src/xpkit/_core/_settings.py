"""The project root and its settings, the ``[tool.xpkit]`` table of ``pyproject.toml``."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SettingsError

__all__ = ["Settings", "find_project_root", "load_settings"]


@dataclass(frozen=True)
class Settings:
    """Project settings read once from ``[tool.xpkit]``; every field has a default.

    Relative paths are relative to :attr:`root`.
    """

    root: Path
    results_dir: str = "results"
    # code snapshots (see _git.py)
    src: bool = True
    branch: str = "run_logs"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_file_mb: float = 10.0
    # data hashing (see _hashing.py); None means the default cache location
    hash_cache: str | None = None
    hash_jobs: int | None = None
    # MLflow (see _mlflow.py); None means sqlite:///<root>/<results_dir>/mlflow.db
    tracking: bool = True
    tracking_uri: str | None = None
    # push / pull (see _store.py)
    store: str | None = None

    @property
    def results_path(self) -> Path:
        """Absolute path of the results directory."""
        return self.root / self.results_dir

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """Return ``path`` made absolute against the project root."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p

    def relative(self, path: str | os.PathLike[str]) -> str:
        """Return ``path`` relative to the project root when inside it, else absolute (POSIX)."""
        p = Path(os.path.abspath(self.resolve(path)))
        try:
            return p.relative_to(self.root).as_posix() or "."
        except ValueError:
            return p.as_posix()


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "results_dir": (str,),
    "src": (bool,),
    "branch": (str,),
    "include": (list,),
    "exclude": (list,),
    "max_file_mb": (int, float),
    "hash_cache": (str,),
    "hash_jobs": (int,),
    "tracking": (bool,),
    "tracking_uri": (str,),
    "store": (str,),
}

_cache: dict[Path, Settings] = {}


def find_project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """Return the enclosing git work tree root of ``start`` (default: cwd), else ``start``.

    A ``.git`` file (linked worktree, submodule) counts like a ``.git`` directory. The
    ``XPKIT_ROOT`` environment variable, when set, wins (workers of a mapped run use it).
    """
    forced = os.environ.get("XPKIT_ROOT")
    if forced:
        return Path(forced).resolve()
    here = Path(start or os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".git").exists():
            return candidate
    return here


def load_settings(root: str | os.PathLike[str] | None = None) -> Settings:
    """Return the settings of the project at ``root`` (found from cwd by default), cached.

    Raises:
        SettingsError: the table has an unknown key or a value of the wrong type.
    """
    root_path = Path(root).resolve() if root is not None else find_project_root()
    settings = _cache.get(root_path)
    if settings is None:
        settings = _read(root_path)
        _cache[root_path] = settings
    return settings


def clear_settings_cache() -> None:
    """Forget cached settings (after editing ``pyproject.toml`` in a long-lived process)."""
    _cache.clear()


def _read(root: Path) -> Settings:
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return Settings(root=root)
    table = _load_toml(pyproject).get("tool", {}).get("xpkit", {})
    if not isinstance(table, dict):
        msg = f"{pyproject}: [tool.xpkit] must be a table"
        raise SettingsError(msg)
    return Settings(root=root, **{k: _check(pyproject, k, v) for k, v in table.items()})


def _load_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib  # type: ignore[import-not-found]
    try:
        with path.open("rb") as f:
            data: dict[str, Any] = tomllib.load(f)
            return data
    except tomllib.TOMLDecodeError as e:
        msg = f"{path}: invalid TOML: {e}"
        raise SettingsError(msg) from None


def _check(pyproject: Path, key: str, value: Any) -> Any:
    types = _FIELD_TYPES.get(key)
    if types is None:
        import difflib

        close = difflib.get_close_matches(key, _FIELD_TYPES, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        allowed = ", ".join(sorted(_FIELD_TYPES))
        msg = f"{pyproject}: unknown key [tool.xpkit] {key!r}{hint} (allowed: {allowed})"
        raise SettingsError(msg)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        msg = f"{pyproject}: [tool.xpkit] {key} must be {names}, got {value!r}"
        raise SettingsError(msg)
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            msg = f"{pyproject}: [tool.xpkit] {key} must be a list of strings, got {value!r}"
            raise SettingsError(msg)
        return tuple(value)
    return value


def settings_fields() -> list[str]:
    """Names of every ``[tool.xpkit]`` key."""
    return [f.name for f in dataclasses.fields(Settings) if f.name != "root"]
