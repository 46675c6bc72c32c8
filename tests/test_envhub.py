"""EnvHub sources end to end: a real Hugging Face cache layout read by the real
huggingface_hub (offline), real sandboxes, and every gate and error with its message.

The Hub itself is out of reach here; ``hf_repos.py`` writes the fixture repositories into the
session's cache (see ``conftest.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import gymnasium as gym
import pytest

from rlmesh import SandboxStartupError
from rlmesh._core.spec import make_spec
from rlmesh._sources import HubSource, parse_source
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv, SandboxVectorEnv
from rlmesh.testing import check_sandbox_env

SHA = "0123456789abcdef0123456789abcdef01234567"
TRUST = {"trust_remote_code": True}


# -- grammar and gates (no sandbox) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://org/repo", HubSource("org/repo")),
        (f"hf://org/repo@{SHA}", HubSource("org/repo", SHA)),
        ("hf://org/repo@v1.2:suite", HubSource("org/repo", "v1.2", "suite")),
        ("hf://org/repo:suite/0", HubSource("org/repo", None, "suite", "0")),
        (f"hf://org/repo@{SHA}:envs/my_env.py", HubSource("org/repo", SHA, entry="envs/my_env.py")),
        ("hf://Org.x/re_po-1", HubSource("Org.x/re_po-1")),
    ],
)
def test_grammar(text: str, expected: HubSource) -> None:
    assert parse_source(text) == expected
    assert str(parse_source(text)) == text


@pytest.mark.parametrize(
    "repo", ["org", "org/repo/extra", "org/../x", "-org/repo", "org/-repo", "org/re--po", "o g/r"]
)
def test_a_bad_repo_id_fails_before_any_download_with_the_rule(repo: str) -> None:
    rule = r"is not a valid repo id; a repo id is exactly 'org/name'"
    with pytest.raises(ValueError, match=rule):
        parse_source(f"hf://{repo}")


@pytest.mark.parametrize("selector", ["a/b/c", "suite/", "../x.py", "/abs.py"])
def test_a_bad_selector_names_the_grammar(selector: str) -> None:
    with pytest.raises(ValueError, match=r"selector|entry file must be a path inside"):
        parse_source(f"hf://org/repo:{selector}")


def test_the_trust_gate_says_what_would_run_and_how_to_review_it() -> None:
    with pytest.raises(ValueError) as caught:
        make_spec(f"hf://org/repo@{SHA}")
    text = str(caught.value)
    assert "runs Python code from the Hugging Face repository org/repo" in text
    assert "env.py and its make_env()" in text
    assert f"https://huggingface.co/org/repo/tree/{SHA}" in text
    assert "trust_remote_code=True" in text


def test_the_trust_gate_of_an_unpinned_source_also_asks_for_a_pin() -> None:
    with pytest.raises(ValueError, match=r"pinning the reviewed commit as 'hf://org/repo@<40-hex"):
        make_spec("hf://org/repo", allow_unpinned_hf=True)


@pytest.mark.parametrize("revision", ["main", "v1.0", SHA[:12], SHA.upper()])
def test_the_pin_gate_wants_a_full_lowercase_sha(revision: str) -> None:
    with pytest.raises(ValueError, match=f"revision '{revision}', so it is not pinned"):
        make_spec(f"hf://org/repo@{revision}", **TRUST)
    assert make_spec(f"hf://org/repo@{revision}", allow_unpinned_hf=True, **TRUST)


# -- real sandboxes --------------------------------------------------------------------------

@pytest.mark.sandbox
def test_the_seed_example_runs_and_records_the_resolved_commit(
    hf_commits: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    commit = hf_commits["lerobot/cartpole-env"]
    with SandboxEnv(
        "hf://lerobot/cartpole-env:cartpole_suite/0", allow_unpinned_hf=True, **TRUST
    ) as env:
        obs, info = env.reset(seed=0)
        want = gym.make("CartPole-v1")
        assert (obs == want.reset(seed=0)[0]).all()
        assert env.step(0)[1] == 1.0
        info_obj = env.sandbox
    assert info_obj.source == "hf://lerobot/cartpole-env:cartpole_suite/0"
    assert info_obj.resolved_source == f"hf://lerobot/cartpole-env@{commit}:cartpole_suite/0"
    assert info_obj.backend == "venv" and info_obj.venv_key
    assert info_obj.packages["gymnasium"] == gym.__version__
    assert f"resolved to commit {commit}" in caplog.text


@pytest.mark.sandbox
def test_a_pinned_source_matches_the_in_process_env(hf_commits: dict[str, str]) -> None:
    commit = hf_commits["lerobot/cartpole-env"]
    report = check_sandbox_env(
        f"hf://lerobot/cartpole-env@{commit}:cartpole_suite/0", compare=False, seeds=(0,), **TRUST
    )
    assert report.steps > 5


@pytest.mark.anyio
@pytest.mark.sandbox
async def test_the_async_face_selects_suite_and_task(hf_commits: dict[str, str]) -> None:
    commit = hf_commits["rlmesh-test/multi-suite"]
    async with AsyncSandboxEnv(f"hf://rlmesh-test/multi-suite@{commit}:classic/1", **TRUST) as env:
        assert env.observation_space == gym.make("MountainCar-v0").observation_space
        assert env.sandbox.resolved_source.endswith(":classic/1")
    async with AsyncSandboxEnv(f"hf://rlmesh-test/multi-suite@{commit}:toy", **TRUST) as env:
        assert env.observation_space == gym.spaces.Discrete(16)  # the toy suite's only task


@pytest.mark.sandbox
@pytest.mark.parametrize(
    ("selector", "match"),
    [
        ("", r"returned several suites \('classic', 'toy'\); select one"),
        (":classic", r"returned several tasks \(0, 1\); select one"),
        (":nope", r"has no suite 'nope'; it has 'classic', 'toy'"),
        (":classic/7", r"has no task '7'; it has 0, 1"),
    ],
)
def test_unknown_or_ambiguous_suites_and_tasks_list_what_there_is(
    hf_commits: dict[str, str], selector: str, match: str
) -> None:
    commit = hf_commits["rlmesh-test/multi-suite"]
    with pytest.raises(SandboxStartupError, match=match):
        SandboxEnv(f"hf://rlmesh-test/multi-suite@{commit}{selector}", **TRUST)


@pytest.mark.sandbox
def test_the_vector_face_passes_num_envs_to_the_factory(hf_commits: dict[str, str]) -> None:
    commit = hf_commits["lerobot/cartpole-env"]
    source = f"hf://lerobot/cartpole-env@{commit}:cartpole_suite/0"
    with SandboxVectorEnv(source, num_envs=4, num_workers=2, **TRUST) as env:
        obs, _ = env.reset(seed=0)
        want = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
        assert (obs == want.reset(seed=0)[0]).all()


@pytest.mark.sandbox
def test_a_vector_task_needs_the_vector_face(hf_commits: dict[str, str]) -> None:
    commit = hf_commits["rlmesh-test/vector-only"]
    needs_vector = r"vector env of 2 sub-envs.*use SandboxVectorEnv"
    with pytest.raises(SandboxStartupError, match=needs_vector):
        SandboxEnv(f"hf://rlmesh-test/vector-only@{commit}", **TRUST)
    with SandboxVectorEnv(f"hf://rlmesh-test/vector-only@{commit}", num_envs=2, **TRUST) as env:
        assert env.reset(seed=0)[0].shape == (2, 4)


@pytest.mark.sandbox
def test_requirements_and_a_sibling_module(hf_commits: dict[str, str]) -> None:
    commit = hf_commits["rlmesh-test/with-requirements"]
    source = f"hf://rlmesh-test/with-requirements@{commit}"
    with SandboxEnv(source, **TRUST) as env:
        assert "six" in env.sandbox.packages  # from the repository's requirements.txt
        assert env.spec.max_episode_steps == 7  # helpers.horizon(), a sibling module
        plain = make_spec("CartPole-v1")
        assert env.sandbox.venv_key != _key(plain)  # the requirements are in the cache key


def _key(spec: object) -> str:
    from rlmesh._backends import venv

    options = spec.options  # type: ignore[attr-defined]
    return venv.venv_key(venv.key_inputs(options, spec.source.resolve(options)))  # type: ignore[attr-defined]


@pytest.mark.sandbox
def test_the_file_entry_form(hf_commits: dict[str, str]) -> None:
    commit = hf_commits["rlmesh-test/file-entry"]
    with SandboxEnv(f"hf://rlmesh-test/file-entry@{commit}:envs/my_env.py", **TRUST) as env:
        assert env.observation_space == gym.make("Pendulum-v1").observation_space


def test_a_missing_entry_file_names_the_files_there(hf_commits: dict[str, str]) -> None:
    commit = hf_commits["rlmesh-test/no-entry"]
    missing = r"has no entry file 'env.py' \(its Python files: other.py\)"
    with pytest.raises(ValueError, match=missing):
        SandboxEnv(f"hf://rlmesh-test/no-entry@{commit}", **TRUST)


@pytest.mark.sandbox
@pytest.mark.parametrize(
    ("repo", "match"),
    [
        ("rlmesh-test/no-factory", r"defines no make_env\(\) function \(it defines: make\)"),
        ("rlmesh-test/bad-return", r"returned int; it must return a gymnasium.Env"),
    ],
)
def test_a_broken_repository_is_a_startup_error_that_says_why(
    hf_commits: dict[str, str], repo: str, match: str
) -> None:
    with pytest.raises(SandboxStartupError, match=match):
        SandboxEnv(f"hf://{repo}@{hf_commits[repo]}", **TRUST)


def test_offline_with_nothing_cached_says_how_to_get_it() -> None:
    with pytest.raises(ValueError, match=r"is not in the Hugging Face cache and cannot be down"):
        SandboxEnv(f"hf://rlmesh-test/not-cached@{SHA}", **TRUST)


UNREACHABLE_HUB = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens


def run_with_an_unreachable_hub(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh process, online, against an endpoint where nothing listens."""
    env = {**os.environ, **UNREACHABLE_HUB}
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy"):  # fmt: skip
        env.pop(name, None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def test_a_failed_download_names_the_repo() -> None:
    """A real failed download: the repo is not cached and the Hub does not answer."""
    out = run_with_an_unreachable_hub(
        "from rlmesh.numpy import SandboxEnv\n"
        "try:\n"
        f"    SandboxEnv('hf://rlmesh-test/unreachable@{SHA}', trust_remote_code=True)\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    assert "rlmesh-test/unreachable" in out.stdout, out.stderr[-2000:]
    assert "cannot be downloaded now" in out.stdout
    assert "the Hub is unreachable: http://127.0.0.1:9" in out.stdout
    assert "Retrying in" not in out.stderr  # huggingface_hub's backoff (23 s) never began


@pytest.mark.sandbox
def test_a_cached_pinned_repo_starts_without_waiting_for_an_unreachable_hub(
    hf_commits: dict[str, str],
) -> None:
    """huggingface_hub would retry the endpoint for about 23 s before it used its cache."""
    commit = hf_commits["lerobot/cartpole-env"]
    out = run_with_an_unreachable_hub(
        "from rlmesh.numpy import SandboxEnv\n"
        f"with SandboxEnv('hf://lerobot/cartpole-env@{commit}:cartpole_suite/0',\n"
        "                trust_remote_code=True) as env:\n"
        "    print(env.reset(seed=0)[0].shape, env.sandbox.resolved_source)\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"(4,) hf://lerobot/cartpole-env@{commit}:cartpole_suite/0" in out.stdout
    assert "Retrying in" not in out.stderr


@pytest.mark.sandbox
@pytest.mark.skipif(
    shutil.which("bwrap") is None and os.environ.get("CI") != "true",
    reason="bubblewrap is not installed here (CI installs it, so there this test runs)",
)
def test_an_envhub_source_runs_under_bwrap_with_its_snapshot_mounted(
    hf_commits: dict[str, str],
) -> None:
    commit = hf_commits["rlmesh-test/with-requirements"]
    with SandboxEnv(f"hf://rlmesh-test/with-requirements@{commit}", isolation="bwrap",
                    **TRUST) as env:  # fmt: skip
        assert env.spec.max_episode_steps == 7  # the entry file and its sibling were readable
        env.reset(seed=0)
