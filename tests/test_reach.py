"""Real-world reach: the env's own attributes and methods, wrappers inside the sandbox,
pickling, and the hints that tell a user what to add or change."""

from __future__ import annotations

import copy
import pickle

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.wrappers import TimeAwareObservation
from sandbox_options import TEST_ENVS

from rlmesh import SandboxBuildError, SandboxStartupError, SandboxTimeoutError
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv, SandboxVectorEnv, State

pytestmark = pytest.mark.sandbox


def test_call_get_attr_and_set_attr_reach_the_env_through_its_wrappers() -> None:
    with SandboxEnv("CartPole-v1") as env:
        assert env.get_attr("gravity") == 9.8  # CartPoleEnv's, under TimeLimit and checkers
        env.set_attr("gravity", 20.0)
        assert env.get_attr("gravity") == 20.0
        assert env.call("gravity") == 20.0  # not a method: its value
        env.reset(seed=3)
        assert env.call("get_wrapper_attr", "np_random_seed") == 3  # a method, with an argument
        with pytest.raises(Exception, match="no_such_thing"):
            env.get_attr("no_such_thing")
        env.reset()  # the env's own error left the sandbox usable


@pytest.mark.anyio
async def test_the_async_face_has_them_too() -> None:
    async with AsyncSandboxEnv("CartPole-v1") as env:
        await env.set_attr("length", 1.0)
        assert await env.get_attr("length") == 1.0
        assert await env.call("get_wrapper_attr", "length") == 1.0


def test_wrappers_run_in_the_sandbox_and_match_in_process() -> None:
    here = TimeAwareObservation(gym.make("CartPole-v1", max_episode_steps=40))
    with SandboxEnv("CartPole-v1", wrappers=[TimeAwareObservation], max_episode_steps=40) as env:
        assert env.observation_space == here.observation_space  # the wrapped space crossed
        assert data_equivalence(env.reset(seed=1), here.reset(seed=1), exact=True)
        for action in [1, 0, 0, 1, 1]:
            assert data_equivalence(env.step(action), here.step(action), exact=True)


def test_wrappers_must_be_callables() -> None:
    with pytest.raises(TypeError, match=r"wrappers must be a list of callables"):
        SandboxEnv("CartPole-v1", wrappers=TimeAwareObservation)
    with pytest.raises(TypeError, match=r"every entry of wrappers must be callable"):
        SandboxEnv("CartPole-v1", wrappers=["TimeAwareObservation"])


def test_pickle_cloudpickle_and_deepcopy_rebuild_an_equivalent_sandbox() -> None:
    with SandboxEnv("CartPole-v1", wrappers=[TimeAwareObservation], max_episode_steps=9) as env:
        data = pickle.dumps(env)
        assert b"rlmesh.numpy" in data and b"rlmesh._" not in data  # public names only
        for copied in (pickle.loads(data), cloudpickle.loads(cloudpickle.dumps(env)),
                       copy.deepcopy(env)):  # fmt: skip
            with copied:
                assert copied.pid != env.pid and copied.state is State.READY
                assert copied.observation_space == env.observation_space
                assert copied.spec.max_episode_steps == 9
                assert data_equivalence(copied.reset(seed=5), env.reset(seed=5), exact=True)


def test_a_vector_env_pickles_too() -> None:
    with (
        SandboxVectorEnv("CartPole-v1", num_envs=3, num_workers=1) as env,
        pickle.loads(pickle.dumps(env)) as again,
    ):
        assert again.num_envs == 3
        assert np.array_equal(again.reset(seed=0)[0], env.reset(seed=0)[0])


@pytest.mark.anyio
async def test_an_async_env_unpickles_unstarted() -> None:
    async with AsyncSandboxEnv("CartPole-v1") as env:
        again = pickle.loads(pickle.dumps(env))
        assert again.state is State.CREATED  # start it as any other: await again.start()
        async with again:
            assert again.observation_space == env.observation_space


# -- hints -----------------------------------------------------------------------------------


def test_a_missing_module_at_startup_says_add_it_to_packages() -> None:
    missing = r"(?s)No module named 'no_such_module'.*add what is missing there"
    with pytest.raises(SandboxStartupError, match=missing):
        SandboxEnv("CartPole-v1", imports=["no_such_module"])


def test_an_unknown_namespace_says_add_imports() -> None:
    unregistered = r"(?s)Namespace nosuchns not found.*add the module that registers it"
    with pytest.raises(SandboxStartupError, match=unregistered):
        SandboxEnv("nosuchns/Thing-v0")


def test_a_failed_build_quotes_its_cause() -> None:
    with pytest.raises(SandboxBuildError) as caught:
        SandboxEnv("CartPole-v1", packages=["rlmesh-no-such-package-xyz==1.0"])
    first = str(caught.value).splitlines()[0]
    assert "rlmesh-no-such-package-xyz was not found in the package registry" in first


def test_a_failed_package_build_names_the_tool_and_where_to_install_it() -> None:
    from rlmesh._backends.venv import _failed

    tail = (  # uv's output when box2d-py's build cannot find swig
        "error: Failed to build `box2d-py==2.3.5`\n"
        "  Caused by: The build backend returned an error\n"
        "  Caused by: Call to `setuptools.build_meta:__legacy__.build_wheel` failed\n"
        "[stderr]\nerror: command 'swig' failed: No such file or directory\n"
    )
    first = str(_failed("X", "installing box2d-py", 1, tail, "check it")).splitlines()[0]
    assert ": command 'swig' failed: No such file or directory; check it" in first
    assert "such as swig, must be installed there" in first


def test_a_startup_timeout_during_a_build_suggests_what_to_do(tmp_path: object) -> None:
    with pytest.raises(SandboxTimeoutError, match=r"raise startup_timeout.*rlmesh sandbox prepare"):
        SandboxEnv("CartPole-v1", packages=["six==1.15.0"], startup_timeout=0.2)


def test_an_opengl_failure_suggests_mujoco_gl() -> None:
    with pytest.raises(SandboxStartupError, match=r"MUJOCO_GL"):
        SandboxEnv("rlmesh_test_envs.gl:rlmesh_test/NeedsGL-v0", **TEST_ENVS)


# -- the old gym API -------------------------------------------------------------------------

OLD_GYM = {"packages": [*TEST_ENVS["packages"], "gym==0.23.1", "numpy<2"]}
OLD_ID = "rlmesh_test_envs.oldgym:rlmesh_test/OldApi-v0"


def test_an_old_gym_env_runs_behind_the_gymnasium_api() -> None:
    with SandboxEnv(OLD_ID, **OLD_GYM) as env:
        assert env.sandbox.packages["gym"] == "0.23.1"
        assert env.observation_space == gym.spaces.Box(-100.0, 100.0, (2,), np.float32)
        assert env.action_space == gym.spaces.Discrete(2)
        obs, info = env.reset(seed=7)
        assert info == {} and obs[0] == 0.0
        assert data_equivalence(env.reset(seed=7)[0], obs, exact=True)  # seed() was used
        results = [env.step(1) for _ in range(5)]
        assert all(len(r) == 5 for r in results)
        assert [r[2] for r in results] == [False] * 5  # not done by the env itself...
        assert [r[3] for r in results] == [False] * 4 + [True]  # ...but by gym's TimeLimit
        assert results[0][4] == {"t": 1}


def test_an_old_gym_env_goal_reached_is_terminated() -> None:
    with SandboxEnv(OLD_ID, goal=3, **OLD_GYM) as env:
        env.reset(seed=0)
        assert [env.step(0)[2] for _ in range(3)] == [False, False, True]


def test_an_old_gym_env_as_a_vector_env() -> None:
    with SandboxVectorEnv(OLD_ID, num_envs=2, **OLD_GYM) as env:
        obs, _ = env.reset(seed=[1, 2])
        assert obs.shape == (2, 2) and env.step(np.array([1, 0]))[0][:, 0].tolist() == [1, 1]
