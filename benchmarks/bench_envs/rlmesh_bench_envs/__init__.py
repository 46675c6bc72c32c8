"""Synthetic benchmark environments; importing registers ``rlmesh_bench/Image-v0``."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ImageEnv(gym.Env):
    """An Atari-sized observation (210x160x3 uint8) at almost no compute per step.

    Each step returns a fresh frame (a copy of a base frame with one changed row), so the cost
    measured is moving observations, not making them.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, episode_length: int = 1000) -> None:
        self.observation_space = spaces.Box(0, 255, shape=(210, 160, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(4)
        self.episode_length = episode_length
        self._base = np.zeros((210, 160, 3), dtype=np.uint8)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._base[:] = self.np_random.integers(0, 255, size=3, dtype=np.uint8)
        return self._base.copy(), {}

    def step(self, action: Any):
        self._t += 1
        frame = self._base.copy()
        frame[self._t % 210] = int(action) * 60
        return frame, 1.0, False, self._t >= self.episode_length, {}


gym.register("rlmesh_bench/Image-v0", entry_point=ImageEnv)
