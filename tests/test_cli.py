"""The `rlmesh` command, end to end through the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from processes import rlmesh

from rlmesh.numpy import SandboxEnv

pytestmark = pytest.mark.sandbox



@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of its own, so pruning here cannot touch other tests' venvs."""
    root = tmp_path / "cache"
    monkeypatch.setenv("RLMESH_CACHE_DIR", str(root))
    return root




def entries() -> list[dict]:
    return json.loads(rlmesh("cache", "list", "--json"))


def test_help_and_version() -> None:
    assert "prepare" in rlmesh("sandbox", "--help")
    assert "rlmesh" in rlmesh("--version")
    result = subprocess.run([sys.executable, "-m", "rlmesh", "cache", "--help"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0 and "prune" in result.stdout


def test_bad_usage_exits_2() -> None:
    assert "not a duration" in rlmesh("cache", "prune", "--older-than", "soon", code=2)
    assert "unknown source scheme" in rlmesh("sandbox", "prepare", "nope://x", code=2)
    rlmesh("frobnicate", code=2)


def test_prepare_an_envhub_source(cache: Path, hf_commits: dict[str, str]) -> None:
    source = "hf://lerobot/cartpole-env:cartpole_suite/0"
    assert "trust_remote_code=True" in rlmesh("sandbox", "prepare", source, code=2)
    assert "allow_unpinned_hf=True" in rlmesh(
        "sandbox", "prepare", source, "--trust-remote-code", code=2
    )
    out = rlmesh("sandbox", "prepare", source, "--trust-remote-code", "--allow-unpinned-hf")
    commit = hf_commits["lerobot/cartpole-env"]
    assert out.startswith(f"ready: hf://lerobot/cartpole-env@{commit}:cartpole_suite/0 in ")


def test_cache_path(cache: Path) -> None:
    assert rlmesh("cache", "path").strip() == str(cache)


def test_prepare_then_list_then_prune_spares_venvs_in_use(cache: Path) -> None:
    version = gym.__version__
    out = rlmesh("sandbox", "prepare", "CartPole-v1", "--package", f"gymnasium=={version}")
    assert out.startswith("ready: CartPole-v1 in ") and f"gymnasium {version}" in out
    [entry] = entries()
    assert entry["source"] == "CartPole-v1" and entry["size"] > 10_000_000
    assert f"gymnasium=={version}" in entry["requirements"] and not entry["in_use"]
    assert entry["installed"]["gymnasium"] == version and "numpy" in entry["installed"]
    table = rlmesh("cache", "list")
    assert entry["key"] in table and "CartPole-v1" in table

    assert "0 removed" in rlmesh("cache", "prune", "--older-than", "1h")
    with SandboxEnv("CartPole-v1", packages=[f"gymnasium=={version}"]):  # the same venv
        assert entries()[0]["in_use"]
        out = rlmesh("cache", "prune", "--all")
        assert f"kept {entry['key']} (in use)" in out and "0 removed" in out
    out = rlmesh("cache", "prune", "--all")
    assert f"removed {entry['key']}" in out
    assert entries() == []
    assert not any(p.name.startswith((".tmp-", ".trash-")) for p in (cache / "venvs").iterdir())


def test_prepare_reports_a_failing_import_with_exit_1(cache: Path) -> None:
    out = rlmesh("sandbox", "prepare", "CartPole-v1", "--import", "no_such_module", code=1)
    assert "SandboxStartupError" in out and "No module named 'no_such_module'" in out


def test_doctor(cache: Path) -> None:
    out = rlmesh("doctor")
    assert "[ok] uv: uv " in out and f"[ok] cache: {cache}" in out
    assert "backend venv" in out


def test_a_lock_rebuilds_the_same_sandbox(cache: Path, tmp_path: Path) -> None:
    """`rlmesh sandbox lock` prints what a sandbox holds; the file, as packages, gives it back."""
    out = rlmesh("sandbox", "lock", "CartPole-v1", "--package", "gymnasium==1.3.0")
    pins = dict(line.split("==") for line in out.splitlines() if not line.startswith("#"))
    assert pins["gymnasium"] == "1.3.0" and "numpy" in pins and "rlmesh" not in pins
    lock = tmp_path / "sandbox.lock.txt"
    lock.write_text(out)
    with SandboxEnv("CartPole-v1", packages=[str(lock)]) as env:
        held = {k: v for k, v in env.sandbox.packages.items() if k != "rlmesh"}
    assert held == pins
