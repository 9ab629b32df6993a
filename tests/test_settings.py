"""Project root and [tool.xpkit] settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SRC
from xpkit._core._settings import Settings, find_project_root, load_settings, settings_fields
from xpkit.errors import SettingsError


def git_project(tmp_path: Path, pyproject: str = "") -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    if pyproject:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    return tmp_path


def test_root_is_the_git_root_from_a_subdirectory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The project root is the enclosing git work tree, found from any subdirectory."""
    monkeypatch.delenv("XPKIT_ROOT", raising=False)
    project = git_project(tmp_path)
    deep = project / "a" / "b"
    deep.mkdir(parents=True)
    assert find_project_root(deep) == project.resolve()
    monkeypatch.chdir(deep)
    assert find_project_root() == project.resolve()


def test_root_outside_git_is_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside git the root is the start directory; XPKIT_ROOT wins over both."""
    monkeypatch.delenv("XPKIT_ROOT", raising=False)
    plain = tmp_path / "plain"
    plain.mkdir()
    if any((p / ".git").exists() for p in plain.resolve().parents):
        pytest.skip("the temporary directory is inside a git repository")
    assert find_project_root(plain) == plain.resolve()
    monkeypatch.setenv("XPKIT_ROOT", str(tmp_path))
    assert find_project_root(plain) == tmp_path.resolve()


def test_defaults_without_pyproject(tmp_path: Path) -> None:
    """No pyproject.toml: every setting has its default."""
    settings = load_settings(git_project(tmp_path))
    assert settings == Settings(root=tmp_path.resolve())
    assert settings.results_path == tmp_path.resolve() / "results"


def test_values_are_read_and_lists_become_tuples(tmp_path: Path) -> None:
    """[tool.xpkit] values are read; lists become tuples; other tools' tables are ignored."""
    project = git_project(
        tmp_path,
        '[tool.ruff]\nline-length = 3\n[tool.xpkit]\nresults_dir = "runs"\n'
        'exclude = ["*.bin"]\nmax_file_mb = 2\n',
    )
    settings = load_settings(project)
    assert settings.results_dir == "runs"
    assert settings.exclude == ("*.bin",)
    assert settings.max_file_mb == 2
    assert settings.relative(project / "runs" / "x") == "runs/x"
    assert settings.resolve("runs") == project.resolve() / "runs"


def test_unknown_key_names_close_matches(tmp_path: Path) -> None:
    """An unknown key is a SettingsError naming the file, the key and close matches."""
    project = git_project(tmp_path, '[tool.xpkit]\nresult_dir = "runs"\n')
    with pytest.raises(SettingsError) as info:
        load_settings(project)
    msg = str(info.value)
    assert "pyproject.toml" in msg
    assert "'result_dir'" in msg
    assert "did you mean results_dir" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("results_dir = 3", "results_dir must be str"),
        ('tracking = "yes"', "tracking must be bool"),
        ("hash_jobs = true", "hash_jobs must be int"),
        ("include = [1, 2]", "list of strings"),
        ('exclude = "*.bin"', "exclude must be list"),
    ],
)
def test_wrong_types_are_refused(tmp_path: Path, line: str, words: str) -> None:
    """A value of the wrong type is a SettingsError saying what is allowed."""
    project = git_project(tmp_path, f"[tool.xpkit]\n{line}\n")
    with pytest.raises(SettingsError, match=words):
        load_settings(project)


def test_invalid_toml_is_a_settings_error(tmp_path: Path) -> None:
    """A pyproject.toml that is not TOML is a SettingsError naming it."""
    project = git_project(tmp_path, "[tool.xpkit\n")
    with pytest.raises(SettingsError, match="invalid TOML"):
        load_settings(project)


def test_every_field_has_a_type_check() -> None:
    """Each Settings field is validated (no field silently accepts anything)."""
    from xpkit._core._settings import _FIELD_TYPES

    assert sorted(settings_fields()) == sorted(_FIELD_TYPES)


def test_results_dir_is_honoured_by_runs(tmp_path: Path) -> None:
    """A run goes under [tool.xpkit] results_dir, relative to the project root."""
    project = git_project(tmp_path, '[tool.xpkit]\nresults_dir = "out/runs"\n')
    sub = project / "scripts"
    sub.mkdir()
    (sub / "prep.py").write_text(
        "import xpkit as xp\n"
        "from dataclasses import dataclass\n"
        "@dataclass\nclass C:\n    a: int = 1\n"
        "@xp.stage\ndef main(cfg: C):\n    print(cfg.save_dir)\n"
        "if __name__ == '__main__':\n    xp.run(main)\n"
    )
    out = subprocess.run(
        [sys.executable, "prep.py"],
        cwd=sub,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    runs = [p for p in (project / "out" / "runs" / "prep").iterdir() if p.name != "latest"]
    assert len(runs) == 1
    assert (project / "out" / "runs" / "prep" / "latest").is_symlink()
    assert not (sub / "results").exists()
    assert not (project / "results").exists()
    assert str(runs[0]) in out.stdout  # save_dir as the body sees it (outside cwd: absolute)


def test_bad_settings_stop_a_script_with_exit_2(tmp_path: Path) -> None:
    """A script in a project with bad settings exits 2 with a one-line error and no run."""
    project = git_project(tmp_path, "[tool.xpkit]\nresultsdir = 1\n")
    (project / "prep.py").write_text(
        "import xpkit as xp\n"
        "@xp.stage\ndef main(cfg: dict = {'a': 1}):\n    pass\n"
        "if __name__ == '__main__':\n    xp.run(main)\n"
    )
    out = subprocess.run(
        [sys.executable, "prep.py"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "results_dir" in out.stderr
    assert not (project / "results").exists()
