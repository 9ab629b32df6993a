"""Helpers shared by the test modules: this checkout's code, scratch projects, task records."""

from __future__ import annotations

import collections
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from xpkit._core._lock import RunLock, new_run_id, write_lock
from xpkit._core._paths import RunPaths
from xpkit._core._settings import clear_settings_cache
from xpkit._record._git import snapshot
from xpkit._share._store import hash_file

SRC = Path(__file__).resolve().parents[1] / "src"
"""This checkout's package directory: subprocesses get it as PYTHONPATH."""


def import_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str
) -> ModuleType:
    """A fresh git repo in ``tmp_path`` (the working directory) with module ``name`` imported."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XPKIT_ROOT", raising=False)
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    clear_settings_cache()
    return importlib.import_module(name)


def ok_counts(run_dir: Path) -> collections.Counter[int]:
    """How many ``ok`` records each task index has, over every worker's file."""
    counts: collections.Counter[int] = collections.Counter()
    for path in RunPaths(run_dir).done.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record["status"] == "ok":
                counts[record["i"]] += 1
    return counts


_MARKER = re.compile(r"^(#\s*%%|#\s*<codecell>|#\s*In\[\d*?\]|#\s*In\[ \])")


def vscode_cells(text: str) -> list[str]:
    """Split a file like vscode-jupyter's ``generateCellRangesFromDocument``: a cell starts
    at each marker line (whatever its indentation); lines before the first are no cell."""
    cells: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _MARKER.match(line.strip()):
            cells.append([])
        elif cells:
            cells[-1].append(line)
    return ["".join(c) for c in cells if "".join(c).strip()]


def vscode_dedent(cell: str) -> str:
    """What current VSCode sends for a cell (``generateInteractiveCode``): leading and
    trailing blank lines dropped, then ``dedentCode``: the indentation of the first line that
    is not blank or a comment removed from every line that starts with it."""
    lines = cell.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    first = next((x for x in lines if x.strip() and not x.strip().startswith("#")), "")
    prefix = first[: len(first) - len(first.lstrip())]
    return "".join((x[len(prefix) :] if x.startswith(prefix) else x) + "\n" for x in lines)


# --------------------------------------------------------------------------- stores


def git(cwd: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=check, capture_output=True, text=True)
    return out.stdout.strip()


def xp(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run(
        [sys.executable, "-m", "xpkit", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def isolate(mp: pytest.MonkeyPatch) -> None:
    """What conftest's per-test fixture does, for the module-scoped one below."""
    for kind in ("AUTHOR", "COMMITTER"):
        mp.setenv(f"GIT_{kind}_NAME", "Test")
        mp.setenv(f"GIT_{kind}_EMAIL", "test@example.com")
    mp.delenv("XPKIT_ROOT", raising=False)
    clear_settings_cache()


def make_repo(tmp_path: Path) -> tuple[Path, Path]:
    """Repo A with one pushed commit on main, and its bare origin."""
    origin, a = tmp_path / "origin.git", tmp_path / "A"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    git(tmp_path, "init", "-q", "-b", "main", str(a))
    (a / ".gitignore").write_text("results/\n__pycache__/\n")
    (a / "lib.py").write_text("VALUE = 1\n")
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "init")
    git(a, "remote", "add", "origin", str(origin))
    git(a, "push", "-q", "origin", "main")
    return a, origin


def clone(origin: Path, dest: Path) -> Path:
    git(origin.parent, "clone", "-q", str(origin), str(dest))
    return dest


def make_run(
    root: Path,
    rel: str,
    files: dict[str, bytes],
    *,
    upstream: dict[str, Any] | None = None,
    stage: str = "prepare",
    data: dict[str, Any] | None = None,
) -> RunLock:
    """A run directory made by hand, with a real code snapshot of ``root``."""
    run_dir = root / rel
    for name, content in files.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(content)
    snap = snapshot(root, message=f"xpkit: {stage} {rel}")
    lock = RunLock(
        id=new_run_id(),
        stage=stage,
        dir=rel,
        status="completed",
        started="2026-01-02T03:04:05+00:00",
        src={"commit": snap.commit, "head": snap.head, "dirty": snap.dirty},
        upstream=upstream,
        data=data,
    )
    write_lock(run_dir / "run.lock", lock)
    return lock


def tree(top: Path) -> dict[str, str]:
    return {
        p.relative_to(top).as_posix(): hash_file(p) for p in sorted(top.rglob("*")) if p.is_file()
    }


def tamper(store: Path, run_id: str, change: Any) -> None:
    """Rewrite a stored run's manifest (and its COMPLETE marker, so that it looks whole)."""
    import xxhash

    path = store / "runs" / run_id / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest, store / "runs" / run_id)
    data = json.dumps(manifest).encode()
    path.write_bytes(data)
    (path.parent / "COMPLETE").write_text(f"xxh3_128:{xxhash.xxh3_128_hexdigest(data)}\n")


def listing(top: Path, *, skip: tuple[str, ...] = ()) -> dict[str, tuple[str, int, int]]:
    """Every entry below ``top``, links not followed: relpath → (kind, size, mtime_ns of files).

    Directories are listed without their mtime: a pull that stages and rolls back changes it.
    """
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        base = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (base / d).relative_to(top).as_posix() not in skip]
        for name in [*dirnames, *filenames]:
            path = base / name
            st = path.lstat()
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            size, mtime = (0, 0) if kind == "dir" else (st.st_size, st.st_mtime_ns)
            out[path.relative_to(top).as_posix()] = (kind, size, mtime)
    return out
