"""Every example under examples/ runs and prints what it promises."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sandbox

EXAMPLES = Path(__file__).parent.parent / "examples"

# Examples that no test runs, and why; docs/recipes.md says so next to each.
UNTESTED = {
    "rllib_env.py": "ray[rllib] pulls about 100 MB (pandas, pyarrow, scipy), pins its own "
    "gymnasium, and ray.init() costs tens of seconds on the 2-core test machines: "
    "`python3 -m nox -s rllib` runs it in a venv of its own, by hand",
}


def needs(module: str) -> pytest.MarkDecorator:
    """Skip unless ``module`` imports here (nox -s tests installs it with the CPU torch)."""
    missing = importlib.util.find_spec(module) is None
    return pytest.mark.skipif(missing, reason=f"{module} is not installed here")


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


def test_every_example_is_tested_or_listed_as_untested_with_a_reason() -> None:
    tested = {
        "gym_sandbox.py",
        "async_rollout.py",
        "vector_sandbox.py",
        "check_sandboxed_env.py",
        "envhub_sandbox.py",
        "container_sandbox.py",
        "ray_sandbox.py",
        "cleanrl_loop.py",
        "asyncio_agents.py",
        "sb3_ppo.py",
        "torchrl_env.py",
    }
    assert not tested & UNTESTED.keys()
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested | UNTESTED.keys()
    for name in UNTESTED:
        compile((EXAMPLES / name).read_text(), name, "exec")


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


def test_cleanrl_style_loop_example() -> None:
    out = run("cleanrl_loop.py")
    assert "iteration 11:" in out
    best = float(out.rsplit("best mean return ", 1)[1])
    assert best >= 9.0, out


def test_asyncio_agents_example() -> None:
    out = run("asyncio_agents.py")
    assert "8 agents, 16 episodes" in out
    batches = int(out.split(", ")[-1].split()[0])
    assert batches > 0, out


@needs("stable_baselines3")
def test_sb3_ppo_example() -> None:
    out = run("sb3_ppo.py")
    assert "PPO trained 1024 steps on 4 sandboxed envs" in out


@needs("torchrl")
def test_torchrl_example() -> None:
    out = run("torchrl_env.py")
    assert "single env: rollout of" in out and "vector env: rollout batch (4, 20)" in out


@pytest.mark.ray
def test_ray_example() -> None:
    """In the Ray part of the test session (a network namespace with only loopback)."""
    pytest.importorskip("ray")  # the nox tests session installs the ray extra
    out = run("ray_sandbox.py")
    assert "4 CartPoles in 2 sandboxes on Ray: obs batch (4, 4)" in out
    assert "rewards after 20 steps" in out
