"""Test environments for rlmesh: each misbehaves in one way real third-party envs do.

Importing this module registers them with Gymnasium (ids ``rlmesh_test/...``), the way
third-party packages register on import; the tests pass ``imports=["rlmesh_test_envs"]``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class CustomBox(spaces.Box):
    """A third-party subclass of a standard space: travels as its base class."""


class Weird(spaces.Space):
    """A space with no standard base: the host sees an opaque space."""

    def __init__(self) -> None:
        super().__init__(shape=(), dtype=np.int64)

    def sample(self, mask: Any = None, probability: Any = None) -> Any:
        return int(self.np_random.integers(10, 20))

    def contains(self, x: Any) -> bool:
        return isinstance(x, (int, np.integer)) and 10 <= int(x) < 20


class Unserialisable:
    def __repr__(self) -> str:
        return "<Unserialisable thing>"


class FaultyEnv(gym.Env):
    """Steps fine, or misbehaves according to ``mode``:

    raise       step() raises ValueError("boom at step N")
    exit        step() calls os._exit(3)
    print       step() prints to stdout, stderr and fd 1 directly
    messy       returns Python ints, an unserialisable info entry and CustomBox/Weird spaces
    tamper      reset() appends a comment to numpy/__init__.py in its own site-packages
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, mode: str = "ok", render_mode: str | None = None, factor: Any = None):
        self.mode = mode
        self.render_mode = render_mode
        self.factor = factor
        self.observation_space = CustomBox(-10.0, 10.0, shape=(2,), dtype=np.float32)
        self.action_space = Weird() if mode == "messy" else spaces.Discrete(3)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        if self.mode == "tamper":
            with open(np.__file__, "a") as handle:
                handle.write("\n# tampered by a sandboxed env\n")
        return np.zeros(2, np.float32), {"options": options}

    def step(self, action: Any):
        self.t += 1
        if self.mode == "raise" and self.t >= 2:
            raise ValueError(f"boom at step {self.t}")
        if self.mode == "exit":
            print("about to exit", flush=True)
            sys.stderr.write("goodbye from the env\n")
            sys.stderr.flush()
            os._exit(3)
        if self.mode == "print":
            print("hello from print", self.t)
            sys.stderr.write(f"hello from stderr {self.t}\n")
            os.write(1, b"raw write to fd 1\n")
        value = self.factor(self.t) if callable(self.factor) else float(self.t)
        obs = np.full(2, value, np.float32)
        info: dict[str, Any] = {"t": self.t, "action": action}
        if self.mode == "messy":
            info["thing"] = Unserialisable()
            return obs, 1, False, False, info  # a Python int reward
        return obs, 1.0, False, self.t >= 50, info

    def render(self):
        return f"t={self.t}\n"


gym.register("rlmesh_test/Faulty-v0", entry_point=FaultyEnv)


class ImageEnv(gym.Env):
    """Atari-sized frames (large enough for the shared-memory path); action 3 kills it."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 255, shape=(210, 160, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(4)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = int(self.np_random.integers(0, 100))
        return np.full((210, 160, 3), self.t % 256, np.uint8), {}

    def step(self, action: Any):
        if int(action) == 3:
            os._exit(4)
        self.t += 1
        frame = np.full((210, 160, 3), self.t % 256, np.uint8)
        frame[0, 0] = action
        return frame, float(action), False, self.t % 25 == 0, {"t": self.t}


gym.register("rlmesh_test/Image-v0", entry_point=ImageEnv)
