"""Stable-Baselines3: PPO on 4 sandboxed CartPoles over 2 sandbox workers (rlmesh.sb3).

Needs the sb3 extra (pip install "rlmesh[sb3]") and a torch of your choice on the host.
"""

from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy

from rlmesh.sb3 import SandboxVecEnv

env = SandboxVecEnv("CartPole-v1", num_envs=4, num_workers=2)
try:
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, seed=0)
    model.learn(total_timesteps=1_024)
    mean, std = evaluate_policy(model, env, n_eval_episodes=4)
    print(f"PPO trained {model.num_timesteps} steps on {env.num_envs} sandboxed envs; "
          f"mean return {mean:.1f}")
finally:
    env.close()
