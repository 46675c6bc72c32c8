"""AsyncSandboxEnv end to end, on asyncio and on trio (the anyio_backend fixture)."""

from __future__ import annotations

import time

import anyio
import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import data_equivalence
from sandbox_options import TEST_ENVS

from rlmesh import RemoteEnvError, SandboxClosedError, SandboxCrashedError
from rlmesh.numpy import AsyncSandboxEnv, State

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]


async def test_create_then_step_like_in_process_gymnasium() -> None:
    env = await AsyncSandboxEnv.create("CartPole-v1")
    try:
        local = gym.make("CartPole-v1")
        assert env.observation_space == local.observation_space
        assert env.action_space == local.action_space
        assert env.metadata["render_fps"] == local.metadata["render_fps"]
        assert env.render_mode is None and env.spec is not None
        assert env.spec.id == "CartPole-v1"
        assert data_equivalence(await env.reset(seed=5), local.reset(seed=5), exact=True)
        for action in [0, 1, 1, 0, 1, 0, 0]:
            got, want = await env.step(action), local.step(action)
            assert data_equivalence(got, want, exact=True)
    finally:
        await env.aclose()
    assert env.state is State.CLOSED
    await env.aclose()  # idempotent


async def test_async_with_starts_and_closes() -> None:
    async with AsyncSandboxEnv("FrozenLake-v1", render_mode="ansi") as env:
        assert env.state is State.READY
        obs, info = await env.reset(seed=0)
        assert type(obs) is int and info == {"prob": 1}
        assert "S" in await env.render()
    assert env.state is State.CLOSED
    with pytest.raises(SandboxClosedError, match="closed"):
        await env.step(0)


async def test_calls_before_start_say_how_to_start() -> None:
    env = AsyncSandboxEnv("CartPole-v1")
    with pytest.raises(SandboxClosedError, match=r"AsyncSandboxEnv.create"):
        await env.step(0)
    with pytest.raises(SandboxClosedError, match="not started"):
        _ = env.action_space
    await env.aclose()


async def test_remote_error_then_usable() -> None:
    async with AsyncSandboxEnv("rlmesh_test/Faulty-v0", mode="raise", **TEST_ENVS) as env:
        await env.reset()
        await env.step(1)
        with pytest.raises(RemoteEnvError, match="boom at step 2") as caught:
            await env.step(1)
        assert "Traceback" in caught.value.remote_traceback
        obs, _info = await env.reset()
        assert obs.tolist() == [0.0, 0.0]


async def test_crash_is_reported_within_two_seconds() -> None:
    async with AsyncSandboxEnv("rlmesh_test/Faulty-v0", mode="exit", **TEST_ENVS) as env:
        await env.reset()
        started = time.monotonic()
        with pytest.raises(SandboxCrashedError) as caught:
            await env.step(0)
        assert time.monotonic() - started < 2.0
        assert caught.value.exit_code == 3 and "goodbye from the env" in caught.value.stderr_tail
        assert env.state is State.BROKEN


async def test_concurrent_tasks_on_one_env_are_serialised() -> None:
    async with AsyncSandboxEnv("rlmesh_test/Faulty-v0", **TEST_ENVS) as env:
        await env.reset()
        seen: list[int] = []

        async def stepper() -> None:
            for _ in range(10):
                *_, info = await env.step(0)
                seen.append(info["t"])

        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(stepper)
        assert sorted(seen) == list(range(1, 41))


async def test_a_cancelled_step_leaves_the_env_usable() -> None:
    async with AsyncSandboxEnv("rlmesh_test/Faulty-v0", **TEST_ENVS) as env:
        await env.reset()
        with anyio.move_on_after(0):  # cancelled before the reply is read
            await env.step(0)
        *_, info = await env.step(0)  # the stale reply was drained first
        assert info["t"] in (1, 2)
        *_, later = await env.step(0)
        assert later["t"] == info["t"] + 1
