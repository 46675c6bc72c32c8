"""The sandbox venv cache: reuse, concurrent builds, crash safety (real uv, real processes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

from rlmesh._spec import make_spec
from rlmesh._venv import MARKER, _key_inputs, venv_key
from rlmesh.numpy import SandboxEnv

pytestmark = pytest.mark.sandbox

CREATE = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from rlmesh.numpy import SandboxEnv
with SandboxEnv("CartPole-v1", packages=sys.argv[1:]) as env:
    env.reset(seed=0)
    env.step(0)
print("OK", env.pid)
"""


def packages(tag: str) -> list[str]:
    """A requirement set no other test uses, so its venv is built fresh here."""
    return [f"gymnasium=={gym.__version__}", f"msgpack>=1.0,!={tag}"]


def fresh_key(pkgs: list[str]) -> str:
    """The cache key of ``pkgs``, with any venv of it removed (RLMESH_TEST_CACHE may persist)."""
    key = venv_key(_key_inputs(make_spec("CartPole-v1", packages=pkgs)))
    shutil.rmtree(Path(os.environ["RLMESH_CACHE_DIR"]) / "venvs" / key, ignore_errors=True)
    return key


def test_key_ignores_kwargs_and_render_mode_but_not_requirements() -> None:
    base = _key_inputs(make_spec("CartPole-v1"))
    assert _key_inputs(make_spec("CartPole-v1", render_mode="ansi", make_kwargs={"foo": 1})) == base
    assert _key_inputs(make_spec("Pendulum-v1")) == base
    assert venv_key(_key_inputs(make_spec("CartPole-v1", packages=["numpy<3"]))) != venv_key(base)


def test_eight_processes_build_once_and_all_run(tmp_path: Path) -> None:
    pkgs = packages("0.0.8")
    key = fresh_key(pkgs)
    env = {**os.environ, "RLMESH_SANDBOX_ECHO": "0"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, *pkgs],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(8)
    ]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 8, [err for _, err in outputs]
    assert all(out.startswith("OK") for out, _ in outputs)
    builds = sum(err.count("building sandbox venv") for _, err in outputs)
    assert builds == 1
    venvs = Path(os.environ["RLMESH_CACHE_DIR"]) / "venvs"
    assert (venvs / key / MARKER).is_file()
    assert not list(venvs.glob(f".tmp-{key}-*"))


def test_a_build_killed_mid_install_leaves_nothing_that_passes_for_a_venv() -> None:
    pkgs = packages("0.0.9")
    key = fresh_key(pkgs)
    venvs = Path(os.environ["RLMESH_CACHE_DIR"]) / "venvs"
    proc = subprocess.Popen(
        [sys.executable, "-c", CREATE, *pkgs],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until uv is installing packages into the temporary venv
        if "installing" in line:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the host and the uv it started, mid-install
    proc.wait(10)
    proc.stderr.close()
    proc.stdout.close()  # type: ignore[union-attr]
    assert not (venvs / key).exists()
    assert list(venvs.glob(f".tmp-{key}-*")), "the killed build left its temporary venv"
    with SandboxEnv("CartPole-v1", packages=pkgs) as env:
        env.reset(seed=0)
        assert env.step(1)[0].shape == (4,)
    assert (venvs / key / MARKER).is_file()
    assert not list(venvs.glob(f".tmp-{key}-*"))
