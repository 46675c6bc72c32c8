"""Agent rollouts on plain asyncio: many sandboxed envs, one batched policy.

Each agent task owns an AsyncSandboxEnv and awaits its actions from a policy task, which
answers every agent waiting at that moment with one batched (numpy) computation: the shape of
an agent loop whose policy is a model server. Nothing here blocks the event loop: the envs
step in their own processes while the loop serves the others.
"""

import asyncio

import numpy as np

from rlmesh.numpy import AsyncSandboxEnv

NUM_AGENTS, EPISODES_PER_AGENT = 8, 2


class BatchedPolicy:
    """Collects observations from the agents and answers them in batches."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[int]]] = asyncio.Queue()
        self.batches = 0
        self.weights = np.array([0.0, 0.0, 1.0, 1.0])  # push towards the pole's lean

    async def act(self, obs: np.ndarray) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self.queue.put((obs, future))
        return await future

    async def serve(self) -> None:
        while True:
            waiting = [await self.queue.get()]
            while not self.queue.empty():
                waiting.append(self.queue.get_nowait())
            batch = np.stack([obs for obs, _ in waiting])
            actions = (batch @ self.weights > 0).astype(int)
            self.batches += 1
            for (_, future), action in zip(waiting, actions, strict=True):
                future.set_result(int(action))


async def agent(index: int, policy: BatchedPolicy) -> list[float]:
    returns = []
    async with AsyncSandboxEnv("CartPole-v1") as env:
        for episode in range(EPISODES_PER_AGENT):
            obs, info = await env.reset(seed=100 * index + episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, info = await env.step(await policy.act(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    return returns


async def main() -> None:
    policy = BatchedPolicy()
    server = asyncio.create_task(policy.serve())
    try:
        results = await asyncio.gather(*(agent(i, policy) for i in range(NUM_AGENTS)))
    finally:
        server.cancel()
    returns = [value for per_agent in results for value in per_agent]
    print(f"{NUM_AGENTS} agents, {len(returns)} episodes, mean return {np.mean(returns):.1f}, "
          f"{policy.batches} policy batches")


if __name__ == "__main__":
    asyncio.run(main())
