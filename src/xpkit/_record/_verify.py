"""Comparing the outputs of two runs file by file: the check of ``xp rerun --verify``.

Every file below both run directories is compared by its xxh3-128 hash (through the hash
cache), except the files that record *how* a run ran rather than what it made, which differ
between any two runs:

* ``run.lock`` (ids, times, pids, hosts), ``config.yaml`` (its ``save_dir``), ``run.log``
  (timestamps in every line);
* ``tasks/`` of a map (done records carry durations, worker names and claim files);
* ``.xpkit/`` (hash manifests, MLflow state, the reuse log), except ``.xpkit/result.json``:
  the stage's return value is an output and is compared (a pickled one is not: equal
  objects may pickle to different bytes).

``metrics.jsonl`` is an output too, but each line carries the wall-clock ``time`` of its
``log_metrics`` call: its lines are compared without it (step and values must match).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .._core._paths import CONFIG, LOCK, LOG, METRICS
from ._hashing import PREFIX, hash_one

__all__ = ["EXCLUDED", "Comparison", "compare_outputs"]

EXCLUDED = (LOCK, CONFIG, LOG, "tasks/", ".xpkit/")
"""What ``--verify`` leaves out (a trailing ``/``: a whole directory)."""

_KEPT = frozenset({".xpkit/result.json"})
_METRICS = METRICS


@dataclass(frozen=True)
class Comparison:
    """The outputs of a rerun against the original's, as relpaths (sorted)."""

    identical: tuple[str, ...]
    differing: tuple[str, ...]
    missing: tuple[str, ...]  # in the original, not made by the rerun
    extra: tuple[str, ...]  # made by the rerun only

    @property
    def ok(self) -> bool:
        """Whether the rerun made exactly the same outputs."""
        return not (self.differing or self.missing or self.extra)


def compare_outputs(original: Path, rerun: Path) -> Comparison:
    """Compare the output files of two run directories (see the module docstring)."""
    a, b = _outputs(original), _outputs(rerun)
    both = sorted(set(a) & set(b))
    return Comparison(
        identical=tuple(p for p in both if a[p] == b[p]),
        differing=tuple(p for p in both if a[p] != b[p]),
        missing=tuple(sorted(set(a) - set(b))),
        extra=tuple(sorted(set(b) - set(a))),
    )


def _outputs(run_dir: Path) -> dict[str, str]:
    """relpath -> hash of each output file of a run directory."""
    record = hash_one(
        str(run_dir),
        include=None,
        exclude=None,
        cache_path=None,
        jobs=1,
        progress=None,
        log=logging.getLogger("xpkit.verify"),
    )
    files = record.manifest or {}
    out = {rel: digest for rel, digest in files.items() if _is_output(rel)}
    if _METRICS in out:
        out[_METRICS] = _metrics_hash(run_dir / _METRICS)
    return out


def _is_output(rel: str) -> bool:
    if rel in _KEPT:
        return True
    return not any(rel == e or (e.endswith("/") and rel.startswith(e)) for e in EXCLUDED)


def _metrics_hash(path: Path) -> str:
    """The hash of metrics.jsonl's records without their wall-clock ``time``."""
    digest = xxhash.xxh3_128()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return "unreadable"
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = line
        if isinstance(record, dict):
            record.pop("time", None)
        digest.update(json.dumps(record, sort_keys=True).encode() + os.linesep.encode())
    return PREFIX + digest.hexdigest()
