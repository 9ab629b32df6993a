"""Code snapshots on real git repositories: content, safety, concurrency and edge cases."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from helpers import SRC
from xpkit._cli._git_cli import checkout_command
from xpkit._core._settings import Settings
from xpkit._record._git import Snapshot, checkout, code_diff, files_blobs, snapshot
from xpkit._record._source import SourceRecorder, source_files
from xpkit.errors import GitError, LockError, RunNotFoundError


@pytest.fixture(autouse=True)
def git_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Isolate git from the machine's config and give it an identity."""
    home = tmp_path_factory.mktemp("home")
    config = home / "gitconfig"
    config.write_text('[protocol "file"]\n\tallow = always\n[init]\n\tdefaultBranch = main\n')
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Tester")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "tester@example.com")


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return its stripped stdout."""
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def show(repo: Path, commit: str, path: str) -> str | None:
    """The content of ``path`` in ``commit``, None when absent."""
    done = subprocess.run(
        ["git", "show", f"{commit}:{path}"], cwd=repo, capture_output=True, text=True
    )
    return done.stdout if done.returncode == 0 else None


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo with one commit: a tracked module, a .gitignore and a results dir."""
    root = tmp_path / "proj"
    root.mkdir()
    git(root, "init", "-q")
    write(root / ".gitignore", "*.log\n")
    write(root / "train.py", "x = 1\n")
    write(root / "gone.py", "bye\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    return root


def snap(root: Path, **options: object) -> Snapshot:
    return snapshot(root, message="xpkit: test", **options)  # type: ignore[arg-type]


def user_state(root: Path) -> dict[str, object]:
    """Everything of the user's git state that a snapshot must leave alone."""
    index = root / ".git" / "index"
    branches = git(root, "branch", "--list", "--format=%(refname)").splitlines()
    return {
        "index": index.read_bytes(),
        "index_mtime_ns": index.stat().st_mtime_ns,
        "status": git(root, "--no-optional-locks", "status", "--porcelain", "-uall"),
        "head": git(root, "rev-parse", "HEAD"),
        "symbolic": git(root, "symbolic-ref", "-q", "HEAD"),
        "branches": [b for b in branches if b != "refs/heads/run_logs"],
        "stash": git(root, "stash", "list"),
    }


def test_snapshot_holds_the_working_tree_and_leaves_the_user_state_alone(repo: Path) -> None:
    """Working-tree content, untracked files and deletions go in; the user's state is intact."""
    write(repo / "stashed.py", "s = 1\n")
    git(repo, "add", "stashed.py")
    git(repo, "stash", "-q")
    write(repo / "train.py", "x = 2  # staged\n")
    git(repo, "add", "train.py")
    write(repo / "train.py", "x = 3  # edited after staging\n")
    write(repo / "pkg" / "new_module.py", "y = 1\n")
    write(repo / "debug.log", "ignored\n")
    write(repo / "results" / "out.txt", "a result\n")
    (repo / "gone.py").unlink()
    (repo / "big.bin").write_bytes(b"\0" * 300_000)
    git(repo, "status")  # let git refresh the index now, not during the snapshot
    time.sleep(0.01)
    before = user_state(repo)

    with pytest.warns(UserWarning, match=r"1 file\(s\) over max_file_mb=0.1 left out: big.bin"):
        result = snap(repo, max_file_mb=0.1)

    assert user_state(repo) == before
    assert result.commit is not None
    assert result.error is None
    assert result.skipped == ("big.bin",)
    assert show(repo, result.commit, "train.py") == "x = 3  # edited after staging\n"
    assert show(repo, result.commit, "pkg/new_module.py") == "y = 1\n"
    for absent in ("debug.log", "results/out.txt", "gone.py", "big.bin", "stashed.py"):
        assert show(repo, result.commit, absent) is None, absent
    assert result.head == before["head"]
    assert result.branch == "main"
    assert result.dirty


def test_snapshot_keeps_head_reachable_and_chains_snapshots(repo: Path) -> None:
    """Parents: the previous snapshot first, then the user's HEAD."""
    first = snap(repo).commit
    write(repo / "train.py", "x = 5\n")
    second = snap(repo).commit
    assert first
    assert second
    assert first != second
    parents = git(repo, "rev-list", "--parents", "-n1", second).split()[1:]
    assert parents == [first, git(repo, "rev-parse", "HEAD")]
    assert git(repo, "rev-parse", "run_logs") == second


def test_unchanged_tree_reuses_the_last_snapshot(repo: Path) -> None:
    """Nothing changed: no new commit."""
    write(repo / "notes.py", "n = 1\n")
    first = snap(repo)
    second = snap(repo)
    assert not first.reused
    assert second.reused
    assert second.commit == first.commit


def test_a_new_head_makes_a_new_snapshot(repo: Path) -> None:
    """Same files but a new HEAD commit: a new snapshot whose parent is that HEAD."""
    write(repo / "train.py", "x = 9\n")
    first = snap(repo)
    git(repo, "commit", "-q", "-am", "nine")
    second = snap(repo)
    assert not second.reused
    assert not second.dirty
    assert first.dirty
    git(repo, "merge-base", "--is-ancestor", "HEAD", "run_logs")


def test_clean_tree_is_not_dirty(repo: Path) -> None:
    """A snapshot of an unmodified checkout is not dirty."""
    assert not snap(repo).dirty


_WORKER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {src!r})
from xpkit._record._git import snapshot
root, i, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
mine = root / f"worker_{{i}}.py"
mine.write_text(f"worker = {{i}}\\n")
result = snapshot(root, message=f"xpkit: worker {{i}}")
mine.unlink()  # so that snapshots taken later differ
print(result.commit, result.error)
"""


def test_twelve_processes_snapshot_at_once(repo: Path, tmp_path: Path) -> None:
    """Each concurrent snapshot holds its own file and is reachable from the branch."""
    go = tmp_path / "go"
    code = _WORKER.format(src=str(SRC))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(repo), str(i), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(12)
    ]
    time.sleep(0.5)  # let them all start and wait
    go.touch()
    commits = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=60)
        commit, error = out.split()
        assert error == "None", err
        assert show(repo, commit, f"worker_{i}.py") == f"worker = {i}\n"
        git(repo, "merge-base", "--is-ancestor", commit, "run_logs")
        commits.append(commit)
    assert len(commits) == 12
    assert not list((repo / ".git" / "xpkit").glob("tmp-*"))


def test_checkout_restores_the_snapshot_and_code_diff_shows_changes(
    repo: Path, tmp_path: Path
) -> None:
    """A worktree of the snapshot has its exact files; the diff shows the changed line."""
    write(repo / "train.py", "x = 'first'\n")
    write(repo / "extra.py", "untracked = True\n")
    first = snap(repo).commit
    write(repo / "train.py", "x = 'second'\n")
    second = snap(repo).commit
    assert first
    assert second

    dest = checkout(repo, first, tmp_path / "restored")

    assert (dest / "train.py").read_text() == "x = 'first'\n"
    assert (dest / "extra.py").read_text() == "untracked = True\n"
    diff = code_diff(repo, first, second)
    assert "-x = 'first'" in diff
    assert "+x = 'second'" in diff
    assert "train.py" in code_diff(repo, first, second, stat=True)
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_checkout_defaults_next_to_the_repo(repo: Path) -> None:
    """Without a destination the worktree is ``<repo>-<short sha>`` beside the repo."""
    commit = snap(repo).commit
    assert commit
    dest = checkout(repo, commit)
    assert dest == repo.parent / f"proj-{commit[:8]}"
    assert (dest / "train.py").read_text() == "x = 1\n"


def test_checkout_of_an_unknown_commit_is_a_clear_error(repo: Path) -> None:
    """An unknown commit names the commit and what to do."""
    with pytest.raises(GitError, match="deadbeef is not in the repo"):
        checkout(repo, "deadbeef")


def test_checkout_command_reads_the_run_lock(repo: Path, tmp_path: Path) -> None:
    """``xp checkout RUN DIR`` restores the commit recorded in run.lock."""
    commit = snap(repo).commit
    run_dir = repo / "results" / "train" / "240101-120000"
    run_dir.mkdir(parents=True)
    (run_dir / "run.lock").write_text(yaml.safe_dump({"src": {"commit": commit}}))
    assert checkout_command([str(run_dir), str(tmp_path / "co")]) == 0
    assert (tmp_path / "co" / "train.py").read_text() == "x = 1\n"


def test_checkout_command_takes_a_run_id_prefix(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``xp checkout <id prefix>`` finds the run under results/, as every RUN argument does."""
    monkeypatch.chdir(repo)
    monkeypatch.setenv("XPKIT_ROOT", str(repo))
    run_dir = repo / "results" / "train" / "240101-120000"
    run_dir.mkdir(parents=True)
    lock = {
        "xpkit": 1,
        "id": "abc123def456",
        "stage": "train",
        "dir": "results/train/240101-120000",
    }
    lock.update(status="completed", src={"commit": snap(repo).commit})
    (run_dir / "run.lock").write_text(yaml.safe_dump(lock))
    done = subprocess.run(
        [sys.executable, "-m", "xpkit", "checkout", "abc123", str(tmp_path / "co")],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "co" / "train.py").read_text() == "x = 1\n"


def test_checkout_command_without_snapshot_fails_cleanly(repo: Path) -> None:
    """A run without src.commit, or no run at all, is an XpkitError that says why."""
    run_dir = repo / "results" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "run.lock").write_text(yaml.safe_dump({"src": {"error": "not a git repo"}}))
    with pytest.raises(LockError, match=r"no code snapshot \(src.commit\): not a git repo"):
        checkout_command([str(run_dir)])
    with pytest.raises(RunNotFoundError, match="not a run directory"):
        checkout_command([str(repo / "nowhere")])


# -- include, exclude, ignored ---------------------------------------------------------------


def test_exclude_and_include_globs(repo: Path) -> None:
    """Exclude drops tracked and untracked matches at any depth; include forces ignored files."""
    write(repo / "data" / "ckpt" / "model.ckpt", "weights\n")
    write(repo / "train.ckpt", "weights\n")
    write(repo / "keep.log", "wanted log\n")
    write(repo / "other.log", "unwanted log\n")
    result = snap(repo, exclude=["*.ckpt", "train.py"], include=["keep.log"])
    assert result.commit
    for absent in ("data/ckpt/model.ckpt", "train.ckpt", "train.py", "other.log"):
        assert show(repo, result.commit, absent) is None, absent
    assert show(repo, result.commit, "keep.log") == "wanted log\n"


def test_tracked_files_in_results_are_left_out(repo: Path) -> None:
    """The results dir never goes in, even when the user tracks files there."""
    write(repo / "out" / "README.md", "results here\n")
    git(repo, "add", "out")
    git(repo, "commit", "-q", "-m", "results readme")
    result = snap(repo, results_dir="out")
    assert result.commit
    assert show(repo, result.commit, "out/README.md") is None


def test_file_ignored_after_a_snapshot_leaves_the_next_one(repo: Path) -> None:
    """An untracked file snapshotted once goes when .gitignore starts ignoring it."""
    write(repo / "secret.env", "TOKEN=1\n")
    first = snap(repo).commit
    assert first
    assert show(repo, first, "secret.env") == "TOKEN=1\n"
    write(repo / ".gitignore", "*.log\n*.env\n")
    second = snap(repo).commit
    assert second
    assert show(repo, second, "secret.env") is None


def test_file_excluded_through_info_exclude_leaves_the_next_one(repo: Path) -> None:
    """``.git/info/exclude`` counts like a .gitignore."""
    write(repo / "scratch.py", "tmp = 1\n")
    assert show(repo, snap(repo).commit or "", "scratch.py") == "tmp = 1\n"
    time.sleep(0.01)
    write(repo / ".git" / "info" / "exclude", "scratch.py\n")
    assert show(repo, snap(repo).commit or "", "scratch.py") is None


def test_new_exclude_globs_apply_to_files_snapshotted_before(repo: Path) -> None:
    """Changing the filters between runs takes effect at once."""
    write(repo / "notes.py", "n = 1\n")
    assert show(repo, snap(repo).commit or "", "notes.py") == "n = 1\n"
    assert show(repo, snap(repo, exclude=["notes.py"]).commit or "", "notes.py") is None


def test_merge_conflict_snapshots_the_file_with_its_markers(repo: Path) -> None:
    """Mid-merge: the conflicted file goes in as it is on disk; the merge state stays."""
    git(repo, "checkout", "-q", "-b", "other")
    write(repo / "train.py", "x = 'other'\n")
    git(repo, "commit", "-q", "-am", "other")
    git(repo, "checkout", "-q", "main")
    write(repo / "train.py", "x = 'main'\n")
    git(repo, "commit", "-q", "-am", "main")
    subprocess.run(["git", "merge", "-q", "other"], cwd=repo, capture_output=True, check=False)
    before = user_state(repo)
    result = snap(repo)
    assert user_state(repo) == before
    assert "<<<<<<<" in (show(repo, result.commit or "", "train.py") or "")
    assert (repo / ".git" / "MERGE_HEAD").exists()


def test_file_force_added_by_the_user_is_kept(repo: Path) -> None:
    """An ignored file the user tracks with ``git add -f`` is in the snapshot."""
    snap(repo)
    write(repo / "important.log", "tracked on purpose\n")
    git(repo, "add", "-f", "important.log")
    result = snap(repo)
    assert result.commit
    assert show(repo, result.commit, "important.log") == "tracked on purpose\n"


def test_a_file_that_grows_over_the_cap_is_dropped(repo: Path) -> None:
    """A file snapshotted small and grown over the cap is left out, not kept stale."""
    write(repo / "table.csv", "a,b\n")
    assert snap(repo, max_file_mb=0.01).commit
    (repo / "table.csv").write_text("a,b\n" * 10_000)
    with pytest.warns(UserWarning, match="table.csv"):
        result = snap(repo, max_file_mb=0.01)
    assert result.commit
    assert show(repo, result.commit, "table.csv") is None


# -- edge cases --------------------------------------------------------------------------------


def test_outside_a_repo_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """Not a git repo: commit None, error set, one warning."""
    with pytest.warns(UserWarning, match="not inside a git work tree"):
        result = snap(tmp_path)
    assert result.commit is None
    assert result.error
    assert "not inside a git work tree" in result.error


def test_git_missing_is_an_error_not_a_crash(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No git on PATH: the error says so."""
    monkeypatch.setenv("PATH", str(repo))
    with pytest.warns(UserWarning, match="git is not installed"):
        result = snap(repo)
    assert result.commit is None


def test_warnings_go_to_a_logger_when_given(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With a logger, warnings are log records instead of Python warnings."""
    logger = logging.getLogger("xpkit.test")
    with caplog.at_level(logging.WARNING, logger="xpkit.test"):
        result = snapshot(tmp_path, message="m", logger=logger)
    assert result.error
    assert "code snapshot skipped" in caplog.text


def test_repo_without_commits(tmp_path: Path) -> None:
    """No commit yet: the snapshot has no HEAD parent; a later one chains to it and HEAD."""
    git(tmp_path, "init", "-q")
    write(tmp_path / "a.py", "a = 1\n")
    first = snap(tmp_path)
    assert first.commit
    assert first.head is None
    assert first.branch == "main"
    assert first.dirty
    assert git(tmp_path, "rev-list", "--parents", "-n1", first.commit) == first.commit
    assert show(tmp_path, first.commit, "a.py") == "a = 1\n"
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    write(tmp_path / "a.py", "a = 2\n")
    second = snap(tmp_path)
    assert second.commit
    parents = git(tmp_path, "rev-list", "--parents", "-n1", second.commit).split()[1:]
    assert parents == [first.commit, git(tmp_path, "rev-parse", "HEAD")]


def test_detached_head(repo: Path) -> None:
    """Detached HEAD: branch None, HEAD recorded, HEAD stays detached."""
    git(repo, "checkout", "-q", "--detach")
    write(repo / "train.py", "x = 'detached'\n")
    result = snap(repo)
    assert result.commit
    assert result.branch is None
    assert result.head == git(repo, "rev-parse", "HEAD")
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"


def test_current_branch_named_like_the_snapshot_branch_is_refused(repo: Path) -> None:
    """Snapshotting onto the user's own current branch would move it: refused."""
    git(repo, "checkout", "-q", "-b", "run_logs")
    with pytest.warns(UserWarning, match="current branch is the snapshot branch"):
        result = snap(repo)
    assert result.commit is None
    assert git(repo, "rev-list", "--count", "HEAD") == "1"


def test_linked_worktree(repo: Path, tmp_path: Path) -> None:
    """A linked worktree snapshots its own files onto the shared branch."""
    git(repo, "worktree", "add", "-q", "-b", "feature", str(tmp_path / "wt"))
    wt = tmp_path / "wt"
    write(wt / "train.py", "x = 'worktree'\n")
    before = (repo / ".git" / "worktrees" / "wt" / "index").read_bytes()
    result = snap(wt)
    assert result.commit
    assert result.branch == "feature"
    assert show(repo, result.commit, "train.py") == "x = 'worktree'\n"
    assert git(repo, "rev-parse", "run_logs") == result.commit
    assert (repo / ".git" / "worktrees" / "wt" / "index").read_bytes() == before


def test_submodule_is_recorded_as_a_gitlink(repo: Path, tmp_path: Path) -> None:
    """A submodule goes in as its commit, not its files."""
    lib = tmp_path / "lib"
    lib.mkdir()
    git(lib, "init", "-q")
    write(lib / "lib.py", "lib = 1\n")
    git(lib, "add", "-A")
    git(lib, "commit", "-q", "-m", "lib")
    git(repo, "submodule", "add", "-q", str(lib), "vendor/lib")
    git(repo, "commit", "-q", "-m", "submodule")
    result = snap(repo)
    assert result.commit
    entry = git(repo, "ls-tree", result.commit, "vendor/lib")
    assert entry.startswith("160000 commit " + git(lib, "rev-parse", "HEAD"))


def test_nested_repo_without_commit_is_a_warning(repo: Path) -> None:
    """An untracked nested repo git cannot add: warned, the rest is snapshotted."""
    git(repo, "init", "-q", "nested")
    write(repo / "train.py", "x = 'still snapshotted'\n")
    with pytest.warns(UserWarning, match="could not be added"):
        result = snap(repo)
    assert result.commit
    assert show(repo, result.commit, "train.py") == "x = 'still snapshotted'\n"


def test_nested_repo_fallback_keeps_forced_and_skipped_rules(repo: Path) -> None:
    """The slow path taken for a nested repo still forces includes in and big files out."""
    git(repo, "init", "-q", "nested")
    write(repo / "keep.log", "forced in\n")
    (repo / "big.bin").write_bytes(b"\0" * 300_000)
    with pytest.warns(UserWarning, match="could not be added|big.bin"):
        result = snap(repo, include=["keep.log"], max_file_mb=0.1)
    assert result.commit
    assert show(repo, result.commit, "keep.log") == "forced in\n"
    assert show(repo, result.commit, "big.bin") is None


def test_touched_but_unchanged_files_reuse_the_snapshot(repo: Path) -> None:
    """New mtimes with the same content are not a change."""
    first = snap(repo)
    os.utime(repo / "train.py", ns=(time.time_ns(), time.time_ns()))
    second = snap(repo)
    assert second.reused
    assert second.commit == first.commit


def test_sparse_checkout_keeps_files_outside_the_cone(repo: Path) -> None:
    """Files outside a sparse checkout keep their HEAD content instead of looking deleted."""
    write(repo / "far" / "away.py", "far = 1\n")
    write(repo / "near" / "here.py", "near = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "dirs")
    git(repo, "sparse-checkout", "set", "near")
    assert not (repo / "far").exists()
    write(repo / "near" / "here.py", "near = 2\n")
    result = snap(repo)
    assert result.commit
    assert show(repo, result.commit, "far/away.py") == "far = 1\n"
    assert show(repo, result.commit, "near/here.py") == "near = 2\n"


def test_gpg_signing_and_hooks_are_skipped(repo: Path) -> None:
    """commit.gpgSign with a failing signer and hooks everywhere change nothing."""
    git(repo, "config", "commit.gpgSign", "true")
    git(repo, "config", "gpg.program", "false")
    marker = repo / "hook-ran"
    for hook in ("reference-transaction", "post-checkout", "pre-commit", "post-commit"):
        path = write(repo / ".git" / "hooks" / hook, f"#!/bin/sh\ntouch {marker}\n")
        path.chmod(0o755)
    write(repo / "train.py", "x = 'signed?'\n")
    result = snap(repo)
    assert result.commit
    assert not marker.exists()
    checkout(repo, result.commit, repo.parent / "co")
    assert not marker.exists()


def test_split_index_is_read_and_left_alone(repo: Path) -> None:
    """With core.splitIndex the user's shared index files stay as they are."""
    git(repo, "config", "core.splitIndex", "true")
    git(repo, "update-index", "--split-index")
    write(repo / "train.py", "x = 'split'\n")
    shared = sorted((repo / ".git").glob("sharedindex.*"))
    before = user_state(repo)
    result = snap(repo)
    assert show(repo, result.commit or "", "train.py") == "x = 'split'\n"
    assert sorted((repo / ".git").glob("sharedindex.*")) == shared
    assert user_state(repo) == before


def test_lfs_filter_without_git_lfs(repo: Path) -> None:
    """A required LFS filter whose binary is missing does not fail the snapshot."""
    git(repo, "config", "filter.lfs.clean", "git-lfs-is-not-installed clean -- %f")
    git(repo, "config", "filter.lfs.smudge", "git-lfs-is-not-installed smudge -- %f")
    git(repo, "config", "filter.lfs.required", "true")
    write(repo / ".gitattributes", "*.bin filter=lfs diff=lfs merge=lfs -text\n")
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 3\n"
    write(repo / "weights.bin", pointer)
    result = snap(repo)
    assert result.commit
    assert show(repo, result.commit, "weights.bin") == pointer


def test_no_identity_configured(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without user.name/user.email the snapshot still commits, as xpkit."""
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.delenv(f"GIT_{role}_NAME")
        monkeypatch.delenv(f"GIT_{role}_EMAIL")
    monkeypatch.setenv("EMAIL", "")
    git(repo, "config", "user.useConfigOnly", "true")
    result = snap(repo)
    assert result.commit
    assert git(repo, "log", "-1", "--format=%an", result.commit) == "xpkit"


def test_remote_url_is_recorded(repo: Path) -> None:
    """``remote`` is origin's URL."""
    git(repo, "remote", "add", "origin", "https://example.com/proj.git")
    assert snap(repo).remote == "https://example.com/proj.git"


# -- source files and the run.lock section --------------------------------------------------


def test_source_files_and_blobs(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Imported project modules are found; their blobs come from the snapshot."""
    write(repo / "projmod_a.py", "A = 1\n")
    write(repo / ".venv" / "lib" / "site-packages" / "projmod_dep.py", "D = 1\n")
    write(repo / "results" / "projmod_res.py", "R = 1\n")
    monkeypatch.syspath_prepend(str(repo))
    monkeypatch.syspath_prepend(str(repo / ".venv" / "lib" / "site-packages"))
    monkeypatch.syspath_prepend(str(repo / "results"))
    for name in ("projmod_a", "projmod_dep", "projmod_res"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        __import__(name)
    files = source_files(repo)
    assert files == [(repo / "projmod_a.py").resolve()]
    commit = snap(repo).commit
    assert commit
    blobs = files_blobs(repo, commit, [*files, repo / "debug.log", "/elsewhere/x.py"])
    assert blobs == {"projmod_a.py": git(repo, "rev-parse", f"{commit}:projmod_a.py")}


def _stand_in_run(repo: Path, *, src: bool = True) -> types.SimpleNamespace:
    module = write(repo / "stage_mod.py", "def main(cfg):\n    return 1\n")
    namespace: dict[str, object] = {}
    exec(compile(module.read_text(), str(module), "exec"), namespace)
    settings = Settings(root=repo, src=src)
    stage = types.SimpleNamespace(name="stage_mod", src=True, fn=namespace["main"])
    published: dict[str, object] = {}
    return types.SimpleNamespace(
        plan=types.SimpleNamespace(stage=stage, settings=settings, src=True, code=None),
        paths=types.SimpleNamespace(dir=repo / "results" / "stage_mod" / "240101-120000"),
        logger=logging.getLogger("xpkit.test.run"),
        published=published,
        publish=published.__setitem__,
    )


def test_source_recorder_section(repo: Path) -> None:
    """The recorder commits at start, publishes the run.lock ``src`` section before the body
    runs, and returns it at finish."""
    run = _stand_in_run(repo)
    recorder = SourceRecorder()
    recorder.prepare(types.SimpleNamespace())  # type: ignore[arg-type]
    recorder.start(run)  # type: ignore[arg-type]
    assert run.published["src"]["commit"]
    section = recorder.finish(run)  # type: ignore[arg-type]
    assert section == run.published["src"]
    commit = section["commit"]
    assert set(section) == {"commit", "head", "branch", "dirty", "remote", "files"}
    assert section["files"]["stage_mod.py"] == git(repo, "rev-parse", f"{commit}:stage_mod.py")
    message = git(repo, "log", "-1", "--format=%s", commit)
    assert message == "xpkit: stage_mod results/stage_mod/240101-120000"


def test_source_recorder_disabled(repo: Path) -> None:
    """``src = false`` in the settings: no section, no branch."""
    run = _stand_in_run(repo, src=False)
    recorder = SourceRecorder()
    recorder.start(run)  # type: ignore[arg-type]
    assert recorder.finish(run) is None  # type: ignore[arg-type]
    assert not git(repo, "branch", "--list", "run_logs")


def test_source_recorder_outside_git(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Outside git the section records the error and the run's logger warns."""
    run = _stand_in_run(tmp_path)
    recorder = SourceRecorder()
    with caplog.at_level(logging.WARNING, logger="xpkit.test.run"):
        recorder.start(run)  # type: ignore[arg-type]
        section = recorder.finish(run)  # type: ignore[arg-type]
    assert section["commit"] is None
    assert "not inside a git work tree" in section["error"]
    assert "code snapshot skipped" in caplog.text


def test_untouched_dirs_stay_clean(repo: Path) -> None:
    """Only ``.git/xpkit`` holds our files: no temporary index is left behind."""
    snap(repo)
    leftovers = sorted(p.name for p in (repo / ".git" / "xpkit").iterdir())
    assert len(leftovers) == 1
    assert leftovers[0].startswith("index-")
