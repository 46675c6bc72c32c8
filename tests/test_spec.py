"""Sources and options are parsed and validated before anything is built."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlmesh._backends.payload import requirement_names
from rlmesh._core.spec import make_spec
from rlmesh._sources import GymSource, HubSource, parse_source
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("text", "env_id"),
    [
        ("CartPole-v1", "CartPole-v1"),
        ("gym://CartPole-v1", "CartPole-v1"),
        ("ALE/Pong-v5", "ALE/Pong-v5"),
        ("my_pkg.envs:MyEnv-v0", "my_pkg.envs:MyEnv-v0"),
        ("rlmesh_test/Faulty-v0", "rlmesh_test/Faulty-v0"),
        ("Blackjack-v1", "Blackjack-v1"),
    ],
)
def test_gym_sources(text: str, env_id: str) -> None:
    assert parse_source(text) == GymSource(env_id)


def test_plain_and_gym_scheme_are_the_same_source() -> None:
    assert parse_source("CartPole-v1") == parse_source("gym://CartPole-v1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://lerobot/cartpole-env", HubSource("lerobot/cartpole-env", None, None, None)),
        (
            f"hf://lerobot/cartpole-env@{SHA}:cartpole_suite/0",
            HubSource("lerobot/cartpole-env", SHA, "cartpole_suite", "0"),
        ),
        ("hf://org/repo:suite", HubSource("org/repo", None, "suite", None)),
    ],
)
def test_hub_sources(text: str, expected: HubSource) -> None:
    assert parse_source(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text",
    ["", "   ", "Cart Pole-v1", "gym://", "gym://a b", "hf://noslash", "hf://org/repo@", "/x"],
)
def test_malformed_sources(text: str) -> None:
    with pytest.raises(ValueError, match="not a valid"):
        parse_source(text)


def test_unknown_scheme_names_the_accepted_forms() -> None:
    with pytest.raises(ValueError, match=r"unknown source scheme 'docker://'.*CartPole-v1"):
        parse_source("docker://CartPole-v1")


def test_unpinned_hub_needs_allow_unpinned() -> None:
    with pytest.raises(ValueError, match="full commit sha"):
        make_spec("hf://lerobot/cartpole-env", trust_remote_code=True)
    spec = make_spec("hf://lerobot/cartpole-env", trust_remote_code=True, allow_unpinned_hf=True)
    assert isinstance(spec.source, HubSource)


def test_hub_needs_trust_remote_code_and_names_the_revision() -> None:
    with pytest.raises(ValueError, match=f"trust_remote_code=True.*{SHA}"):
        make_spec(f"hf://org/repo@{SHA}")


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"packages": "gymnasium"}, TypeError, r"packages=\['gymnasium'\]"),
        ({"packages": ["gymnasium==="]}, ValueError, "neither a requirement"),
        ({"imports": "gymnasium"}, TypeError, "not a single string"),
        ({"imports": ["not a module"]}, ValueError, "not a module name"),
        ({"imports": [3]}, TypeError, "non-empty string"),
        ({"render_mode": 3}, TypeError, "render_mode"),
        ({"trust_remote_code": "yes"}, TypeError, "True or False"),
        ({"startup_timeout": 0}, ValueError, "positive"),
        ({"call_timeout": "1"}, TypeError, "seconds"),
        ({"base_image": "  "}, ValueError, "Docker image"),
        ({"rlmesh_package": ""}, ValueError, "rlmesh_package"),
    ],
)
def test_bad_options_fail_fast(options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make_spec("CartPole-v1", **options)


def test_local_path_packages_are_resolved(tmp_path: Path) -> None:
    wheel = tmp_path / "thing-1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    spec = make_spec("CartPole-v1", packages=[str(wheel), "numpy<3"])
    assert spec.options.packages == (str(wheel.resolve()), "numpy<3")
    assert requirement_names(list(spec.options.packages)) == {"numpy"}


def test_rlmesh_package_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLMESH_SANDBOX_RLMESH_PACKAGE", "rlmesh==0.1.0")
    assert make_spec("CartPole-v1").options.rlmesh_package == "rlmesh==0.1.0"
    assert make_spec("CartPole-v1", rlmesh_package="local").options.rlmesh_package == "local"


def _cache_entries(cache: Path) -> set[Path]:
    """The cache's entries two levels deep: a build starts with a lock or a directory there
    (``venvs/<key>``, ``venvs/.<key>.lock``). Deeper, the session's venvs hold about half a
    million files, which a full walk takes seconds to list."""
    if not cache.exists():
        return set()
    top = set(cache.iterdir())
    return top | {entry for folder in top if folder.is_dir() for entry in folder.iterdir()}


def test_faces_reject_bad_input_before_building_anything() -> None:
    cache = Path(os.environ["RLMESH_CACHE_DIR"])
    before = _cache_entries(cache)
    with pytest.raises(ValueError):
        SandboxEnv("nope://CartPole-v1")
    with pytest.raises(TypeError):
        AsyncSandboxEnv("CartPole-v1", packages="gymnasium")
    assert _cache_entries(cache) == before
