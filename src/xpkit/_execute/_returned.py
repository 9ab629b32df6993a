"""A stage's return value kept in its run directory, so that a later call can reuse the run.

Plain data (``None``, booleans, numbers, strings, lists and string-keyed dicts of them, which
JSON gives back exactly) is written to ``.xpkit/result.json``; anything else is pickled to
``.xpkit/result.pickle``, preceded by an HMAC-SHA256 of the pickle under a key of this
project clone. A pickle is loaded only when its HMAC checks out: one that arrived from a
store (made elsewhere, or altered there) is never unpickled — unpickling runs code, and
stores are untrusted. JSON is read from anywhere.

The key lives in the git directory (``<git common dir>/xpkit/result.key``, never pushed,
never in a snapshot), or in ``<results>/.xpkit/`` outside git; it is made on first use.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import math
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core._paths import RunPaths, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from .._core._settings import Settings
    from ._context import ActiveRun

__all__ = ["NOT_KEPT", "load_result", "read_reuses", "record_reuse", "save_result"]

NOT_KEPT: Any = object()
"""What :func:`load_result` returns for a run whose value cannot be given back."""

_KEY_BYTES = 32
_MAC_BYTES = hashlib.sha256().digest_size
_keys: dict[Path, bytes] = {}


def save_result(active: ActiveRun, value: Any) -> None:
    """Keep ``value`` in the run directory; a value that cannot be kept is only a warning."""
    paths = active.paths
    try:
        paths.xpkit_dir.mkdir(exist_ok=True)
        if _plain(value):
            atomic_write_text(paths.result_json, json.dumps(value))
            kind = "json"
        else:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            atomic_write_bytes(paths.result_pickle, _sign(active.settings, data) + data)
            kind = "pickle"
    except Exception as e:  # unpicklable (a generator, a lock), or no room: not reusable
        active.logger.warning(
            "return value not kept (%s: %s); this run cannot be reused", type(e).__name__, e
        )
        return
    active.publish("returned", kind)


def load_result(run_dir: Path, settings: Settings) -> Any:
    """The return value kept in ``run_dir``, or :data:`NOT_KEPT` (none, unreadable, or a
    pickle not signed by this project: pulled from a store)."""
    paths = RunPaths(run_dir)
    try:
        return json.loads(paths.result_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return NOT_KEPT
    try:
        blob = paths.result_pickle.read_bytes()
    except OSError:
        return NOT_KEPT
    mac, data = blob[:_MAC_BYTES], blob[_MAC_BYTES:]
    if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, _sign(settings, data)):
        return NOT_KEPT
    try:
        return pickle.loads(data)  # signed by this project's key: written by one of its runs
    except Exception:
        return NOT_KEPT


def record_reuse(run_dir: Path, *, by: str | None) -> None:
    """Append a line to the run's ``reuses.jsonl``; never into a run linked from a store."""
    paths = RunPaths(run_dir)
    if paths.dir.is_symlink():
        return
    line = json.dumps({"time": dt.datetime.now().astimezone().isoformat(), "by": by})
    with contextlib.suppress(OSError):
        paths.xpkit_dir.mkdir(exist_ok=True)
        with paths.reuses.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def read_reuses(run_dir: Path) -> list[dict[str, Any]]:
    """The calls that reused the run at ``run_dir``: ``{"time", "by"}``, oldest first."""
    try:
        lines = RunPaths(run_dir).reuses.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def _plain(value: Any) -> bool:
    """Whether JSON gives ``value`` back exactly (same types: no tuple, no int subclass)."""
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(_plain(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    return False


def _sign(settings: Settings, data: bytes) -> bytes:
    return hmac.new(_key(settings), data, hashlib.sha256).digest()


def _key(settings: Settings) -> bytes:
    """This project clone's key (made on first use, readable by its owner only)."""
    path = _key_path(settings)
    key = _keys.get(path)
    if key is None:
        key = _read_or_make_key(path)
        _keys[path] = key
    return key


def _key_path(settings: Settings) -> Path:
    git = _git_common_dir(settings.root)
    base = git / "xpkit" if git is not None else settings.results_path / ".xpkit"
    return base / "result.key"


def _git_common_dir(root: Path) -> Path | None:
    """The git directory shared by the worktrees of the repo at ``root`` (no git process)."""
    dot_git = root / ".git"
    if dot_git.is_dir():
        return dot_git
    try:
        text = dot_git.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    git_dir = (root / text.removeprefix("gitdir:").strip()).resolve()
    try:
        common = (git_dir / "commondir").read_text(encoding="utf-8").strip()
    except OSError:
        return git_dir
    return (git_dir / common).resolve()


def _read_or_make_key(path: Path) -> bytes:
    with contextlib.suppress(OSError):
        key = path.read_bytes()
        if len(key) == _KEY_BYTES:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(_KEY_BYTES))
    try:
        os.link(tmp, path)  # atomic, and the first process to make a key wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    key = path.read_bytes()
    if len(key) != _KEY_BYTES:
        msg = f"{path}: not a result key ({len(key)} bytes); delete it to make a new one"
        raise OSError(msg)
    return key
