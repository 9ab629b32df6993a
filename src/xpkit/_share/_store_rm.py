"""``xp store rm``: delete runs from a store, never one a kept stored run lists as upstream.

A stored run is ``runs/<id>/`` (see ``_store.py``). Its ``COMPLETE`` marker goes first, so
that a removal killed midway leaves an incomplete run (``xp store ls`` says so, a pull
refuses it), never a complete-looking one with files missing; then its files, then its
manifest. Code bundles are shared by every run of a lineage and stay.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._catalog._where import compile_where
from .._core._flat import flatten
from .._core._lock import RunLock
from .._core._settings import Settings, load_settings
from .._core._yaml import load_yaml
from ..errors import LockError, RunInUseError, RunNotFoundError
from ._pull import match_run
from ._storage import Store, open_store
from ._store import run_key

__all__ = ["StoreRemoval", "store_rm"]

_SHOWN = 5


@dataclass(frozen=True)
class StoreRemoval:
    """The stored runs ``store_rm`` deletes (or would, with ``dry_run``): id -> manifest;
    ``kept_by`` pairs ``(needed id, kept id)`` of stored runs listing one as upstream."""

    store: str
    runs: dict[str, dict[str, Any]]
    kept_by: tuple[tuple[str, str], ...]
    dry_run: bool


def store_rm(
    runs: Sequence[str] = (),
    *,
    store: str | os.PathLike[str] | None = None,
    where: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> StoreRemoval:
    """Delete runs from a store: those named by id prefix, or those matching ``where``
    (the ``xp ls`` language, read from each stored run.lock).

    Raises:
        RunInUseError: a kept stored run lists a run to delete as upstream (without ``force``).
        RunNotFoundError: an id prefix matches no stored run.
        StoreError: no store, or the store cannot be read.
    """
    st = open_store(store, settings or load_settings())
    manifests = _manifests(st)
    chosen = _choose(st, manifests, runs, where)
    kept_by = tuple(
        (up, rid)
        for rid, m in manifests.items()
        if rid not in chosen
        for up in m.get("upstream", [])
        if up in chosen
    )
    if kept_by and not force:
        shown = ", ".join(f"{up} (upstream of {rid})" for up, rid in kept_by[:_SHOWN])
        more = f" and {len(kept_by) - _SHOWN} more" if len(kept_by) > _SHOWN else ""
        msg = f"kept runs in {st.url} need runs to delete: {shown}{more}; use --force"
        raise RunInUseError(msg)
    removal = StoreRemoval(st.url, {r: manifests[r] for r in chosen}, kept_by, dry_run)
    if not dry_run:
        for run_id in chosen:
            _delete(st, run_id)
    return removal


def _manifests(st: Store) -> dict[str, dict[str, Any]]:
    """Every stored run's manifest (an unreadable one as ``{}``)."""
    out: dict[str, dict[str, Any]] = {}
    for run_id in st.children("runs"):
        data = st.read_bytes(run_key(run_id, "manifest.json"))
        try:
            manifest = json.loads(data or b"")
        except ValueError:
            manifest = {}
        out[run_id] = manifest if isinstance(manifest, dict) else {}
    return out


def _choose(
    st: Store, manifests: dict[str, dict[str, Any]], runs: Sequence[str], where: str | None
) -> list[str]:
    if where is None:
        if not runs:
            msg = "no run given: name stored runs by id prefix, or use --where EXPR"
            raise RunNotFoundError(msg)
        return list(dict.fromkeys(match_run(st, prefix) for prefix in runs))
    pool = [match_run(st, p) for p in runs] if runs else list(manifests)
    records = {rid: _record(st, rid, manifests[rid]) for rid in pool}
    check = compile_where(where, {k for rec in records.values() for k in rec})
    return [rid for rid, rec in records.items() if check(rec)]


def _record(st: Store, run_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The stored run as ``xp ls`` records it, from its stored run.lock when readable."""
    record: dict[str, Any] = {
        "id": run_id,
        "stage": manifest.get("stage"),
        "dir": manifest.get("dir"),
        "status": manifest.get("status"),
        "started": manifest.get("started"),
    }
    lock = _stored_lock(st, run_id)
    if lock is not None:
        record.update(duration_s=lock.duration_s, commit=(lock.src or {}).get("commit"))
        flatten(lock.config, "config.", into=record)
        record.update({f"metrics.{k}": v for k, v in (lock.metrics or {}).items()})
    return record


def _stored_lock(st: Store, run_id: str) -> RunLock | None:
    data = st.read_bytes(run_key(run_id, "files/run.lock"))
    if data is None:
        return None
    try:
        parsed = load_yaml(data.decode("utf-8", "replace"))
        return RunLock.from_dict(parsed, source=f"{st.url} run {run_id}")
    except (LockError, ValueError, TypeError, AttributeError):
        return None  # untrusted content: filter on the manifest's fields only


def _delete(st: Store, run_id: str) -> None:
    """COMPLETE first, then the files, then the manifest; empty local folders after."""
    st.remove([run_key(run_id, "COMPLETE")])
    files = sorted(st.sizes(run_key(run_id, "files")))
    st.remove([run_key(run_id, f"files/{rel}") for rel in files])
    st.remove([run_key(run_id, "manifest.json")])
    st.remove([run_key(run_id, rel) for rel in st.sizes(f"runs/{run_id}")])
    top = st.local_dir(f"runs/{run_id}")
    if top is not None:
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):  # not empty: something we did not put there
                os.rmdir(dirpath)
