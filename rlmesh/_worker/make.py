"""Making the environment in the sandbox: one maker per source kind.

The host resolves a source into a plain ``source`` request (``_sources``); ``MAKERS`` maps
its ``kind`` to the function that makes the env here. A new kind of source is a new maker
in this table, and nothing else in the worker changes. What comes back to the host is the
env's description: its spaces as plain data, metadata, render mode and spec.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
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
    """A Gymnasium registry id: ``gymnasium.make``, or ``make_vec`` for a vector env. An id
    only the old ``gym`` package registered runs behind Gymnasium's API (``old_gym``)."""
    import gymnasium

    old = _old_gym_maker(gymnasium, source["id"])
    if old is not None:
        if vector is None:
            return old(kwargs)
        mode = vector.get("autoreset_mode")
        extra: dict[str, Any] = {}
        if mode is not None:
            extra["autoreset_mode"] = gymnasium.vector.AutoresetMode(mode)
        makers = [lambda: old(kwargs)] * int(vector["num_envs"])
        return gymnasium.vector.SyncVectorEnv(makers, **extra)
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


def _load_entry(root: str, entry: str) -> Any:
    """Import the repository's entry file as a module, with the snapshot root on sys.path
    (so its sibling modules import)."""
    import importlib.util

    if root not in sys.path:
        sys.path.insert(0, root)
    path = os.path.join(root, entry)
    spec = importlib.util.spec_from_file_location("rlmesh_envhub_entry", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the entry file {entry!r} of the repository")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _call_factory(make: Any, n_envs: int, use_async: bool, kwargs: dict[str, Any]) -> Any:
    """``make_env(n_envs=..., use_async_envs=...)``, each by keyword where the signature names
    it (a ``**kwargs`` catch-all gets neither: it often forwards to ``gymnasium.make``)."""
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(make).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing extra
        params = {}
    call = dict(kwargs)
    for name, value in (("n_envs", n_envs), ("use_async_envs", use_async)):
        if name in params and params[name].kind is not inspect.Parameter.VAR_KEYWORD:
            call[name] = value
    return make(**call)


def _pick(options: dict[Any, Any], wanted: str | None, what: str, source: str) -> Any:
    """One entry of a suite or task mapping: ``wanted`` (``"0"`` also selects ``0``), or the
    only one."""
    names = ", ".join(repr(k) for k in options)
    if wanted is None:
        if len(options) == 1:
            return next(iter(options.values()))
        raise ValueError(
            f"make_env() of {source} returned several {what}s ({names}); select one: "
            f"'{source}:<suite>[/<task>]'"
        )
    for key, value in options.items():
        if key == wanted or str(key) == wanted:
            return value
    raise ValueError(f"make_env() of {source} has no {what} {wanted!r}; it has {names}")


def _make_hf(source: dict[str, Any], kwargs: dict[str, Any], vector: Any) -> Any:
    """An EnvHub repository: the entry file's ``make_env``, then the selected suite and task."""
    import gymnasium

    name = f"hf://{source['repo']}@{source['revision']}"
    module = _load_entry(source["root"], source["entry"])
    make = getattr(module, "make_env", None)
    if not callable(make):
        defined = ", ".join(n for n in dir(module) if not n.startswith("_"))[:300]
        raise TypeError(
            f"the entry file {source['entry']!r} of {name} defines no make_env() function "
            f"(it defines: {defined or 'nothing'}); an EnvHub repository's entry file must "
            "define make_env(n_envs=1, use_async_envs=False)"
        )
    n_envs = 1 if vector is None else int(vector["num_envs"])
    use_async = vector is not None and vector.get("vectorization_mode") == "async"
    result = _call_factory(make, n_envs, use_async, kwargs)
    if isinstance(result, dict):
        result = _pick(result, source.get("suite"), "suite", name)
        if isinstance(result, dict):
            result = _pick(result, source.get("task"), "task", name)
    elif source.get("suite") is not None:
        raise ValueError(
            f"make_env() of {name} returned one environment, not suites: drop the selector "
            f"':{source['suite']}'"
        )
    if isinstance(result, gymnasium.vector.VectorEnv):
        if vector is not None:
            return result
        envs = getattr(result, "envs", None)  # a SyncVectorEnv of one: its env (LeRobot's way)
        if result.num_envs == 1 and isinstance(envs, (list, tuple)) and len(envs) == 1:
            return envs[0]
        raise TypeError(
            f"make_env() of {name} returned a vector env of {result.num_envs} sub-envs "
            f"({type(result).__name__}); use SandboxVectorEnv for it"
        )
    if isinstance(result, gymnasium.Env):
        if vector is None:
            return result
        raise TypeError(
            f"make_env() of {name} returned a single env ({type(result).__name__}), not a "
            f"vector env of {vector['num_envs']}; use SandboxEnv for it"
        )
    raise TypeError(
        f"make_env() of {name} returned {type(result).__name__}; it must return a "
        "gymnasium.Env, a gymnasium.vector.VectorEnv, {suite: env} or {suite: {task: env}}"
    )


def _old_gym_maker(gymnasium: Any, env_id: str) -> Any:
    """A maker for an id that only the old ``gym`` package registered, else ``None``."""
    try:
        gymnasium.spec(env_id)
        return None
    except gymnasium.error.Error:  # unknown to Gymnasium: NameNotFound, NamespaceNotFound, ...
        from .old_gym import old_gym_maker

        return old_gym_maker(env_id)


# source kind -> maker(source request, make kwargs, vector request or None) -> env
MAKERS: dict[str, Callable[[dict[str, Any], dict[str, Any], Any], Any]] = {
    "gym": _make_gym,
    "hf": _make_hf,
}


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
    for wrapper in request.get("wrappers") or ():
        env = wrapper(env)
    return env, describe(env, vector is not None)
