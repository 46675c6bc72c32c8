"""How the async faces wait for replies: spinning, the standing asyncio reader, the gate.

On asyncio and on trio (the anyio_backend fixture), with real sandboxes.
"""

from __future__ import annotations

import os

import anyio
import pytest
from sandbox_options import TEST_ENVS

from rlmesh._core import channels as _transport
from rlmesh.numpy import AsyncSandboxEnv

pytestmark = [pytest.mark.anyio]


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.sandbox
async def test_a_lone_stepping_env_still_lets_the_loops_other_tasks_run() -> None:
    """A lone request spins for its reply, but only after giving other tasks a turn."""
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with AsyncSandboxEnv("CartPole-v1") as env, anyio.create_task_group() as group:
        group.start_soon(ticker)
        await env.reset(seed=0)
        ticks = 0
        for step in range(300):
            _, _, terminated, truncated, _ = await env.step(step & 1)
            if terminated or truncated:
                await env.reset()
        done = True
    assert ticks >= 300  # at least one turn per step


@pytest.mark.sandbox
async def test_slow_replies_to_several_envs_park_and_arrive_and_close_leaves_no_fd() -> None:
    """Several requests in flight park in the loop (asyncio: a standing reader on a
    duplicate fd); closing unregisters and closes it; nothing stays counted in flight."""
    before = _open_fds()
    envs = [
        await AsyncSandboxEnv.create(
            "rlmesh_test/Faulty-v0", mode="sleep", factor=0.05, **TEST_ENVS
        )
        for _ in range(2)
    ]
    try:
        for env in envs:
            await env.reset()
        seen: list[int] = []

        async def step(env: AsyncSandboxEnv) -> None:
            for _ in range(3):  # step 1 answers at once, the others after 50 ms
                *_, info = await env.step(0)
                seen.append(info["t"])

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for env in envs:
                    group.start_soon(step, env)
        assert sorted(seen) == [1, 1, 2, 2, 3, 3]
    finally:
        for env in envs:
            await env.aclose()
    assert _transport._in_flight.count == 0
    assert _open_fds() <= before


@pytest.mark.sandbox
async def test_a_cancelled_parked_step_is_counted_out_when_the_env_closes() -> None:
    async with AsyncSandboxEnv(
        "rlmesh_test/Faulty-v0", mode="sleep", factor=0.2, **TEST_ENVS
    ) as env:
        await env.reset()
        await env.step(0)
        with anyio.move_on_after(0.05):  # parked on a 200 ms step, then cancelled
            await env.step(0)
        assert _transport._in_flight.count == 1  # its reply is still owed
    assert _transport._in_flight.count == 0


async def test_the_gate_hands_over_in_order_and_skips_a_cancelled_waiter() -> None:
    gate = _transport._Gate()
    order: list[str] = []
    release = anyio.Event()
    doomed = anyio.CancelScope()

    async def holder() -> None:
        async with gate:
            order.append("holder")
            await release.wait()

    async def waiter(name: str) -> None:
        async with gate:
            order.append(name)

    async def cancelled_waiter() -> None:
        with doomed:
            await waiter("cancelled")

    async with anyio.create_task_group() as group:
        for task in (holder, lambda: waiter("first"), cancelled_waiter, lambda: waiter("third")):
            group.start_soon(task)
            await anyio.wait_all_tasks_blocked()  # queue them in this order
        doomed.cancel()
        await anyio.wait_all_tasks_blocked()
        assert gate.locked()
        release.set()
    assert order == ["holder", "first", "third"]
    assert not gate.locked()
