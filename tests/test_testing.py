"""rlmesh.testing: the public check users run on their own sandboxed envs."""

from __future__ import annotations

import pytest
from sandbox_options import TEST_ENVS

from rlmesh.testing import SandboxCheck, check_sandbox_env

pytestmark = pytest.mark.sandbox


def test_a_matching_env_passes_and_says_what_was_compared() -> None:
    report = check_sandbox_env("CartPole-v1", seeds=(0, 1), max_steps=30)
    assert isinstance(report, SandboxCheck)
    assert report.source == "CartPole-v1" and report.compared
    assert report.episodes == 2 and 2 <= report.steps <= 60


def test_a_difference_fails_naming_the_seed_the_step_and_the_values() -> None:
    # gymnasium 0.29's FrozenLake rewards a step with a float where the host's gives an int
    with pytest.raises(AssertionError) as caught:
        check_sandbox_env("FrozenLake-v1", packages=["gymnasium==0.29.1", "numpy<2"], seeds=(4,))
    assert str(caught.value) == (
        "seed 4, step 1, reward: the sandbox gave 0.0 (float), the in-process env 0 (int)"
    )


def test_an_env_only_the_sandbox_can_make_is_checked_without_a_twin() -> None:
    # rlmesh_test_envs is installed in the sandbox only: nothing here to compare with
    report = check_sandbox_env("rlmesh_test/Faulty-v0", seeds=(0,), max_steps=5, **TEST_ENVS)
    assert not report.compared and report.episodes == 1 and report.steps >= 1
    with pytest.raises(ValueError, match=r"cannot be made in this process.*compare=False"):
        check_sandbox_env("rlmesh_test/Faulty-v0", compare=True, **TEST_ENVS)


def test_bad_arguments_fail_before_any_sandbox_starts() -> None:
    with pytest.raises(ValueError, match="at least one seed"):
        check_sandbox_env("CartPole-v1", seeds=())
    with pytest.raises(ValueError, match="max_steps"):
        check_sandbox_env("CartPole-v1", max_steps=0)
