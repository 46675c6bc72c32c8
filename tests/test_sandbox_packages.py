"""What goes into a sandbox: an older gymnasium and numpy 1.x, rlmesh from a wheel or "local".

Real uv venvs and real child processes; the packages come from PyPI through the session's
shared uv cache.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

import rlmesh
from rlmesh import SandboxBuildError
from rlmesh._backends import venv
from rlmesh.numpy import SandboxEnv
from rlmesh.testing import _warnings_of as warnings_of

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).resolve().parent.parent
OLD = ["gymnasium==0.29.1", "numpy<2"]


def site_packages_probe(versions: dict[str, Any], code: str) -> str:
    """Run ``code`` with the sandbox's own interpreter, isolated from the host's paths."""
    probe = subprocess.run(
        [versions["executable"], "-I", "-c", code], capture_output=True, text=True, check=True
    )
    return probe.stdout.strip()


def test_gymnasium_0_29_on_numpy_1_runs_in_the_sandbox_of_a_newer_host() -> None:
    local = gym.make("CartPole-v1")
    with SandboxEnv("CartPole-v1", packages=OLD) as env:
        versions = env.sandbox_versions
        assert versions["gymnasium"] == "0.29.1"
        assert versions["numpy"].startswith("1.")
        assert np.__version__ != versions["numpy"]  # the host runs another numpy
        # the sandbox's own space: gymnasium 0.29 bounds CartPole's velocities by float32's
        # largest value, where 1.x says infinity
        space = env.observation_space
        assert space.shape == (4,) and space.dtype == np.float32
        assert space.high[1] == np.finfo(np.float32).max
        assert local.observation_space.high[1] != space.high[1]
        assert env.action_space == local.action_space
        # CartPole's dynamics did not change between these releases: a numpy 1.x float32
        # observation must arrive as exactly the array the host's numpy computes.
        local.action_space.seed(3)
        for episode in range(2):
            got, want = env.reset(seed=10 + episode), local.reset(seed=10 + episode)
            assert data_equivalence(got[0], want[0], exact=True)
            for _ in range(40):
                action = local.action_space.sample()
                got, want = env.step(action), local.step(action)
                assert data_equivalence(got[:4], want[:4], exact=True), (got, want)
                if want[2] or want[3]:
                    break
        sandbox_warnings = warnings_of(lambda: check_env(env, skip_render_check=True))
    assert sandbox_warnings <= warnings_of(
        lambda: check_env(gym.make("CartPole-v1").unwrapped, skip_render_check=True)
    )


def test_gymnasium_0_29_tuple_and_discrete_observations_keep_their_types() -> None:
    with SandboxEnv("Blackjack-v1", packages=OLD) as env:
        assert env.observation_space == gym.spaces.Tuple(
            (gym.spaces.Discrete(32), gym.spaces.Discrete(11), gym.spaces.Discrete(2))
        )
        obs, info = env.reset(seed=1)
        assert type(obs) is tuple and len(obs) == 3
        assert obs in env.observation_space
        # gymnasium 0.29 returns Python ints here (1.x returns numpy ints): kept as sent
        assert all(type(part) is int for part in obs), [type(part) for part in obs]
        obs, reward, terminated, truncated, info = env.step(0)
        assert type(terminated) is bool and type(reward) is float


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [venv.uv_binary(), "build", "--wheel", "--quiet", "-o", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("rlmesh-*.whl")
    return wheel


INSTALLED = "import importlib.metadata as m, rlmesh; print(m.version('rlmesh'), rlmesh.__file__)"


def test_rlmesh_package_installs_a_wheel_path_and_local_takes_the_newest_in_dist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = build_wheel(tmp_path / "dist")
    with SandboxEnv("CartPole-v1", rlmesh_package=str(wheel)) as env:
        env.reset(seed=0)
        assert env.step(1)[1] == 1.0
        versions = env.sandbox_versions
        assert versions["rlmesh"] == rlmesh.__version__
        # installed from the wheel (with its metadata), not copied from the host
        installed, where = site_packages_probe(versions, INSTALLED).split()
        assert installed == rlmesh.__version__ and "site-packages" in where
        # and without the host-side dependencies the wheel's metadata names
        host_only = site_packages_probe(
            versions,
            "import importlib.util as u;"
            "print([m for m in ('anyio', 'uv', 'huggingface_hub') if u.find_spec(m)])",
        )
        assert host_only == "[]"

    # "local" from a directory that is not a checkout: ./dist of the current directory
    monkeypatch.setattr(venv.payload, "PACKAGE_DIR", tmp_path / "site-packages" / "rlmesh")
    monkeypatch.chdir(tmp_path)
    older = tmp_path / "dist" / "rlmesh-0.0.1-py3-none-any.whl"
    older.write_bytes(b"not a wheel")
    os.utime(older, (1, 1))  # the real wheel is newer, so "local" must pick it
    assert venv.local_dist_dir() == tmp_path / "dist"
    assert venv.local_wheel() == wheel
    with SandboxEnv("CartPole-v1", rlmesh_package="local") as env:  # the same venv again
        assert env.reset(seed=0)[0].shape == (4,)


def test_rlmesh_package_local_without_a_wheel_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(venv.payload, "PACKAGE_DIR", tmp_path / "site-packages" / "rlmesh")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SandboxBuildError, match=r"no rlmesh-\*\.whl in .*dist.*uv build --wheel"):
        SandboxEnv("CartPole-v1", rlmesh_package="local")


def test_local_looks_in_the_checkout_that_holds_rlmesh_when_there_is_one() -> None:
    # The tests run against the checkout (nox installs it editable): its dist/ is the place.
    assert venv.payload.PACKAGE_DIR.parent == REPO
    assert venv.local_dist_dir() == REPO / "dist"
