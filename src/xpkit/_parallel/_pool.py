"""Pool mode of a Slurm map: workers that take tasks one at a time, until none is left.

Claiming tasks on a shared filesystem. A worker takes task ``i`` by creating
``tasks/claims/<i>.0`` with ``O_CREAT|O_EXCL`` (atomic, NFS included): exactly one worker
wins. While it runs the task, a thread touches the claim every ``HEARTBEAT_S``. A claim
whose mtime is ``STALE_S`` older than the filesystem's own clock (read by touching a file
of ours, so no clock skew between nodes) belongs to a dead worker; anyone may then take the
task by creating the next generation ``<i>.1`` (again ``O_EXCL``: one winner per stale
claim). A checkpointing worker makes its claim stale at once (mtime 0). Before writing an
``ok`` record, a worker checks that no newer generation of its claim exists, so a worker
paused past ``STALE_S`` (e.g. suspended) and overtaken never records the task a second
time. A worker that runs out of free tasks while a claim has missed its heartbeats (its
worker probably died) waits for that claim to go stale and takes the task over; claims still
beating are left to their workers, so no worker idles for another's long task. Claims are
never deleted during a map (a deleted claim could be taken again by a worker with an
outdated view); a resume starts a fresh claims directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .._core._paths import RunPaths
from .._core._threads import start_thread
from ..errors import ConfigError
from . import _tasks
from ._map import MapWork, _worker

__all__ = ["HEARTBEAT_S", "STALE_S", "Pool", "fresh_claims"]


def _seconds_from_env(name: str, default: float) -> float:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        msg = f"{name} must be a positive number of seconds, got {text!r}"
        raise ConfigError(msg)
    return value


# a claim untouched for STALE_S belongs to a dead worker; raise it where the shared
# filesystem caches attributes longer (environment XPKIT_POOL_STALE_S, read by the workers)
STALE_S = _seconds_from_env("XPKIT_POOL_STALE_S", 180.0)
HEARTBEAT_S = min(30.0, STALE_S / 6)


def fresh_claims(paths: RunPaths) -> None:
    """A (re)submission starts a new claims directory (no worker of an old attempt is alive)."""
    if paths.claims.exists():
        old = paths.claims.with_name(f".claims-{time.time_ns()}")
        paths.claims.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    paths.claims.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        paths.finalized.unlink()
    with contextlib.suppress(FileNotFoundError):
        paths.submitted.unlink()


class Pool:
    """One pool worker's loop: take free tasks, then stale ones, until none is left.

    ``wait_if_short(margin_s)`` blocks while the job's time limit is too near to start a
    task of ``margin_s`` seconds (the job's checkpoint then requeues it).
    """

    def __init__(
        self, work: MapWork, *, rank: int, workers: int, wait_if_short: Callable[[float], None]
    ) -> None:
        self.work = work
        self.paths = work.paths
        self.rank, self.workers = rank, workers
        self.wait_if_short = wait_if_short
        self.name = _tasks.job_name()
        self.todo: Sequence[object] = _tasks.read_todo(self.paths)
        self.scanner = _tasks.DoneScanner(self.paths, len(self.todo))
        self.worker = _worker(work, log_name=self.name)
        self.claim: Path | None = None  # the claim of the task running now
        self.durations: list[float] = []
        self._beat = threading.Event()
        self._thread = start_thread(self._heartbeat, name="xpkit-claim")
        self.paths.claims.mkdir(parents=True, exist_ok=True)

    def run(self) -> None:
        """Take every free task (starting at this worker's share), then stale claims."""
        state = self.scanner.refresh()
        total = len(self.todo)
        start = self.rank * total // max(1, self.workers)
        refreshed = time.monotonic()
        with self.worker.active:
            for i in [*range(start, total), *range(start)]:
                if time.monotonic() - refreshed > 10:
                    state, refreshed = self.scanner.refresh(), time.monotonic()
                if i in state.ok or i in state.failed:
                    continue
                self._wait_if_short()
                if create(self.paths.claim_file(i, 0)):
                    self._run(i, 0)
            while self._take_over():
                pass

    def release(self) -> None:
        """Make the running task's claim stale at once (a checkpoint): anyone may take it."""
        claim, self.claim = self.claim, None
        if claim is not None:
            with contextlib.suppress(OSError):
                os.utime(claim, (0, 0))

    def close(self) -> None:
        self.worker.log.close()

    def _take_over(self) -> bool:
        """Run one task whose claim is stale; or, when a claim has missed its heartbeats (its
        worker probably died), wait a heartbeat so as to take it once stale rather than leave
        it to a resume. False when neither: claims still beating are left to their workers."""
        state = self.scanner.refresh()
        fs_now = _fs_now(self.paths, self.name)
        orphaned = False
        for i in state.missing():
            gen, mtime = latest_claim(self.paths, i)
            if gen >= 0 and fs_now - mtime < STALE_S:
                orphaned = orphaned or fs_now - mtime > 2.5 * HEARTBEAT_S
                continue
            self._wait_if_short()
            if create(self.paths.claim_file(i, gen + 1)):
                if i in self.scanner.refresh().ok:
                    continue
                self._run(i, gen + 1)
                return True
        if orphaned:
            self._wait_if_short()
            time.sleep(HEARTBEAT_S)
        return orphaned

    def _run(self, i: int, gen: int) -> None:
        self.claim = self.paths.claim_file(i, gen)
        self._beat.set()
        start = time.monotonic()
        newer = self.paths.claim_file(i, gen + 1)
        try:
            self.worker.run_task(i, still_mine=lambda: not newer.exists())
        finally:
            self.claim = None
            self._beat.clear()
        self.durations.append(time.monotonic() - start)

    def _heartbeat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            claim = self.claim
            if self._beat.is_set() and claim is not None:
                with contextlib.suppress(OSError):
                    os.utime(claim)

    def _wait_if_short(self) -> None:
        """Take no task that cannot end before the time-limit signal."""
        recent = self.durations[-20:]
        mean_s = sum(recent) / len(recent) if recent else 0.0
        self.wait_if_short(1.5 * mean_s + 5)


def create(path: Path) -> bool:
    """Create ``path`` exclusively; True when this process made it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.write(fd, f"{_tasks.job_name()}\n".encode())
    os.close(fd)
    return True


def latest_claim(paths: RunPaths, i: int) -> tuple[int, float]:
    """``(generation, mtime)`` of the newest claim of task ``i``; ``(-1, 0)`` when none."""
    gen, mtime = -1, 0.0
    while True:
        try:
            mtime = paths.claim_file(i, gen + 1).stat().st_mtime
        except FileNotFoundError:
            return gen, mtime
        gen += 1


def _fs_now(paths: RunPaths, worker: str) -> float:
    """The shared filesystem's clock: the mtime of a file this worker just touched."""
    probe = paths.claims / f".now-{worker}"
    probe.touch()
    return probe.stat().st_mtime
