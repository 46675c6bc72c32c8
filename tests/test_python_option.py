"""``python=``: a sandbox on another interpreter than the host's, for real.

The machines this runs on have pyenv's Pythons 3.8-3.13 (uv cannot download interpreters
here), which is also how ``python="3.12"`` finds one: uv's discovery stumbles on pyenv's shims.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import data_equivalence

from rlmesh import SandboxBuildError
from rlmesh._backends.python import find_interpreter
from rlmesh.numpy import SandboxEnv
from rlmesh.testing import check_sandbox_env

pytestmark = pytest.mark.sandbox

PYENV = Path.home() / ".pyenv" / "versions"


def pyenv_python(minor: str) -> str:
    found = sorted(PYENV.glob(f"{minor}.*/bin/python{minor}"))
    if not found:
        pytest.skip(f"no pyenv Python {minor} on this machine")
    return str(found[-1])


OTHER = "3.12" if sys.version_info[:2] != (3, 12) else "3.13"


def test_a_version_finds_an_installed_interpreter_and_matches_in_process() -> None:
    pyenv_python(OTHER)
    report = check_sandbox_env("CartPole-v1", python=OTHER, seeds=(0, 1))
    assert report.compared and report.steps > 20
    with SandboxEnv("CartPole-v1", python=OTHER) as env:
        assert env.sandbox_versions["python"].startswith(OTHER + ".")


def test_python_3_8_with_the_gymnasium_it_can_install() -> None:
    """The oldest the worker runs on; its seeded trajectory equals the host's (0.29's spaces
    have float32-max bounds where 1.x has inf, so the spaces themselves differ)."""
    path = pyenv_python("3.8")
    report = check_sandbox_env(
        "CartPole-v1", python=path, packages=["gymnasium==0.29.1"], seeds=(0,), compare=False
    )
    assert report.steps > 5
    here = gym.make("CartPole-v1")
    with SandboxEnv("CartPole-v1", python=path, packages=["gymnasium==0.29.1"]) as env:
        assert env.sandbox_versions["python"].startswith("3.8.")
        assert env.sandbox.packages["gymnasium"] == "0.29.1"
        assert data_equivalence(env.reset(seed=3), here.reset(seed=3), exact=True)
        for action in [0, 1, 1, 0, 1, 1, 1, 0]:
            assert data_equivalence(env.step(action), here.step(action), exact=True)


def test_the_interpreter_is_part_of_the_cache_key() -> None:
    pyenv_python(OTHER)
    with SandboxEnv("CartPole-v1") as here, SandboxEnv("CartPole-v1", python=OTHER) as there:
        assert here.sandbox.venv_key != there.sandbox.venv_key


@pytest.mark.parametrize(
    ("python", "error", "match"),
    [
        ("3.99", SandboxBuildError, r"no Python 3.99 was found on this machine.*pass the"),
        ("/no/such/python", ValueError, r"neither a version such as '3.12' nor an executable"),
        ("three", ValueError, r"neither a version"),
        (3.12, TypeError, r"python must be a version such as '3.12' or an interpreter path"),
    ],
)
def test_a_wrong_python_says_what_to_pass(python: object, error: type, match: str) -> None:
    find_interpreter.cache_clear()
    with pytest.raises(error, match=match):
        SandboxEnv("CartPole-v1", python=python)


def test_a_python_too_old_for_the_worker_is_refused() -> None:
    path = pyenv_python("3.7")
    too_old = r"is Python 3.7; the sandbox worker needs Python 3.8"
    with pytest.raises(SandboxBuildError, match=too_old):
        SandboxEnv("CartPole-v1", python=path)
