"""TorchRL: a sandboxed env, and a sandboxed vector env, behind TorchRL's GymWrapper.

SandboxEnv is a real gymnasium.Env, so TorchRL wraps it as it wraps any Gymnasium env. For a
vector env TorchRL wants Gymnasium's SAME_STEP (or DISABLED) autoreset mode: ask for it.
Needs torch and torchrl on the host only; the sandbox holds gymnasium and the env.
"""

from torchrl.envs import GymWrapper
from torchrl.envs.utils import check_env_specs

from rlmesh.numpy import SandboxEnv, SandboxVectorEnv

env = GymWrapper(SandboxEnv("CartPole-v1"))
check_env_specs(env)
rollout = env.rollout(max_steps=50)
print(f"single env: rollout of {rollout.batch_size[0]} steps, "
      f"return {rollout['next', 'reward'].sum().item():.1f}")
env.close()

envs = GymWrapper(SandboxVectorEnv("CartPole-v1", num_envs=4, autoreset_mode="SameStep"))
rollout = envs.rollout(max_steps=20, break_when_any_done=False)  # sub-envs reset themselves
print(f"vector env: rollout batch {tuple(rollout.batch_size)}")
envs.close()
