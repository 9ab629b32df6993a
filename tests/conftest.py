"""Shared fixtures: every test gets a clean settings cache and a git identity; an S3 server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from xpkit._core._lock import new_run_id
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


@pytest.fixture(scope="session")
def s3_server() -> Any:
    """A local S3-compatible server (moto) on a free port of 127.0.0.1; yields its endpoint."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    # port 0: the server binds a port the kernel picks, so no other process can take it
    # between choosing and binding (a taken port would leave start() waiting forever)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_store(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; botocore (under s3fs) finds the server through AWS_ENDPOINT_URL."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"xpkit-{new_run_id()}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/team/store"
