"""A sandboxed vector env: 8 CartPoles in 2 sandbox workers, stepped with step_async/step_wait."""

import numpy as np

from rlmesh.numpy import SandboxVectorEnv

with SandboxVectorEnv("CartPole-v1", num_envs=8, num_workers=2) as envs:
    obs, infos = envs.reset(seed=0)
    envs.action_space.seed(0)
    episode_returns = np.zeros(envs.num_envs)
    finished: list[float] = []
    for _ in range(200):
        envs.step_async(envs.action_space.sample())
        # ... a learner would compute here while the workers step ...
        obs, rewards, terminated, truncated, infos = envs.step_wait()
        episode_returns += rewards
        for i in np.flatnonzero(terminated | truncated):
            finished.append(float(episode_returns[i]))
            episode_returns[i] = 0.0
    print(f"workers {envs.pids}, autoreset {envs.metadata['autoreset_mode'].name}")
    print(f"obs batch {obs.shape} {obs.dtype}; {len(finished)} episodes finished, "
          f"mean return {np.mean(finished):.1f}")
