"""Sandboxed vector envs against Gymnasium's own SyncVectorEnv, sharded and not."""

from __future__ import annotations

import os
from typing import Any

import anyio
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import AlreadyPendingCallError, NoAsyncCallError
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode
from sandbox_options import TEST_ENVS

from rlmesh import SandboxClosedError, SandboxCrashedError
from rlmesh.numpy import AsyncSandboxVectorEnv, SandboxVectorEnv, State

pytestmark = pytest.mark.sandbox


def reference(env_id: str, num_envs: int, mode: AutoresetMode) -> Any:
    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": mode},
    )  # fmt: skip


def same(a: Any, b: Any) -> bool:
    return bool(data_equivalence(a, b, exact=True))


@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda m: m.value)
@pytest.mark.parametrize("workers", [1, 2])
def test_seeded_batches_match_gymnasium(mode: AutoresetMode, workers: int) -> None:
    ref = reference("CartPole-v1", 5, mode)
    with SandboxVectorEnv("CartPole-v1", num_envs=5, num_workers=workers,
                          autoreset_mode=mode) as env:  # fmt: skip
        assert env.metadata["autoreset_mode"] is mode
        assert env.single_observation_space == ref.single_observation_space
        assert env.observation_space == ref.observation_space
        assert env.action_space == ref.action_space and env.num_envs == 5
        assert same(env.reset(seed=11), ref.reset(seed=11))
        ref.action_space.seed(3)
        for _ in range(120):
            actions = ref.action_space.sample()
            got, want = env.step(actions), ref.step(actions)
            assert same(got, want), (got, want)
            done = want[2] | want[3]
            if mode is AutoresetMode.DISABLED and done.any():
                options = {"reset_mask": done}
                assert same(env.reset(options=options), ref.reset(options=options))


def test_step_async_and_wait_overlap_with_host_work() -> None:
    ref = reference("CartPole-v1", 4, AutoresetMode.NEXT_STEP)
    with SandboxVectorEnv("CartPole-v1", num_envs=4, num_workers=2) as env:
        assert same(env.reset(seed=0), ref.reset(seed=0))
        actions = np.array([0, 1, 1, 0])
        env.step_async(actions)
        with pytest.raises(AlreadyPendingCallError, match="awaits its step_wait"):
            env.step(actions)
        assert same(env.step_wait(), ref.step(actions))
        with pytest.raises(NoAsyncCallError, match="without a step_async"):
            env.step_wait()


def test_call_get_attr_set_attr_and_render() -> None:
    with SandboxVectorEnv("FrozenLake-v1", num_envs=3, num_workers=2, render_mode="ansi") as env:
        env.reset(seed=0)
        assert env.get_attr("render_mode") == ("ansi",) * 3
        env.set_attr("custom", [1, 2, 3])
        assert env.get_attr("custom") == (1, 2, 3)
        env.set_attr("custom", 7)
        assert env.get_attr("custom") == (7, 7, 7)
        frames = env.render()
        assert isinstance(frames, tuple) and len(frames) == 3 and all("S" in f for f in frames)
        assert env.call("render") == frames


def test_bad_vector_options_fail_fast() -> None:
    with pytest.raises(ValueError, match="num_workers=4 exceeds num_envs=2"):
        SandboxVectorEnv("CartPole-v1", num_envs=2, num_workers=4)
    with pytest.raises(ValueError, match="vectorization_mode"):
        SandboxVectorEnv("CartPole-v1", num_envs=2, vectorization_mode="threads")
    with pytest.raises(ValueError, match="autoreset_mode"):
        AsyncSandboxVectorEnv("CartPole-v1", num_envs=2, autoreset_mode="sometimes")
    with SandboxVectorEnv("CartPole-v1", num_envs=2) as env:
        env.reset(seed=0)
        with pytest.raises(ValueError, match="batched action space"):
            env.step(np.array([0, 5]))
        assert env.step(np.array([0, 1]))[0].shape == (2, 4)


def test_a_crashed_worker_is_named_and_close_leaves_nothing_behind() -> None:
    env = SandboxVectorEnv("rlmesh_test/Faulty-v0", num_envs=4, num_workers=2, **TEST_ENVS)
    pids = env.pids
    env.reset(seed=0)
    env.set_attr("mode", ["ok", "ok", "exit", "ok"])  # sub-env 2 lives in worker 1
    with pytest.raises(SandboxCrashedError, match=r"\[worker 1/2\].*exit code 3"):
        env.step(np.zeros(4, dtype=np.int64))
    assert env.state is State.BROKEN
    with pytest.raises(SandboxClosedError, match="broken"):
        env.step(np.zeros(4, dtype=np.int64))
    env.close()
    env.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.anyio
async def test_async_face_matches_gymnasium_with_split_steps() -> None:
    ref = reference("CartPole-v1", 3, AutoresetMode.NEXT_STEP)
    async with AsyncSandboxVectorEnv("CartPole-v1", num_envs=3, num_workers=3) as env:
        assert env.num_envs == 3 and len(env.pids) == 3
        assert same(await env.reset(seed=5), ref.reset(seed=5))
        for step in range(30):
            actions = np.array([step % 2, 1, 0])
            if step % 2:
                got = await env.step(actions)
            else:
                await env.step_async(actions)
                got = await env.step_wait()
            assert same(got, ref.step(actions))
        assert await env.get_attr("gravity") == (9.8, 9.8, 9.8)
    assert env.state is State.CLOSED


@pytest.mark.anyio
async def test_one_crashing_sandbox_among_sixteen_does_not_hang_the_others() -> None:
    from rlmesh.numpy import AsyncSandboxEnv

    modes = ["exit" if i == 7 else "ok" for i in range(16)]
    envs = [
        await AsyncSandboxEnv.create("rlmesh_test/Faulty-v0", mode=m, **TEST_ENVS) for m in modes
    ]
    steps = [0] * 16

    async def rollout(i: int) -> None:
        await envs[i].reset(seed=i)
        for _ in range(20):
            await envs[i].step(0)
            steps[i] += 1

    try:
        with pytest.raises(BaseException) as caught:  # an exception group
            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    for i in range(16):
                        group.start_soon(rollout, i)
        leaves = getattr(caught.value, "exceptions", [caught.value])
        assert any(isinstance(e, SandboxCrashedError) and e.exit_code == 3 for e in leaves)
        assert steps[7] == 0
    finally:
        for env in envs:
            await env.aclose()
    assert all(env.state is State.CLOSED for env in envs)


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_large_observations_travel_through_shared_memory_and_leave_nothing() -> None:
    import sys

    sys.path.insert(0, TEST_ENVS["packages"][0])
    import rlmesh_test_envs  # noqa: F401 - registers the same envs here, for the reference

    before = shm_entries()
    ref = reference("rlmesh_test/Image-v0", 4, AutoresetMode.NEXT_STEP)
    env = SandboxVectorEnv("rlmesh_test/Image-v0", num_envs=4, num_workers=2, **TEST_ENVS)
    try:
        assert env._core.shm_workers == [0, 1]
        for pid in env.pids:  # the worker really holds a memfd
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            assert any(link.startswith("/memfd:rlmesh-obs") for link in links), links
        assert same(env.reset(seed=2), ref.reset(seed=2))
        for step in range(30):
            actions = np.array([step % 3, 1, 2, 0])
            got, want = env.step(actions), ref.step(actions)
            assert same(got, want)
            got[0][0] += 1  # the caller's batch is its own copy
        with pytest.raises(SandboxCrashedError, match=r"\[worker 1/2\].*exit code 4"):
            env.step(np.array([0, 0, 3, 0]))
    finally:
        env.close()
    assert shm_entries() == before
    for pid in env.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
