"""The seed's EnvHub example: LeRobot's CartPole demo (suite cartpole_suite, task 0).

Unpinned for convenience, as in the seed; pin a full commit sha for real evaluations
(hf://lerobot/cartpole-env@<sha>:cartpole_suite/0). It needs the repository in your Hugging
Face cache or the Hub within reach; the tests run it against a cache they build offline.
"""

from rlmesh.numpy import SandboxEnv

with SandboxEnv(
    "hf://lerobot/cartpole-env:cartpole_suite/0",
    trust_remote_code=True,
    allow_unpinned_hf=True,
) as env:
    observation, info = env.reset(seed=0)
    action = env.action_space.sample()
    observation, reward, terminated, truncated, info = env.step(action)
    print(f"resolved to {env.sandbox.resolved_source}")
    print(f"step -> reward={reward}, terminated={terminated}, obs shape {observation.shape}")
