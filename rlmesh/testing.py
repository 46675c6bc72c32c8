"""Check your own environment in a sandbox the way rlmesh's tests check theirs.

>>> from rlmesh.testing import check_sandbox_env
>>> report = check_sandbox_env("CartPole-v1", seeds=(0, 1))  # doctest: +SKIP
>>> report.compared, report.steps  # doctest: +SKIP
(True, 104)

``check_sandbox_env`` starts a real sandbox and runs Gymnasium's ``check_env`` on it. When the
same id can also be made in your own process (it is registered here, or ``imports`` registers
it), it plays the same seeded episodes in both and requires equal spaces, equal
observations, rewards, flags and infos, with equal types, and no ``check_env`` warning that
the in-process env does not also raise. A difference raises ``AssertionError`` naming the
seed, the step and the value. Without an in-process twin (``compare=False``, or an id only
the sandbox can make) it still checks every observation against the observation space.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
from gymnasium.utils.env_checker import check_env, data_equivalence

from ._config import OPTION_NAMES
from ._env import SandboxEnv
from ._sources import GymSource, parse_source
from ._wire.spaces import OpaqueSpace

__all__ = ["SandboxCheck", "check_sandbox_env"]


@dataclass(frozen=True)
class SandboxCheck:
    """What ``check_sandbox_env`` ran.

    Attributes:
        source: The source that was checked.
        compared: Whether the sandbox was compared with the same env made in-process.
        episodes: Seeded episodes played (one per seed).
        steps: Steps taken in the sandbox over all episodes.
        warnings: ``check_env`` warnings the sandboxed env raised (with ``compared``, each
            one was also raised by the in-process env).
    """

    source: str
    compared: bool
    episodes: int
    steps: int
    warnings: tuple[str, ...]


# Options for the sandbox alone; anything else in **options is the env's own.
_SANDBOX_ONLY = tuple(
    name for name in OPTION_NAMES if name not in ("packages", "imports", "render_mode")
)


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # gymnasium's logger colours its warnings


def _warnings_of(func: Callable[[], Any]) -> set[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        func()
    return {_COLOUR.sub("", str(w.message)) for w in caught}


def _in_process_twin(
    source: str, imports: Sequence[str], render_mode: str | None, kwargs: dict[str, Any]
) -> Any:
    """The same env made here, or ``None`` if this process cannot make it."""
    parsed = parse_source(source)
    if not isinstance(parsed, GymSource):
        return None
    try:
        for name in imports:
            importlib.import_module(name)
        return gym.make(parsed.env_id, render_mode=render_mode, **kwargs)
    except Exception:  # not installed or not registered here: only the sandbox can make it
        return None


def _same_space(got: Any, want: Any) -> bool:
    """``got == want``, where an opaque space of the sandbox equals the real space of this
    process that it stands for (same class, same description)."""
    if isinstance(got, OpaqueSpace):
        return got.describes(want)
    if isinstance(got, gym.spaces.Dict) and isinstance(want, gym.spaces.Dict):
        return list(got.spaces) == list(want.spaces) and all(
            _same_space(got.spaces[key], want.spaces[key]) for key in got.spaces
        )
    if type(got) is type(want) and isinstance(got, (gym.spaces.Tuple, gym.spaces.OneOf)):
        return len(got.spaces) == len(want.spaces) and all(
            _same_space(a, b) for a, b in zip(got.spaces, want.spaces, strict=True)
        )
    return bool(got == want)


def _equal_space(what: str, got: Any, want: Any) -> None:
    if not _same_space(got, want):
        raise AssertionError(f"{what}: the sandbox has {got}, the in-process env {want}")


def _equal(what: str, got: Any, want: Any) -> None:
    if not data_equivalence(got, want, exact=True):
        raise AssertionError(
            f"{what}: the sandbox gave {got!r} ({type(got).__name__}), the in-process env "
            f"{want!r} ({type(want).__name__})"
        )


def check_sandbox_env(
    source: str,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    max_steps: int = 200,
    compare: bool | None = None,
    skip_render_check: bool = True,
    packages: Sequence[str] = (),
    imports: Sequence[str] = (),
    render_mode: str | None = None,
    **options: Any,
) -> SandboxCheck:
    """Check the env ``source`` in a sandbox; raise ``AssertionError`` on a difference.

    Args:
        source: As for ``SandboxEnv``.
        seeds: One episode is played per seed: ``reset(seed=seed)``, then actions sampled
            from the action space seeded with the same seed.
        max_steps: Steps at most per episode.
        compare: Compare with the env made in this process. ``None`` (the default)
            compares when this process can make it; ``True`` requires that it can.
        skip_render_check: Passed to ``check_env`` (its render check makes the env again
            in every render mode, which needs the render dependencies in the sandbox).
        packages: As for ``SandboxEnv``.
        imports: As for ``SandboxEnv``; also imported here for the in-process twin.
        render_mode: As for ``SandboxEnv``; the twin gets the same.
        **options: The other ``SandboxEnv`` options and the env's own keyword arguments
            (the keyword arguments go to the twin too).

    Returns:
        A ``SandboxCheck`` saying what was compared and played.
    """
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, not {max_steps!r}")
    sandbox_options = {name: options.pop(name) for name in _SANDBOX_ONLY if name in options}
    twin = None
    if compare is not False:
        twin = _in_process_twin(source, imports, render_mode, dict(options))
        if twin is None and compare:
            raise ValueError(
                f"compare=True, but {source!r} cannot be made in this process; install and "
                "register it here, or pass compare=False"
            )
    env_options = {"packages": packages, "imports": imports, "render_mode": render_mode}
    try:
        steps, found = _check(
            source, twin, seeds, max_steps, skip_render_check,
            {**env_options, **sandbox_options, **options},
        )  # fmt: skip
        if twin is not None:
            expected = _warnings_of(
                lambda: check_env(twin.unwrapped, skip_render_check=skip_render_check)
            )
            extra = sorted(found - expected)
            if extra:
                raise AssertionError(
                    f"check_env warns about the sandboxed {source!r} but not the in-process "
                    "one: " + "; ".join(extra)
                )
    finally:
        if twin is not None:
            twin.close()
    return SandboxCheck(str(source), twin is not None, len(seeds), steps, tuple(sorted(found)))


def _check(
    source: str,
    twin: Any,
    seeds: Sequence[int],
    max_steps: int,
    skip_render_check: bool,
    options: dict[str, Any],
) -> tuple[int, set[str]]:
    """Play the seeded episodes and run ``check_env`` in one sandbox; the steps and warnings."""
    with SandboxEnv(source, **options) as env:
        if twin is not None:
            _equal_space("observation_space", env.observation_space, twin.observation_space)
            _equal_space("action_space", env.action_space, twin.action_space)
        steps = sum(_play(env, twin, seed, max_steps) for seed in seeds)
        found = _warnings_of(lambda: check_env(env, skip_render_check=skip_render_check))
    return steps, found


def _in_space(where: str, env: SandboxEnv, obs: Any) -> None:
    if obs not in env.observation_space:
        raise AssertionError(f"{where}: observation {obs!r} is not in {env.observation_space}")


_STEP_PARTS = ("observation", "reward", "terminated", "truncated", "info")


def _play(env: SandboxEnv, twin: Any, seed: int, max_steps: int) -> int:
    """One seeded episode in the sandbox (and the twin); the steps taken."""
    where = f"seed {seed}, reset"
    obs, info = env.reset(seed=seed)
    _in_space(where, env, obs)
    if twin is not None:
        want_obs, want_info = twin.reset(seed=seed)
        _equal(f"{where}, observation", obs, want_obs)
        _equal(f"{where}, info", info, want_info)
    env.action_space.seed(seed)
    for step in range(1, max_steps + 1):
        where = f"seed {seed}, step {step}"
        action = env.action_space.sample()
        got = env.step(action)
        _in_space(where, env, got[0])
        if twin is not None:
            want = twin.step(action)
            for name, a, b in zip(_STEP_PARTS, got, want, strict=True):
                _equal(f"{where}, {name}", a, b)
        if got[2] or got[3]:
            return step
    return max_steps
