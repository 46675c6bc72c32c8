"""Every example under examples/ runs and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sandbox

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_gym_sandbox_example() -> None:
    out = run("gym_sandbox.py")
    assert "gymnasium 1.3.0 in the sandbox" in out
    assert "reward=1.0, terminated=False" in out


def test_every_example_is_tested() -> None:
    tested = {
        "gym_sandbox.py",
        "async_rollout.py",
        "vector_sandbox.py",
        "check_sandboxed_env.py",
        "envhub_sandbox.py",
        "container_sandbox.py",
    }
    assert {p.name for p in EXAMPLES.glob("*.py")} <= tested


def test_async_rollout_example() -> None:
    out = run("async_rollout.py")
    assert "asyncio:" in out and "trio:" in out


def test_vector_sandbox_example() -> None:
    out = run("vector_sandbox.py")
    assert "autoreset NEXT_STEP" in out and "obs batch (8, 4) float32" in out


def test_check_sandboxed_env_example() -> None:
    out = run("check_sandboxed_env.py")
    assert "CartPole-v1: compared with in-process=True, 3 episodes" in out


def test_envhub_example(hf_commits: dict[str, str]) -> None:
    """The seed's EnvHub example, against the session's offline Hugging Face cache."""
    out = run("envhub_sandbox.py")
    commit = hf_commits["lerobot/cartpole-env"]
    assert f"resolved to hf://lerobot/cartpole-env@{commit}:cartpole_suite/0" in out
    assert "step -> reward=1.0, terminated=False, obs shape (4,)" in out


def test_container_example() -> None:
    """Where podman and the image of .ci/containers are present (CI requires them)."""
    from test_containers import IMAGE, _missing

    why = _missing("podman")
    if why:
        if os.environ.get("RLMESH_REQUIRE_CONTAINERS") == "1":
            pytest.fail(why)
        pytest.skip(f"{why}: run .ci/containers (as root)")
    out = run("container_sandbox.py")
    assert f"of {IMAGE} via podman" in out and "Python 3.11." in out
    assert "reward=1.0, terminated=False" in out
