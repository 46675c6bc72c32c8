"""An env written for the old gym API (gym 0.21-0.25): reset() returns the observation only,
seed() seeds, step() returns a 4-tuple; registered with gym, not Gymnasium."""

import gym
import numpy as np


class OldApiEnv(gym.Env):
    metadata = {"render.modes": ["ansi"]}

    def __init__(self, goal: int = 8) -> None:
        self.goal = goal
        self.observation_space = gym.spaces.Box(-100.0, 100.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.rng = np.random.default_rng()
        self.t = 0
        self.x = 0.0

    def seed(self, seed=None):
        self.rng = np.random.default_rng(seed)
        return [seed]

    def reset(self):
        self.t, self.x = 0, float(self.rng.uniform(-1, 1))
        return np.array([self.t, self.x], dtype=np.float32)

    def step(self, action):
        self.t += 1
        self.x += 1.0 if action else -1.0
        done = self.t >= self.goal
        return np.array([self.t, self.x], dtype=np.float32), float(self.x), done, {"t": self.t}


gym.register(id="rlmesh_test/OldApi-v0", entry_point=OldApiEnv, max_episode_steps=5)
