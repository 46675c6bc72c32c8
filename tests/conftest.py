"""Shared test setup: one session-scoped cache for uv downloads and sandbox venvs.

Set ``RLMESH_TEST_CACHE`` to a directory to keep that cache between runs (local iteration);
by default each session gets a fresh temporary one, removed at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_created: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    root = os.environ.get("RLMESH_TEST_CACHE")
    if not root:
        root = tempfile.mkdtemp(prefix="rlmesh-test-cache-")
        _created.append(root)
    os.environ["RLMESH_CACHE_DIR"] = str(Path(root) / "rlmesh")
    os.environ["UV_CACHE_DIR"] = str(Path(root) / "uv")
    os.environ.pop(
        "RLMESH_SANDBOX_RLMESH_PACKAGE", None
    )  # tests choose the rlmesh package explicitly


def pytest_unconfigure(config: pytest.Config) -> None:
    for root in _created:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
