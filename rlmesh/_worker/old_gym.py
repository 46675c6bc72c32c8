"""Envs registered with the old ``gym`` package (0.23-0.26), behind Gymnasium's API.

When ``gymnasium.make`` does not know an id and ``gym``'s registry does, the worker makes it
with ``gym.make`` and wraps it in ``OldGymEnv``: spaces become Gymnasium's, ``reset`` returns
``(obs, info)`` and takes ``seed`` (through ``env.seed`` where the env predates it), ``step``
returns the 5-tuple (a 4-tuple's ``done`` is split with ``info["TimeLimit.truncated"]``), so
the host sees the Gymnasium API whatever the env was written for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import gymnasium
from gymnasium import spaces

__all__ = ["OldGymEnv", "old_gym_maker"]


def convert_space(space: Any) -> Any:
    """A ``gym`` space as the Gymnasium space of the same kind (others stay as they are)."""
    kind = type(space).__name__
    if kind == "Box":
        return spaces.Box(space.low, space.high, space.shape, space.dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(space.n), start=int(getattr(space, "start", 0)))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(space.nvec)
    if kind == "MultiBinary":
        return spaces.MultiBinary(space.n)
    if kind == "Tuple":
        return spaces.Tuple([convert_space(s) for s in space.spaces])
    if kind == "Dict":
        return spaces.Dict({k: convert_space(s) for k, s in space.spaces.items()})
    return space


class OldGymEnv(gymnasium.Env[Any, Any]):
    """A ``gym`` env behind Gymnasium's API."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.observation_space = convert_space(env.observation_space)
        self.action_space = convert_space(env.action_space)
        self.metadata = dict(getattr(env, "metadata", {}) or {})
        self.render_mode = getattr(env, "render_mode", None)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        try:
            result = self.env.reset(seed=seed, options=options)
        except TypeError:  # gym < 0.22: reset() takes no seed; seed() does
            if seed is not None and hasattr(self.env, "seed"):
                self.env.seed(seed)
            result = self.env.reset()
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict):
            return result[0], result[1]
        return result, {}

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        result = self.env.step(action)
        if len(result) == 5:
            obs, reward, terminated, truncated, info = result
            return obs, reward, bool(terminated), bool(truncated), dict(info)
        obs, reward, done, info = result
        info = dict(info)
        truncated = bool(info.pop("TimeLimit.truncated", False))
        return obs, reward, bool(done) and not truncated, truncated, info

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()


def _registered(gym: Any, env_id: str) -> bool:
    registry = gym.envs.registry
    ids = getattr(registry, "env_specs", registry)  # gym < 0.24 keeps them in .env_specs
    return env_id in ids


def old_gym_maker(env_id: str) -> Callable[[dict[str, Any]], OldGymEnv] | None:
    """``kwargs -> OldGymEnv(gym.make(env_id, **kwargs))``, or ``None`` if ``gym`` is not
    installed or does not know the id."""
    try:
        import gym
    except ImportError:
        return None
    module, _, name = env_id.rpartition(":")
    if module:  # "module:Id": the module registers the id, with gym as with Gymnasium
        importlib.import_module(module)
    if not _registered(gym, name):
        return None
    return lambda kwargs: OldGymEnv(gym.make(name, **kwargs))
