"""What differs between two runs: config, code, data, environment and metrics.

Code diffs use the code-snapshot module when present (else ``git diff`` directly); per-file
data differences use the hashing module's manifests when present (else only "the hash
changed"). Both are looked up at call time, so this module works without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._catalog._run import Run
from .._core._flat import flatten
from ..errors import XpkitError

__all__ = [
    "MISSING",
    "Change",
    "CodeDiff",
    "DataChange",
    "code_diff",
    "config_changes",
    "data_changes",
    "env_changes",
    "metric_changes",
]


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Change:
    """One key whose value differs; :data:`MISSING` on the side that lacks it."""

    key: str
    before: Any
    after: Any


def diff_mappings(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Change]:
    """The keys of two flat mappings whose values differ, in first-seen order."""
    keys = dict.fromkeys([*a, *b])
    return [
        Change(k, a.get(k, MISSING), b.get(k, MISSING))
        for k in keys
        if a.get(k, MISSING) != b.get(k, MISSING)
        or type(a.get(k, MISSING)) is not type(b.get(k, MISSING))
    ]


def config_changes(a: Run, b: Run) -> list[Change]:
    """Config values that differ, as dotted keys (``save_dir`` left out: it always does)."""
    before, after = flatten(a.lock.config), flatten(b.lock.config)
    return [c for c in diff_mappings(before, after) if c.key != "save_dir"]


def metric_changes(a: Run, b: Run) -> list[Change]:
    """Last metric values that differ."""
    return diff_mappings(a.metrics, b.metrics)


def env_changes(a: Run, b: Run) -> list[Change]:
    """Python version, platform and installed packages that differ (``packages.NAME`` keys)."""
    ea, eb = a.lock.env or {}, b.lock.env or {}
    out = [
        Change(k, ea.get(k, MISSING), eb.get(k, MISSING))
        for k in ("python", "platform")
        if ea.get(k, MISSING) != eb.get(k, MISSING)
    ]
    pa, pb = ea.get("packages") or {}, eb.get("packages") or {}
    return out + [
        Change(f"packages.{c.key}", c.before, c.after)
        for c in diff_mappings(pa, pb)
        if isinstance(pa, Mapping) and isinstance(pb, Mapping)
    ]


@dataclass(frozen=True)
class DataChange:
    """A tracked data entry whose hash differs; file lists when both runs have manifests."""

    name: str
    before: str | None
    after: str | None
    added: list[str] | None = None
    removed: list[str] | None = None
    modified: list[str] | None = None


def data_changes(a: Run, b: Run) -> list[DataChange]:
    """Tracked data whose hash differs between the two runs."""
    da, db = a.lock.data or {}, b.lock.data or {}
    out: list[DataChange] = []
    for name in dict.fromkeys([*da, *db]):
        ha, hb = _hash(da.get(name)), _hash(db.get(name))
        if ha != hb:
            added, removed, modified = _file_changes(a, b, str(name))
            out.append(DataChange(str(name), ha, hb, added, removed, modified))
    return out


def _hash(entry: Any) -> str | None:
    if isinstance(entry, Mapping):
        value = entry.get("hash")
        return str(value) if value is not None else None
    return None


def _file_changes(
    a: Run, b: Run, name: str
) -> tuple[list[str] | None, list[str] | None, list[str] | None]:
    """(added, removed, modified) files from the two manifests, or Nones without them."""
    from ._data import diff_manifests, load_manifest

    try:
        ma = load_manifest(a.dir, name)
        mb = load_manifest(b.dir, name)
    except (OSError, ValueError):  # an unreadable manifest: only the hash is known
        return None, None, None
    if ma is None or mb is None:
        return None, None, None
    return diff_manifests(ma, mb)


@dataclass(frozen=True)
class CodeDiff:
    """The code difference of two runs: ``text`` (a git diff or stat), or why there is none."""

    commit_a: str | None
    commit_b: str | None
    text: str = ""
    note: str = ""


def code_diff(a: Run, b: Run, *, stat: bool = True) -> CodeDiff:
    """``git diff`` (``--stat`` when ``stat``) between the two runs' code snapshots."""
    ca, cb = a.commit, b.commit
    if ca is None or cb is None:
        which = " and ".join(n for n, c in (("A", ca), ("B", cb)) if c is None)
        return CodeDiff(ca, cb, note=f"no code snapshot recorded in run {which}")
    if ca == cb:
        return CodeDiff(ca, cb, note=f"same code snapshot {ca[:7]}")
    root = b.root
    from ._git import code_diff as git_code_diff

    try:
        text = git_code_diff(root, ca, cb, stat=stat)
    except XpkitError as e:  # git missing, or the snapshots were not fetched here
        return CodeDiff(ca, cb, note=f"snapshots not available here: {e}")
    if not text.strip():
        return CodeDiff(ca, cb, note="snapshots differ but hold the same files")
    return CodeDiff(ca, cb, text=text)
