"""RLlib: a sandboxed env as an RLlib environment.

RLlib makes each env through a registered creator, in each of its env runners; the creator
returns a SandboxEnv, so every runner gets its own sandbox, and env_config carries the
sandbox's options. Needs ray[rllib] and torch. Not in the test suite: `nox -s rllib` runs it.
"""

from ray.rllib.algorithms.ppo import PPOConfig
from ray.tune.registry import register_env

from rlmesh.numpy import SandboxEnv


def make_sandboxed_cartpole(config: dict) -> SandboxEnv:
    return SandboxEnv("CartPole-v1", **config)


register_env("sandboxed-cartpole", make_sandboxed_cartpole)

config = (
    PPOConfig()
    .environment("sandboxed-cartpole", env_config={"call_timeout": 60.0})
    .env_runners(num_env_runners=1)
    .training(train_batch_size_per_learner=512, minibatch_size=128, num_epochs=1)
)
algo = config.build_algo()
try:
    result = algo.train()
    print(f"RLlib PPO: training iteration {result['training_iteration']} done")
finally:
    algo.stop()
