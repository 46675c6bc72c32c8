"""A vector env whose sandbox workers are placed on a Ray cluster's nodes.

Each worker is an ordinary sandbox (a uv virtualenv from rlmesh's cache, a child process),
built and started by a host actor on its node; frames travel as opaque bytes. Here the
"cluster" is a local one, started by ray.init() with two CPUs; pass address="ray://..." to
RayBackend (or call ray.init(address=...)) to join a real one.
"""

import numpy as np
import ray

from rlmesh.numpy import SandboxVectorEnv
from rlmesh.ray import RayBackend

ray.init(num_cpus=2, include_dashboard=False)
try:
    backend = RayBackend(resources={"CPU": 0.5}, envs_per_host=1)
    with SandboxVectorEnv("CartPole-v1", num_envs=4, num_workers=2, backend=backend) as env:
        obs, info = env.reset(seed=0)
        total = np.zeros(4)
        for _ in range(20):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            total += reward
        print(f"4 CartPoles in 2 sandboxes on Ray: obs batch {obs.shape}, "
              f"rewards after 20 steps {total.tolist()}")
finally:
    ray.shutdown()
