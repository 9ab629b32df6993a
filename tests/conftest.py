"""Shared fixtures: every test gets a clean settings cache and a git identity."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xpkit._core._settings import clear_settings_cache

_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "xpkit tests",
    "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "xpkit tests",
    "GIT_COMMITTER_EMAIL": "tests@example.invalid",
}


@pytest.fixture(autouse=True)
def _isolated(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Forget cached project settings around each test; give git commits an author."""
    for key, value in _GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("XPKIT_ROOT", raising=False)
    # no automatic MLflow sync (a background import and store per run); MLflow tests opt in
    monkeypatch.setenv("XPKIT_TRACKING", "0")
    # the data hash cache defaults to ~/.cache; keep the suite's out of the user's
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
    clear_settings_cache()
    yield
    clear_settings_cache()
