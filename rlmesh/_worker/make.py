"""Making the environment in the sandbox: one maker per source kind.

The host resolves a source into a plain ``source`` request (``_sources``); ``MAKERS`` maps
its ``kind`` to the function that makes the env here. A new kind of source is a new maker
in this table, and nothing else in the worker changes. What comes back to the host is the
env's description: its spaces as plain data, metadata, render mode and spec.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .._wire.spaces import space_to_data

__all__ = ["MAKERS", "make_env"]

_SPEC_FIELDS = (
    "id",
    "reward_threshold",
    "nondeterministic",
    "max_episode_steps",
    "order_enforce",
    "disable_env_checker",
)


def _spec_data(env: Any) -> dict[str, Any] | None:
    spec = getattr(env, "spec", None)
    if spec is None:
        return None
    data = {name: getattr(spec, name, None) for name in _SPEC_FIELDS}
    entry = getattr(spec, "entry_point", None)
    data["entry_point"] = entry if isinstance(entry, str) or entry is None else repr(entry)
    return data


def _make_gym(source: dict[str, Any], kwargs: dict[str, Any], vector: Any) -> Any:
    """A Gymnasium registry id: ``gymnasium.make``, or ``make_vec`` for a vector env."""
    import gymnasium

    if vector is None:
        return gymnasium.make(source["id"], **kwargs)
    vector_kwargs: dict[str, Any] = {}
    if vector.get("autoreset_mode") is not None:
        from gymnasium.vector import AutoresetMode  # gymnasium >= 1.1

        vector_kwargs["autoreset_mode"] = AutoresetMode(vector["autoreset_mode"])
    return gymnasium.make_vec(
        source["id"],
        num_envs=vector["num_envs"],
        vectorization_mode=vector.get("vectorization_mode") or "sync",
        vector_kwargs=vector_kwargs,
        **kwargs,
    )


# source kind -> maker(source request, make kwargs, vector request or None) -> env
MAKERS: dict[str, Callable[[dict[str, Any], dict[str, Any], Any], Any]] = {"gym": _make_gym}


def describe(env: Any, vector: bool) -> dict[str, Any]:
    """What the host learns of a made env (single spaces for a vector env)."""
    if not vector:
        return {
            "observation_space": space_to_data(env.observation_space),
            "action_space": space_to_data(env.action_space),
            "metadata": dict(getattr(env, "metadata", {}) or {}),
            "render_mode": getattr(env, "render_mode", None),
            "spec": _spec_data(env),
        }
    metadata = dict(getattr(env, "metadata", {}) or {})
    mode = metadata.get("autoreset_mode")
    if mode is not None:  # an enum: travels as its value
        metadata["autoreset_mode"] = getattr(mode, "value", str(mode))
    return {
        "observation_space": space_to_data(env.single_observation_space),
        "action_space": space_to_data(env.single_action_space),
        "metadata": metadata,
        "render_mode": getattr(env, "render_mode", None),
        "spec": _spec_data(env),
        "num_envs": int(env.num_envs),
    }


def make_env(request: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Import ``imports``, make the env the ``MAKE`` request names; the env and its description."""
    for name in request.get("imports", ()):
        importlib.import_module(name)
    source = request["source"]
    kwargs = dict(request.get("kwargs") or {})
    if request.get("render_mode") is not None:
        kwargs["render_mode"] = request["render_mode"]
    maker = MAKERS.get(source["kind"])
    if maker is None:
        raise NotImplementedError(
            f"this sandbox's rlmesh cannot make sources of kind {source['kind']!r} "
            f"(it knows {', '.join(sorted(MAKERS))})"
        )
    vector = request.get("vector")
    env = maker(source, kwargs, vector)
    return env, describe(env, vector is not None)
