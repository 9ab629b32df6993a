"""Reading and hashing files: one, or many in this process or in worker processes.

This module imports nothing but the standard library and xxhash, and nothing from xpkit:
:func:`read_many` runs it as a script (``python _hashworker.py``) so that a worker starts
in ~20 ms without importing the user's ``__main__`` (as ``multiprocessing`` spawn would)
and without forking a process that may hold locks in other threads (as ``fork`` would).
Processes, not threads: for small files the per-file Python work holds the GIL, and
threads make hashing 100,000 small files slower than one thread alone.

Two kinds of worker, chosen by the first argument:

* ``--read``: stdin carries absolute paths separated by NUL bytes; stdout carries one
  fixed-size :data:`RECORD` per path, in order: ``(digest, size, mtime_ns, inode, errno)``,
  with ``errno == 0`` on success and the digest empty otherwise.
* ``--check``: stdin carries frames (a 4-byte little-endian length, then a ``marshal``-ed
  list of ``(directory, names, cached row)``); for each frame stdout carries one frame
  listing, per directory, the names whose stat no longer matches the row. A walk of a
  tree the cache knows hands its stats to such a worker, so that ``fstatat`` and the walk
  itself run on two CPUs (:class:`StatChecker`).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Run as a script with ``python -S``, skipping site-packages' .pth files (they can cost
    # tens of ms): the parent passes the mode, then its own sys.path, without the package
    # directory.
    sys.path[:] = sys.argv[2:]

import contextlib
import marshal
import os
import struct
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

__all__ = [
    "CHUNK_BYTES",
    "RECORD",
    "Entry",
    "StatChecker",
    "check_main",
    "digest_file",
    "main",
    "read_many",
]

Entry = tuple[int, int, int, bytes]
"""``(size, mtime_ns, inode, digest)`` of one file."""

# 4 MiB reads into one reused buffer stream a file at ~15 GB/s with page cache warm;
# smaller files are read in one call. (mmap is ~2x faster but a file truncated while
# mapped kills the process with SIGBUS, and hashing runs inside the user's process.)
CHUNK_BYTES = 4 << 20
RECORD = struct.Struct("<16sqqQi")
_FLUSH_RECORDS = 256
# Below this many files to read (~6 us each), starting worker processes (~25 ms) costs
# more than it saves.
_PROCESS_MIN_FILES = 8000


def digest_file(path: str | bytes) -> tuple[bytes, int, int, int]:
    """Return ``(xxh3_128 digest, size, mtime_ns, inode)`` of the file at ``path``.

    The stat is taken from the open file, so it describes the bytes that were read.

    Raises:
        OSError: the file cannot be opened or read (``IsADirectoryError`` for a directory).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if st.st_size < CHUNK_BYTES:
            data = os.read(fd, st.st_size + 1)
            if len(data) == st.st_size:
                return xxhash.xxh3_128_digest(data), st.st_size, st.st_mtime_ns, st.st_ino
            # The file changed size under us: stream it to its current end.
            return _stream(fd, data), st.st_size, st.st_mtime_ns, st.st_ino
        return _stream(fd, b""), st.st_size, st.st_mtime_ns, st.st_ino
    finally:
        os.close(fd)


def _stream(fd: int, head: bytes) -> bytes:
    """Hash ``head`` and then everything left in ``fd`` in big chunks."""
    h = xxhash.xxh3_128(head)
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    while n := os.readv(fd, [buf]):
        h.update(view[:n])
    return h.digest()


def main() -> None:
    """Hash the NUL-separated paths on stdin, writing one :data:`RECORD` each to stdout."""
    import signal

    # started from xpkit's hashing thread, which leaves SIGINT/SIGTERM to the main thread
    # (see ``_core/_threads.py``): a worker answers them again
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    data = sys.stdin.buffer.read()
    paths = data.split(b"\0") if data else []
    out = sys.stdout.buffer
    pending: list[bytes] = []
    for path in paths:
        try:
            pending.append(RECORD.pack(*digest_file(path), 0))
        except OSError as e:
            pending.append(RECORD.pack(b"", 0, 0, 0, e.errno or -1))
        if len(pending) >= _FLUSH_RECORDS:
            out.write(b"".join(pending))
            out.flush()
            pending.clear()
    out.write(b"".join(pending))
    out.flush()


def read_many(
    paths: list[str], *, jobs: int, progress: Callable[[int], None] | None
) -> list[Entry | OSError]:
    """Digest ``paths``: in up to ``jobs`` worker processes when there are many, else here.

    Returns one :data:`Entry` per path, or the ``OSError`` (with its filename) it raised.
    ``progress(done)`` is called now and then, possibly from another thread.
    """
    workers = min(jobs, len(paths) // (_PROCESS_MIN_FILES // 2))
    if workers >= 2:
        try:
            return _read_in_workers(paths, workers, progress)
        except OSError:
            pass  # could not start a worker: read here
    return _read_here(paths, progress)


def _read_here(paths: list[str], progress: Callable[[int], None] | None) -> list[Entry | OSError]:
    results: list[Entry | OSError] = []
    for i, path in enumerate(paths, 1):
        try:
            digest, size, mtime_ns, inode = digest_file(path)
            results.append((size, mtime_ns, inode, digest))
        except OSError as e:
            e.filename = path
            results.append(e)
        if progress is not None and i % 1000 == 0:
            progress(i)
    if progress is not None:
        progress(len(paths))
    return results


def _read_in_workers(
    paths: list[str], workers: int, progress: Callable[[int], None] | None
) -> list[Entry | OSError]:
    """Split ``paths`` round-robin between ``workers`` processes running this module."""
    import subprocess
    import threading

    counter = _Counter(progress)
    shares = [paths[k::workers] for k in range(workers)]
    outputs: list[list[Entry | OSError]] = [[] for _ in shares]
    cmd = _command("--read")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in shares:
            procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        threads = [
            threading.Thread(target=_talk, args=(p, s, o, counter), daemon=True)
            for p, s, o in zip(procs, shares, outputs, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        _reap(procs)
    results: list[Entry | OSError] = [OSError()] * len(paths)
    for k, (share, out) in enumerate(zip(shares, outputs, strict=True)):
        if len(out) < len(share):  # the worker died: read what it left here
            out.extend(_read_here(share[len(out) :], None))
        results[k::workers] = out
    return results


def _reap(procs: list[Any]) -> None:
    """Kill what still runs, wait for every worker, close its pipes."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        for pipe in (p.stdin, p.stdout):
            if pipe is not None:
                pipe.close()


def _talk(proc: Any, share: list[str], out: list[Entry | OSError], counter: _Counter) -> None:
    """Send one worker its paths and collect its records."""
    stdin: IO[bytes] = proc.stdin
    stdout: IO[bytes] = proc.stdout
    try:
        stdin.write(b"\0".join(map(os.fsencode, share)))
        stdin.close()
    except BrokenPipeError:
        return
    size = RECORD.size
    chunks = []
    while chunk := stdout.read(size * 4096):
        chunks.append(chunk)
        counter.add(len(chunk) // size)
    data = b"".join(chunks)
    records = RECORD.iter_unpack(data[: len(data) - len(data) % size])
    out.extend(
        (file_size, mtime_ns, inode, digest)
        if not err
        else OSError(err, os.strerror(err), share[i])
        for i, (digest, file_size, mtime_ns, inode, err) in enumerate(records)
    )


class _Counter:
    """A thread-safe count of files done, reported to a progress callback."""

    def __init__(self, progress: Callable[[int], None] | None) -> None:
        import threading

        self._progress = progress
        self._done = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._done += n
            if self._progress is not None:
                self._progress(self._done)


def _command(mode: str) -> list[str]:
    return [sys.executable, "-S", os.path.abspath(__file__), mode, *sys.path]


# --- checking stats against the cache in a second process ----------------------------

_FRAME = struct.Struct("<I")
_CHECK_FRAME_FILES = 4096


def check_main() -> None:
    """Answer each frame of ``(directory, names, row)`` with the names that changed."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while header := inp.read(_FRAME.size):
        batch = marshal.loads(inp.read(_FRAME.unpack(header)[0]))
        data = marshal.dumps([changed_names(*item) for item in batch])
        out.write(_FRAME.pack(len(data)) + data)
        out.flush()


def changed_names(directory: str, names: list[str], row: bytes) -> list[str]:
    """The ``names`` in ``directory`` whose size, mtime_ns or inode differ from ``row``
    (a marshal-ed ``name -> entry`` dict), or that cannot be stat-ed."""
    try:
        cached = marshal.loads(row)
        fd = os.open(directory, os.O_RDONLY)
    except (OSError, EOFError, ValueError, TypeError):
        return list(names)
    changed = []
    try:
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd)
            except OSError:
                changed.append(name)
                continue
            known = cached.get(name)
            if (
                known is None
                or st.st_ino != known[2]
                or st.st_mtime_ns != known[1]
                or st.st_size != known[0]
            ):
                changed.append(name)
    finally:
        os.close(fd)
    return changed


class StatChecker:
    """A ``--check`` worker fed while a walk goes on; :meth:`finish` gives what changed.

    When the worker cannot be started or dies, :meth:`finish` checks what it was not told
    here, so the answer is the same either way.
    """

    def __init__(self) -> None:
        import subprocess
        import threading

        self._sent: list[tuple[str, list[str], bytes]] = []
        self._pending: list[tuple[str, list[str], bytes]] = []
        self._pending_files = 0
        self._answers: list[list[str]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self._proc = subprocess.Popen(
                _command("--check"), stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        except OSError:
            return
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def check(self, directory: str, names: list[str], row: bytes) -> None:
        """Ask whether ``names`` in ``directory`` still match their cached ``row``."""
        self._pending.append((directory, names, row))
        self._pending_files += len(names)
        if self._pending_files >= _CHECK_FRAME_FILES:
            self._send()

    def finish(self) -> dict[str, list[str]]:
        """``{directory: changed names}`` for every directory asked about."""
        self._send()
        if self._proc is not None:
            _close_quietly(self._proc.stdin)
            self._reader.join()
            _reap([self._proc])
        answered = len(self._answers)
        out = {d: changed for (d, _, _), changed in zip(self._sent, self._answers, strict=False)}
        for directory, names, row in self._sent[answered:]:  # the worker died: check here
            out[directory] = changed_names(directory, names, row)
        return {d: changed for d, changed in out.items() if changed}

    def close(self) -> None:
        """Stop the worker without waiting for its answers."""
        if self._proc is not None:
            _reap([self._proc])
            self._reader.join()
            self._proc = None

    def _send(self) -> None:
        if not self._pending:
            return
        batch, self._pending, self._pending_files = self._pending, [], 0
        self._sent += batch
        if self._proc is None or self._proc.stdin is None:
            return
        data = marshal.dumps(batch)
        try:
            self._proc.stdin.write(_FRAME.pack(len(data)) + data)
        except (BrokenPipeError, ValueError):
            self._proc.stdin = None  # dead: finish() checks the rest here

    def _read(self) -> None:
        assert self._proc is not None
        stdout = self._proc.stdout
        assert stdout is not None
        while len(header := stdout.read(_FRAME.size)) == _FRAME.size:
            data = stdout.read(_FRAME.unpack(header)[0])
            try:
                self._answers += marshal.loads(data)
            except (EOFError, ValueError, TypeError):
                return


def _close_quietly(pipe: IO[bytes] | None) -> None:
    if pipe is not None:
        with contextlib.suppress(OSError):  # a dead worker's pipe: nothing left to flush
            pipe.close()


if __name__ == "__main__":
    check_main() if sys.argv[1] == "--check" else main()
