"""SandboxEnv end to end: real uv venvs, real child processes, real Gymnasium envs."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from sandbox_options import TEST_ENVS

from rlmesh import (
    RemoteEnvError,
    SandboxClosedError,
    SandboxCrashedError,
    SandboxStartupError,
)
from rlmesh.numpy import OpaqueSpace, RemoteObject, SandboxEnv, State
from rlmesh.testing import check_sandbox_env

pytestmark = pytest.mark.sandbox

TAXI = "Taxi-v3" if "Taxi-v3" in gym.registry else "Taxi-v4"
SEEDED = ["CartPole-v1", "Pendulum-v1", "FrozenLake-v1", "Blackjack-v1", TAXI]


@pytest.mark.parametrize("env_id", SEEDED)
def test_seeded_trajectories_match_in_process_gymnasium(env_id: str) -> None:
    # rlmesh.testing plays the same seeded episodes here and in the sandbox and requires
    # equal spaces, values and types, and no check_env warning the in-process env lacks.
    report = check_sandbox_env(env_id, seeds=(100, 101, 102), max_steps=60)
    assert report.compared and report.episodes == 3 and report.steps >= 3
    local = gym.make(env_id)
    with SandboxEnv(env_id) as env:
        assert env.spec is not None and env.spec.id == local.spec.id
        assert env.spec.max_episode_steps == local.spec.max_episode_steps


def test_sandbox_runs_the_hosts_gymnasium_and_no_host_only_packages() -> None:
    with SandboxEnv("CartPole-v1") as env:
        versions = env.sandbox_versions
        assert versions["gymnasium"] == gym.__version__
        assert versions["pid"] == env.pid
        probe = subprocess.run(
            [versions["executable"], "-I", "-c",
             "import importlib.util as u;"
             "print([m for m in ('anyio', 'uv', 'huggingface_hub') if u.find_spec(m)])"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert probe.stdout.strip() == "[]"


def test_env_errors_carry_the_remote_traceback_and_the_env_stays_usable() -> None:
    with SandboxEnv("rlmesh_test/Faulty-v0", mode="raise", **TEST_ENVS) as env:
        env.reset(seed=0)
        env.step(0)
        with pytest.raises(RemoteEnvError) as caught:
            env.step(0)
        assert caught.value.remote_type == "builtins.ValueError"
        assert caught.value.remote_message == "boom at step 2"
        assert "rlmesh_test_envs/__init__.py" in caught.value.remote_traceback
        assert "in step" in str(caught.value)
        assert "add what is missing" not in str(caught.value)  # that hint is for imports
        assert env.state is State.READY
        _obs, info = env.reset(options={"again": True})
        assert info == {"options": {"again": True}}


def test_os_exit_is_a_crash_with_exit_code_and_stderr_tail() -> None:
    env = SandboxEnv("rlmesh_test/Faulty-v0", mode="exit", **TEST_ENVS)
    env.reset()
    started = time.monotonic()
    with pytest.raises(SandboxCrashedError) as caught:
        env.step(0)
    assert time.monotonic() - started < 2.0
    error = caught.value
    assert error.exit_code == 3 and error.pid == env.pid
    assert "exit code 3" in str(error) and "rlmesh_test/Faulty-v0" in str(error)
    assert "goodbye from the env" in error.stderr_tail
    assert env.state is State.BROKEN
    with pytest.raises(SandboxClosedError, match="broken: SandboxCrashedError"):
        env.reset()
    env.close()
    env.close()
    assert env.state is State.CLOSED


def test_printing_env_does_not_corrupt_the_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    with SandboxEnv("rlmesh_test/Faulty-v0", mode="print", **TEST_ENVS) as env:
        pid = env.pid
        env.reset()
        for t in range(1, 21):
            obs, _reward, _terminated, _truncated, info = env.step(1)
            assert info["t"] == t and obs.tolist() == [t, t]
    err = capsys.readouterr().err
    prefix = f"[rlmesh_test/Faulty-v0 pid {pid}] "
    assert prefix + "hello from print 20" in err
    assert prefix + "hello from stderr 20" in err
    assert prefix + "raw write to fd 1" in err


def test_messy_env_degrades_gracefully() -> None:
    with SandboxEnv("rlmesh_test/Faulty-v0", mode="messy", **TEST_ENVS) as env:
        assert type(env.observation_space) is gym.spaces.Box  # CustomBox(Box) -> Box
        assert isinstance(env.action_space, OpaqueSpace)
        action = env.action_space.sample()  # sampled in the sandbox
        assert 10 <= action < 20
        assert env.action_space.contains(15) and not env.action_space.contains(3)
        env.reset()
        _obs, reward, _terminated, _truncated, info = env.step(action)
        assert type(reward) is int
        assert info["thing"] == RemoteObject("rlmesh_test_envs.Unserialisable",
                                             "<Unserialisable thing>")  # fmt: skip


def test_callables_in_make_kwargs_travel_by_cloudpickle() -> None:
    with SandboxEnv("rlmesh_test/Faulty-v0", factor=lambda t: t * 10.0, **TEST_ENVS) as env:
        env.reset()
        assert env.step(0)[0].tolist() == [10.0, 10.0]


def test_actions_outside_the_space_are_refused_before_sending() -> None:
    with SandboxEnv("CartPole-v1") as env:
        env.reset(seed=0)
        with pytest.raises(ValueError, match=r"action 2 .* not in the action space Discrete\(2\)"):
            env.step(2)
        with pytest.raises(ValueError, match=r"action_space\.sample"):
            env.step("left")
        assert env.step(np.int64(1))[0].shape == (4,)


def test_failing_import_is_a_startup_error_quoting_it() -> None:
    with pytest.raises(SandboxStartupError, match="No module named 'definitely_not_a_module'"):
        SandboxEnv("CartPole-v1", imports=["definitely_not_a_module"])


def test_unknown_env_id_is_a_startup_error() -> None:
    with pytest.raises(SandboxStartupError, match="NoSuchEnv"):
        SandboxEnv("NoSuchEnv-v0")


def test_ansi_render_returns_str() -> None:
    with SandboxEnv("FrozenLake-v1", render_mode="ansi") as env:
        assert env.render_mode == "ansi"
        env.reset(seed=0)
        text = env.render()
        assert isinstance(text, str) and "S" in text
        assert env.spec is not None
        again = gym.make(env.spec, render_mode="ansi")  # a second sandbox, made by Gymnasium
        try:
            again.reset(seed=0)
            assert again.render() == text
        finally:
            again.close()


def test_rgb_array_render_returns_uint8_frames() -> None:
    packages = [f"gymnasium[classic-control]=={gym.__version__}"]
    with SandboxEnv("CartPole-v1", packages=packages, render_mode="rgb_array") as env:
        env.reset(seed=0)
        frame = env.render()
        assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
        assert frame.ndim == 3 and frame.shape[2] == 3 and frame.shape[0] > 100


def test_a_package_missing_in_the_sandbox_says_to_add_it_to_packages() -> None:
    # The sandbox has gymnasium without its classic-control extra, so no pygame to render.
    with SandboxEnv("CartPole-v1", render_mode="rgb_array") as env:
        env.reset(seed=0)
        with pytest.raises(RemoteEnvError, match=r"DependencyNotInstalled") as caught:
            env.render()
        text = str(caught.value)
        assert "add what is missing there" in text and "gymnasium[classic-control]" in text
        assert "No module named 'pygame'" in caught.value.remote_traceback
        assert env.step(0)[0].shape == (4,)  # still usable


def test_close_is_idempotent_and_calls_after_close_say_so() -> None:
    env = SandboxEnv("CartPole-v1")
    pid = env.pid
    env.close()
    env.close()
    with pytest.raises(SandboxClosedError, match="closed"):
        env.step(0)
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


def test_works_from_several_threads() -> None:
    errors: list[BaseException] = []
    shared = SandboxEnv("CartPole-v1")
    shared.reset(seed=0)

    def run() -> None:
        try:
            with SandboxEnv("CartPole-v1") as own:
                own.reset(seed=1)
                for _ in range(20):
                    own.step(0)
                    obs, *_ = shared.step(1)
                    assert obs.shape == (4,)
                    shared.reset()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    shared.close()
    assert errors == []


def test_works_inside_a_running_event_loop() -> None:
    async def notebook_cell() -> Any:
        with SandboxEnv("CartPole-v1") as env:
            obs, _ = env.reset(seed=0)
            return obs

    obs = asyncio.run(notebook_cell())
    assert obs.shape == (4,)
