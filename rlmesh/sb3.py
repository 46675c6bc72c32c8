"""Stable-Baselines3 over sandboxes: ``SandboxVecEnv``, an SB3 ``VecEnv`` of sandboxed envs.

>>> from stable_baselines3 import PPO  # doctest: +SKIP
>>> from rlmesh.sb3 import SandboxVecEnv  # doctest: +SKIP
>>> env = SandboxVecEnv("CartPole-v1", num_envs=8, num_workers=2)  # doctest: +SKIP
>>> PPO("MlpPolicy", env, seed=0).learn(10_000)  # doctest: +SKIP

One ``SandboxVectorEnv`` (Gymnasium's ``SAME_STEP`` autoreset) behind SB3's API: ``dones``
are ``terminated | truncated``, each sub-env's info is a dict with ``terminal_observation``
and ``TimeLimit.truncated`` as SB3 sets them, reset infos land in ``reset_infos``, and
``seed()``/``set_options()`` apply at the next ``reset()``, as with SB3's own ``DummyVecEnv``
(seeded the same, the two give the same data). A batch is one round trip per worker.

With ``auto_restart=True``, a step that fails because a worker died or hung does not end the
training run: the dead workers are replaced at once, their sub-envs report ``done`` with
``info["rlmesh_restarted"] = True`` (and no ``terminal_observation``), and the others step on
next time. Requires the ``sb3`` extra (``pip install rlmesh[sb3]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from ._errors import RemoteEnvError, SandboxError
from ._vector_env import SandboxVectorEnv

__all__ = ["SandboxVecEnv"]

_FINAL = ("final_obs", "final_info", "_final_obs", "_final_info")


def split_infos(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium's vector infos (arrays and ``_key`` masks) as one dict per sub-env."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        if key.startswith("_") or key in _FINAL:
            continue
        mask = infos.get(f"_{key}", np.ones(num_envs, dtype=bool))
        parts = split_infos(value, num_envs) if isinstance(value, dict) else None
        for index in range(num_envs):
            if mask[index]:
                out[index][key] = parts[index] if parts is not None else value[index]
    return out


class SandboxVecEnv(VecEnv):  # type: ignore[misc]
    """``num_envs`` sandboxed copies of ``source`` as a Stable-Baselines3 ``VecEnv``.

    Args:
        source: As for ``SandboxVectorEnv``.
        num_envs: Sub-envs in all.
        **options: Any ``SandboxVectorEnv`` option (``num_workers``, ``packages``, ...);
            ``autoreset_mode`` is SB3's (``SAME_STEP``) and cannot be changed.
    """

    def __init__(self, source: str, num_envs: int = 1, **options: Any) -> None:
        if options.get("autoreset_mode") not in (None, AutoresetMode.SAME_STEP, "SameStep"):
            raise ValueError("SandboxVecEnv uses SB3's autoreset (SAME_STEP); leave it unset")
        options["autoreset_mode"] = AutoresetMode.SAME_STEP
        self.venv = SandboxVectorEnv(source, num_envs=num_envs, **options)
        super().__init__(num_envs, self.venv.single_observation_space,
                         self.venv.single_action_space)  # fmt: skip
        self.render_mode = self.venv.render_mode
        self._actions: Any = None
        self._last_obs: Any = None

    def reset(self) -> Any:
        options = [o or None for o in self._options]
        seeds = list(self._seeds)
        if any(o is not None for o in options):
            raise NotImplementedError("per-env reset options are not supported by SandboxVecEnv")
        obs, infos = self.venv.reset(seed=seeds if any(s is not None for s in seeds) else None)
        self.reset_infos = split_infos(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        self._last_obs = obs
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> Any:
        try:
            obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        except RemoteEnvError:
            raise
        except SandboxError:
            if not self.venv._core.life.auto_restart:
                raise
            return self._restarted()
        dones = np.logical_or(terminated, truncated)
        step_infos = split_infos(infos, self.num_envs)
        final_infos = split_infos(infos.get("final_info", {}), self.num_envs)
        final_obs: Any = infos.get("final_obs")
        for done in np.flatnonzero(dones):
            reset_info = step_infos[done]
            step_infos[done] = final_infos[done]
            step_infos[done]["terminal_observation"] = final_obs[done]
            self.reset_infos[done] = reset_info
        cut = np.logical_and(truncated, np.logical_not(terminated))
        for index in range(self.num_envs):
            step_infos[index]["TimeLimit.truncated"] = bool(cut[index])
        self._last_obs = obs
        return obs, np.asarray(rewards, dtype=np.float32), dones, step_infos

    def _restarted(self) -> Any:
        """After a worker died mid-step: replace it now; its sub-envs start new episodes."""
        obs, infos = self.venv.reset(options={"reset_mask": self._dead_mask()})
        restarted = infos.get("rlmesh_restarted", np.zeros(self.num_envs, dtype=bool))
        step_infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for index in np.flatnonzero(restarted):
            step_infos[index]["rlmesh_restarted"] = True
            step_infos[index]["TimeLimit.truncated"] = False
        self._last_obs = obs
        return obs, np.zeros(self.num_envs, dtype=np.float32), np.asarray(restarted), step_infos

    def _dead_mask(self) -> np.ndarray:
        core = self.venv._core
        mask = np.zeros(self.num_envs, dtype=bool)
        for worker in core.dead:
            start, stop = core.ranges[worker]
            mask[start:stop] = True
        return mask

    def close(self) -> None:
        self.venv.close()

    def _indices(self, indices: Any) -> list[int]:
        return list(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        values = self.venv.get_attr(attr_name)
        return [values[i] for i in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        chosen = set(self._indices(indices))
        current = list(self.venv.get_attr(attr_name))
        self.venv.set_attr(attr_name, [value if i in chosen else current[i]
                                       for i in range(self.num_envs)])  # fmt: skip

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        values = self.venv.call(method_name, *method_args, **method_kwargs)
        return [values[i] for i in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        """Whether each sub-env is wrapped in ``wrapper_class`` (its name, checked in the
        sandbox: the class itself may not exist there)."""
        name = wrapper_class.__name__
        chains = self.venv.call("__str__")  # gymnasium's str: <Outer<Inner<Env>>>
        return [f"<{name}" in str(chains[i]) for i in self._indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render()
        return list(frames) if frames is not None else [None] * self.num_envs

    def _get_indices(self, indices: Any) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices  # type: ignore[no-any-return]
