"""Stable-Baselines3 on sandboxes: PPO learns the same on ``SandboxVecEnv`` as on SB3's own
``DummyVecEnv`` of in-process envs, to the last bit of every parameter.

Runs where the ``tests`` session could install torch (a CPU wheel on this machine's disk) and
stable-baselines3; elsewhere it is skipped and says why.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (nox -s tests installs a "
                            "local CPU wheel where the machine has one)")  # fmt: skip
sb3 = pytest.importorskip("stable_baselines3")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from rlmesh.sb3 import SandboxVecEnv  # noqa: E402

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

NUM_ENVS = 4


def train(env: object, steps: int) -> dict[str, object]:
    model = PPO("MlpPolicy", env, seed=0, n_steps=128, batch_size=64, n_epochs=2, device="cpu")
    model.learn(total_timesteps=steps)
    return {k: v.clone() for k, v in model.policy.state_dict().items()}


def test_ppo_learns_identically_on_sandboxes_and_in_process() -> None:
    torch.set_num_threads(1)
    here = DummyVecEnv([lambda: gym.make("CartPole-v1")] * NUM_ENVS)
    want = train(here, 2048)
    with_sandboxes = SandboxVecEnv("CartPole-v1", num_envs=NUM_ENVS, num_workers=2)
    try:
        got = train(with_sandboxes, 2048)
    finally:
        with_sandboxes.close()
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name


def test_the_vec_env_api_matches_dummy_vec_env() -> None:
    here = DummyVecEnv([lambda: gym.make("CartPole-v1", max_episode_steps=12)] * 3)
    there = SandboxVecEnv("CartPole-v1", num_envs=3, max_episode_steps=12)
    try:
        for env in (here, there):
            env.seed(5)
        assert np.array_equal(here.reset(), there.reset())
        rng = np.random.default_rng(0)
        for _ in range(30):
            actions = rng.integers(0, 2, size=3)
            a, b = here.step(actions), there.step(actions)
            for x, y in zip(a[:3], b[:3], strict=True):
                assert np.array_equal(x, y)
            for x, y in zip(a[3], b[3], strict=True):
                assert x.keys() == y.keys()
                if "terminal_observation" in x:
                    assert np.array_equal(x["terminal_observation"], y["terminal_observation"])
                    assert x["TimeLimit.truncated"] == y["TimeLimit.truncated"]
        assert there.get_attr("gravity") == [9.8] * 3
        there.set_attr("gravity", 20.0, indices=[1])
        assert there.get_attr("gravity") == [9.8, 20.0, 9.8]
        assert there.env_method("get_wrapper_attr", "gravity", indices=1) == [20.0]
        assert there.env_is_wrapped(gym.wrappers.TimeLimit) == [True] * 3
    finally:
        there.close()


def test_auto_restart_keeps_a_training_loop_alive_when_a_worker_dies_mid_step() -> None:
    from sandbox_options import TEST_ENVS

    env = SandboxVecEnv("rlmesh_test/Faulty-v0", num_envs=4, num_workers=2, auto_restart=True,
                        **TEST_ENVS)  # fmt: skip
    try:
        env.reset()
        env.step(np.zeros(4, dtype=np.int64))
        env.set_attr("mode", "exit", indices=[3])  # worker 1 (sub-envs 2 and 3) will die
        obs, rewards, dones, infos = env.step(np.zeros(4, dtype=np.int64))
        assert dones.tolist() == [False, False, True, True]
        assert [i.get("rlmesh_restarted", False) for i in infos] == [False, False, True, True]
        assert obs.shape == (4, 2) and env.venv.restarts == 1
        for _ in range(3):  # the loop goes on, on all four sub-envs
            obs, rewards, dones, infos = env.step(np.ones(4, dtype=np.int64))
        assert env.get_attr("mode") == ["ok"] * 4
    finally:
        env.close()


def test_without_auto_restart_a_dead_worker_stops_the_loop() -> None:
    from sandbox_options import TEST_ENVS

    from rlmesh import SandboxCrashedError

    env = SandboxVecEnv("rlmesh_test/Faulty-v0", num_envs=2, **TEST_ENVS)
    try:
        env.reset()
        env.set_attr("mode", "exit")
        with pytest.raises(SandboxCrashedError):
            env.step(np.zeros(2, dtype=np.int64))
    finally:
        env.close()
