"""A CleanRL-style loop: one file, a vector env, a plain numpy policy, episode statistics.

CleanRL's scripts build `gym.vector.SyncVectorEnv([make_env(...) for i in range(n)])`; with
rlmesh that one line becomes a SandboxVectorEnv, and the rest of the loop stays as it was.
The policy here is linear and trained by hill climbing, so the loop runs without torch.
"""

import numpy as np
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from rlmesh.numpy import SandboxVectorEnv

SEED, NUM_ENVS, ITERATIONS, STEPS_PER_ITERATION = 1, 8, 12, 200

envs = RecordEpisodeStatistics(SandboxVectorEnv("CartPole-v1", num_envs=NUM_ENVS))
rng = np.random.default_rng(SEED)
weights = np.zeros(envs.single_observation_space.shape[0])
best_return = -np.inf

next_obs, _ = envs.reset(seed=SEED)
for iteration in range(ITERATIONS):
    candidate = weights + rng.normal(scale=0.5, size=weights.shape)
    returns: list[float] = []
    for _ in range(STEPS_PER_ITERATION):
        actions = (next_obs @ candidate > 0).astype(np.int64)
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        if "episode" in infos:
            returns.extend(infos["episode"]["r"][infos["_episode"]].tolist())
    mean_return = float(np.mean(returns)) if returns else 0.0
    if mean_return > best_return:
        weights, best_return = candidate, mean_return
    print(f"iteration {iteration}: {len(returns)} episodes, mean return {mean_return:.1f}")
envs.close()
print(f"best mean return {best_return:.1f}")
