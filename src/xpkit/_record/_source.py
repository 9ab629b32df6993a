"""The ``src`` section of run.lock: the code snapshot of a run and its own source files.

The snapshot itself is :func:`xpkit._git.snapshot`; this module decides what a run records.
A run whose code comes from a code tree (``xp rerun``, a sweep point in a worker) takes no
snapshot: it records the tree's commit.

``src.files`` lists the project files the stage's code can reach: the module defining the
stage, the project modules it refers to (imported names, functions and classes of other
modules, imports inside functions), transitively, and the modules the body imported. A
module another stage of the same process imported, that this stage never refers to, is
not among them, so that reuse (``reuse=True``) re-runs only the stages an edit concerns.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GitError
from ._git import Snapshot, StrPath, files_blobs, snapshot

if TYPE_CHECKING:
    from ._plan import RecordingRun, RunPlan

__all__ = ["SourceRecorder", "snapshot_section", "source_files", "stage_files"]

_ENV_DIRS = frozenset({"site-packages", "dist-packages", ".venv", "venv", ".tox", ".nox"})


class SourceRecorder:
    """``src``: the code snapshot of a run, taken as the run starts, before its body."""

    key = "src"

    def __init__(self) -> None:
        self._snap: Snapshot | None = None
        self._base: Path | None = None  # where the run's code is: the project root, or a tree
        self._before: frozenset[str] = frozenset()
        self._files: tuple[list[StrPath], dict[str, str]] = ([], {})

    def prepare(self, plan: RunPlan) -> None:
        pass

    def start(self, run: RecordingRun) -> None:
        """Snapshot the code before the body runs; run.lock gets the section at once."""
        plan = run.plan
        self._before = frozenset(sys.modules)
        if plan.code is not None:
            self._snap, self._base = plan.code.snapshot, plan.code.dir
        elif plan.src and plan.settings.src:
            self._snap, self._base = _take_snapshot(run), plan.settings.root
        else:
            return
        run.publish(self.key, self._section(run))

    def finish(self, run: RecordingRun) -> Any:
        """The section again: project modules the body imported count as its files."""
        return None if self._snap is None else self._section(run)

    def _section(self, run: RecordingRun) -> dict[str, Any]:
        assert self._snap is not None
        if self._snap.commit:
            assert self._base is not None
            new = set(sys.modules) - self._before  # what the body imported so far
            paths = _run_paths(run, self._base, new)
            if paths != self._files[0]:  # at the end: only when the body imported more
                self._files = (paths, _blobs(self._base, run, self._snap.commit, paths))
        return snapshot_section(self._snap, self._files[1])


def _take_snapshot(run: RecordingRun) -> Snapshot:
    settings = run.plan.settings
    message = f"xpkit: {run.plan.stage.name} {settings.relative(run.paths.dir)}"
    try:
        return snapshot(
            settings.root,
            message=message,
            branch=settings.branch,
            include=settings.include,
            exclude=settings.exclude,
            max_file_mb=settings.max_file_mb,
            results_dir=settings.results_dir,
            logger=run.logger,
        )
    except Exception as e:  # a bug in the snapshot must not fail the run
        run.logger.warning("code snapshot failed: %r", e)
        return Snapshot(commit=None, error=repr(e))


def _run_paths(run: RecordingRun, base: Path, new: Iterable[str]) -> list[StrPath]:
    """The project files the stage's code reaches, and the stage's own file."""
    settings = run.plan.settings
    fn = run.plan.stage.fn
    paths: list[StrPath] = list(stage_files(fn, base, results_dir=settings.results_dir, new=new))
    with contextlib.suppress(TypeError, OSError):  # builtins, notebooks: no source file
        stage_file = inspect.getsourcefile(fn)
        if stage_file is not None:
            paths.append(stage_file)
    return sorted(set(paths), key=str)


def _blobs(base: Path, run: RecordingRun, commit: str, paths: list[StrPath]) -> dict[str, str]:
    try:
        return files_blobs(base, commit, paths)
    except GitError as e:
        run.logger.warning("code snapshot: cannot list source blobs: %s", e)
        return {}


def snapshot_section(snap: Snapshot, files: Mapping[str, str]) -> dict[str, Any]:
    """The ``src`` section of run.lock; ``skipped`` and ``error`` only when set."""
    section: dict[str, Any] = {
        "commit": snap.commit,
        "head": snap.head,
        "branch": snap.branch,
        "dirty": snap.dirty,
        "remote": snap.remote,
        "files": dict(sorted(files.items())),
    }
    if snap.skipped:
        section["skipped"] = list(snap.skipped)
    if snap.error:
        section["error"] = snap.error
    return section


def section_snapshot(src: Mapping[str, Any] | None) -> Snapshot | None:
    """The snapshot a run.lock ``src`` section records (the inverse of
    :func:`snapshot_section`), or None when it records no commit."""
    commit = src.get("commit") if isinstance(src, Mapping) else None
    if not isinstance(src, Mapping) or not isinstance(commit, str) or not commit:
        return None
    return Snapshot(
        commit=commit,
        head=src.get("head"),
        branch=src.get("branch"),
        dirty=bool(src.get("dirty")),
        remote=src.get("remote"),
    )


def source_files(root: StrPath, *, results_dir: str = "results") -> list[Path]:
    """The project's own imported modules: ``sys.modules`` files inside ``root``.

    Files in virtual environments, site-packages and the results directory do not count.
    """
    top = Path(root).resolve()
    results = (top / results_dir).resolve()
    prefixes = (str(top), os.path.abspath(root))  # the cheap filter sees paths as imported
    found = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and file.startswith(prefixes):
            path = Path(file).resolve()
            if _is_project_file(path, top, results):
                found.add(path)
    return sorted(found)


def _is_project_file(path: Path, top: Path, results: Path) -> bool:
    if not path.is_relative_to(top) or path.is_relative_to(results):
        return False
    if path.is_relative_to(Path(sys.prefix).resolve()) and sys.prefix != sys.base_prefix:
        return False
    return not _ENV_DIRS.intersection(path.relative_to(top).parts) and path.is_file()


def stage_files(
    fn: Callable[..., Any], root: StrPath, *, results_dir: str = "results", new: Iterable[str] = ()
) -> list[Path]:
    """The project files ``fn`` can reach: its module, the project modules that module
    refers to (transitively), and the modules in ``new`` (imported by the body).

    Only modules below ``root`` are followed; installed packages and the results directory
    are not (see :func:`source_files`).
    """
    top = Path(root).resolve()
    results = (top / results_dir).resolve()
    prefixes = (str(top), os.path.abspath(root))
    todo = [str(getattr(fn, "__module__", "") or ""), *new]
    seen: set[str] = set()
    found: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if module is None or not isinstance(file, str) or not file.startswith(prefixes):
            continue
        path = Path(file).resolve()
        if not _is_project_file(path, top, results):
            continue
        found.add(path)
        todo += _parents(name)
        todo += _referenced(module)
    return sorted(found)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _referenced(module: types.ModuleType) -> Iterator[str]:
    """Names of the modules ``module`` refers to: imported modules, the modules of imported
    functions, classes and stages, and modules imported inside its functions."""
    name = module.__name__
    for value in list(vars(module).values()):
        if isinstance(value, types.ModuleType):
            yield value.__name__
            continue
        fn = _stage_fn(value)
        owner = getattr(fn if fn is not None else value, "__module__", None)
        if not isinstance(owner, str):
            continue
        if owner != name:
            yield owner
        elif isinstance(value, (types.FunctionType, type)) or fn is not None:
            yield from _imported_inside(fn if fn is not None else value)


def _stage_fn(value: Any) -> Any:
    """The function of a stage object (``xp.stage``), without touching ``__getattr__``."""
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and "fn" in attrs and "loggers" in attrs:
        return attrs["fn"]
    return None


def _imported_inside(obj: Any) -> Iterator[str]:
    """Modules named by the code of a function or of a class's methods (``import x`` in a
    function body puts ``x`` in its code's names)."""
    codes: list[types.CodeType] = []
    if isinstance(obj, type):
        for member in list(vars(obj).values()):
            code = getattr(getattr(member, "__func__", member), "__code__", None)
            if isinstance(code, types.CodeType):
                codes.append(code)
    else:
        code = getattr(obj, "__code__", None)
        if isinstance(code, types.CodeType):
            codes.append(code)
    while codes:
        code = codes.pop()
        yield from (n for n in code.co_names if n in sys.modules)
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
