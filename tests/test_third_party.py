"""Third-party environments, for real: every env Gymnasium registers (classic control, toy
text, Box2D, MuJoCo), MiniGrid and the Arcade Learning Environment.

Each is installed from PyPI into the sandbox (the versions the host has, so the in-process twin
is the same code) and played against an in-process twin: equal spaces, values and types, seeded
episodes equal step for step. MiniGrid brings its own ``Space`` subclass (``MissionSpace``),
which must degrade to an opaque space that still checks and samples through the sandbox.
MuJoCo's rendering needs an OpenGL stack the sandbox's system provides: a container image
that has EGL and Mesa renders, one that lacks them fails with the hint to fix it.
"""

from __future__ import annotations

import functools
import warnings
from importlib.metadata import version
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from test_containers import require_podman_image

from rlmesh import RemoteEnvError
from rlmesh.numpy import OpaqueSpace, SandboxEnv, SandboxVectorEnv
from rlmesh.testing import check_sandbox_env

pytestmark = pytest.mark.sandbox

mujoco = pytest.importorskip("mujoco", reason="the test session installs .[thirdparty]")
minigrid = pytest.importorskip("minigrid", reason="the test session installs .[thirdparty]")
ale_py = pytest.importorskip("ale_py", reason="the test session installs .[thirdparty]")

MUJOCO = [f"gymnasium[mujoco]=={gym.__version__}", f"mujoco=={version('mujoco')}"]
MINIGRID = {"packages": [f"minigrid=={version('minigrid')}"], "imports": ["minigrid"]}
ALE = {"packages": [f"ale-py=={version('ale-py')}"], "imports": ["ale_py"]}
GL_IMAGE = "localhost/rlmesh-test-gl"
PLAIN_IMAGE = "localhost/rlmesh-test-python"

gym.register_envs(ale_py)

# Box2D's SWIG module warns (DeprecationWarning) while its C extension initialises, and with
# warnings as errors (this suite's setting) that warning crashes the interpreter in the middle
# of the import: load it once here, for the in-process twins, with that warning let through.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    pytest.importorskip("Box2D", reason="the test session installs .[thirdparty]")


FAMILIES = {  # Gymnasium's own envs: module -> what the sandbox needs for them
    "gymnasium.envs.classic_control": [],
    "gymnasium.envs.toy_text": [],
    "gymnasium.envs.box2d": [f"gymnasium[box2d]=={gym.__version__}"],
    "gymnasium.envs.mujoco": MUJOCO,
}


def _gymnasium_envs() -> list[tuple[str, list[str]]]:
    """The newest version of every env Gymnasium registers from the families above."""
    newest: dict[str, tuple[int, str]] = {}
    for spec in gym.registry.values():
        module = spec.entry_point if isinstance(spec.entry_point, str) else ""
        family = next((f for f in FAMILIES if module.startswith(f + ".")), None)
        if family and spec.namespace is None and spec.version is not None:
            newest[spec.name] = max(newest.get(spec.name, (-1, "")), (spec.version, family))
    return [(f"{name}-v{v}", FAMILIES[family]) for name, (v, family) in sorted(newest.items())]


GYMNASIUM_ENVS = _gymnasium_envs()


@pytest.fixture(autouse=True)
def _scratch_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MuJoCo writes MUJOCO_LOG.TXT into the working directory (here and in the sandbox,
    which starts in ours): keep it out of the checkout."""
    monkeypatch.chdir(tmp_path)


def test_the_gymnasium_registry_brings_every_family() -> None:
    assert len(GYMNASIUM_ENVS) >= 25, GYMNASIUM_ENVS  # 27 with gymnasium 1.4
    assert {"CartPole-v1", "FrozenLake-v1", "LunarLander-v3", "Humanoid-v5"} <= {
        env_id for env_id, _ in GYMNASIUM_ENVS
    }


@pytest.mark.parametrize(("env_id", "packages"), GYMNASIUM_ENVS, ids=[i for i, _ in GYMNASIUM_ENVS])
def test_every_env_gymnasium_registers_matches_in_process(env_id: str, packages: list[str]) -> None:
    report = check_sandbox_env(env_id, seeds=(0, 1), max_steps=30, packages=packages)
    assert report.compared and report.episodes == 2 and report.steps >= 2


def test_mujoco_as_a_vector_env_matches_gymnasiums_sync_vector_env() -> None:
    here = gym.make_vec("Hopper-v5", num_envs=3, vectorization_mode="sync")
    with SandboxVectorEnv("Hopper-v5", num_envs=3, num_workers=2, packages=MUJOCO) as env:
        assert env.observation_space == here.observation_space
        obs, _ = env.reset(seed=4)
        want, _ = here.reset(seed=4)
        np.testing.assert_array_equal(obs, want)
        rng = np.random.default_rng(0)
        for _ in range(30):
            action = rng.uniform(-1, 1, size=(3, 3)).astype(np.float32)
            got, want = env.step(action), here.step(action)
            for a, b in zip(got[:4], want[:4], strict=True):
                np.testing.assert_array_equal(a, b)
    here.close()


def test_minigrid_matches_in_process_and_its_mission_space_stays_usable() -> None:
    report = check_sandbox_env("MiniGrid-Empty-5x5-v0", seeds=(0, 3), max_steps=40, **MINIGRID)
    assert report.compared and report.steps == 80
    with SandboxEnv("MiniGrid-Empty-5x5-v0", **MINIGRID) as env:
        mission = env.observation_space["mission"]
        assert isinstance(mission, OpaqueSpace) and "MissionSpace" in repr(mission)
        obs, _ = env.reset(seed=0)
        assert obs["mission"] == "get to the green goal square"
        # checked and sampled by the real MissionSpace, in the sandbox
        assert mission.contains(obs["mission"]) and not mission.contains("fly to the moon")
        assert mission.sample() == "get to the green goal square"
        assert env.observation_space["image"].contains(obs["image"])


def test_atari_pong_matches_in_process() -> None:
    report = check_sandbox_env("ALE/Pong-v5", seeds=(0,), max_steps=60, **ALE)
    assert report.compared and report.steps == 60


def test_atari_wrappers_run_in_the_sandbox_and_only_the_stack_crosses() -> None:
    # Grey frames stacked four deep: the wrapped observation is what crosses, 4x210x160
    # bytes instead of four 210x160x3 colour frames, and it equals the in-process wrapping.
    wrappers = [gym.wrappers.GrayscaleObservation,
                functools.partial(gym.wrappers.FrameStackObservation, stack_size=4)]  # fmt: skip
    here = gym.make("ALE/Pong-v5")
    for wrapper in wrappers:
        here = wrapper(here)
    with SandboxEnv("ALE/Pong-v5", wrappers=wrappers, **ALE) as env:
        assert env.observation_space == here.observation_space
        assert env.observation_space.shape == (4, 210, 160)
        obs, _ = env.reset(seed=2)
        np.testing.assert_array_equal(obs, here.reset(seed=2)[0])
        for action in [0, 2, 3, 2, 1, 0, 3, 3] * 3:
            got, want = env.step(action), here.step(action)
            np.testing.assert_array_equal(got[0], want[0])
            assert got[1:4] == want[1:4]
    here.close()


# -- MuJoCo rendering: the system the sandbox runs on decides -------------------------------


def test_mujoco_renders_in_a_container_whose_image_has_egl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_podman_image(GL_IMAGE, monkeypatch)
    with SandboxEnv("HalfCheetah-v5", render_mode="rgb_array", packages=MUJOCO,
                    base_image=GL_IMAGE, env={"MUJOCO_GL": "egl"}) as env:  # fmt: skip
        env.reset(seed=0)
        frame = env.render()
        assert frame.shape == (480, 480, 3) and frame.dtype == np.uint8
        assert frame.std() > 10  # a scene, not a blank


def test_mujoco_rendering_without_a_gl_stack_fails_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_podman_image(PLAIN_IMAGE, monkeypatch)
    with SandboxEnv("HalfCheetah-v5", render_mode="rgb_array", packages=MUJOCO,
                    base_image=PLAIN_IMAGE) as env:  # fmt: skip
        env.reset(seed=0)
        with pytest.raises(RemoteEnvError, match="MUJOCO_GL") as caught:
            env.render()
    assert "OpenGL" in str(caught.value)
