"""An async rollout loop: 16 sandboxed envs stepped concurrently, on asyncio and on trio."""

from __future__ import annotations

import anyio

from rlmesh.numpy import AsyncSandboxEnv


async def rollout(env: AsyncSandboxEnv, seed: int) -> float:
    obs, info = await env.reset(seed=seed)
    env.action_space.seed(seed)
    total = 0.0
    while True:
        _obs, reward, terminated, truncated, _info = await env.step(env.action_space.sample())
        total += float(reward)
        if terminated or truncated:
            return total


async def main() -> None:
    envs = [await AsyncSandboxEnv.create("CartPole-v1") for _ in range(16)]
    returns: dict[int, float] = {}
    try:

        async def run(index: int) -> None:
            returns[index] = await rollout(envs[index], seed=index)

        async with anyio.create_task_group() as group:
            for index in range(len(envs)):
                group.start_soon(run, index)
    finally:
        for env in envs:
            await env.aclose()
    print(f"returns: {[returns[i] for i in range(len(envs))]}")


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        print(f"{backend}: ", end="", flush=True)
        anyio.run(main, backend=backend)
