"""Shared test setup: one session-scoped cache for uv downloads and sandbox venvs.

Set ``RLMESH_TEST_CACHE`` to a directory to keep that cache between runs (local iteration);
by default each session gets a fresh temporary one, removed at the end.

The Hugging Face Hub is out of reach here: the session's Hugging Face cache is a directory of
its own, offline (``HF_HUB_OFFLINE=1``), holding the EnvHub fixture repositories of
``hf_repos.py``. Both are set before anything imports huggingface_hub, which reads them once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hf_repos
import pytest
from ray_cluster import ray_session_cluster

_created: list[str] = []
_hf_commits: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    root = os.environ.get("RLMESH_TEST_CACHE")
    if not root:
        root = tempfile.mkdtemp(prefix="rlmesh-test-cache-")
        _created.append(root)
    os.environ["RLMESH_CACHE_DIR"] = str(Path(root) / "rlmesh")
    os.environ["UV_CACHE_DIR"] = str(Path(root) / "uv")
    # tests choose the rlmesh package and the backend explicitly
    os.environ.pop("RLMESH_SANDBOX_RLMESH_PACKAGE", None)
    os.environ.pop("RLMESH_SANDBOX_BASE_IMAGE", None)
    hf = Path(tempfile.mkdtemp(prefix="rlmesh-test-hf-"))
    _created.append(str(hf))
    os.environ["HF_HOME"] = str(hf / "home")
    os.environ["HF_HUB_CACHE"] = str(hf / "hub")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("HF_TOKEN", None)
    global _hf_commits
    _hf_commits = hf_repos.write_all(hf / "hub")


def pytest_unconfigure(config: pytest.Config) -> None:
    for root in _created:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One local Ray cluster for the session (``ray_cluster``), for the ``ray`` tests."""
    pytest.importorskip("ray")  # the nox tests session installs the ray extra
    yield from ray_session_cluster()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def hf_commits() -> dict[str, str]:
    """The EnvHub fixture repositories in the session's Hugging Face cache: id -> commit."""
    return dict(_hf_commits)
