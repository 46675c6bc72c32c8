"""The sandbox venv cache: reuse, concurrent builds, crash safety (real uv, real processes)."""

from __future__ import annotations

import logging
import os
import pty
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from sandbox_options import TEST_ENVS

from rlmesh import SandboxBuildError
from rlmesh._backends import venv
from rlmesh._backends.venv import venv_key
from rlmesh._backends.venv_cache import MARKER
from rlmesh._core.spec import SandboxSpec, make_spec
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


def key_inputs(spec: SandboxSpec) -> dict:
    """The venv backend's cache-key inputs for a spec (its source resolved first)."""
    return venv.key_inputs(spec.options, spec.source.resolve(spec.options))


def packages(tag: str) -> list[str]:
    """A requirement set no other test uses, so its venv is built fresh here."""
    return [f"gymnasium=={gym.__version__}", f"msgpack>=1.0,!={tag}"]


def fresh_key(pkgs: list[str]) -> str:
    """The cache key of ``pkgs``, with any venv of it removed (RLMESH_TEST_CACHE may persist)."""
    key = venv_key(key_inputs(make_spec("CartPole-v1", packages=pkgs)))
    shutil.rmtree(Path(os.environ["RLMESH_CACHE_DIR"]) / "venvs" / key, ignore_errors=True)
    return key


def test_key_ignores_kwargs_and_render_mode_but_not_requirements() -> None:
    base = key_inputs(make_spec("CartPole-v1"))
    assert key_inputs(make_spec("CartPole-v1", render_mode="ansi", make_kwargs={"foo": 1})) == base
    assert key_inputs(make_spec("Pendulum-v1")) == base
    assert venv_key(key_inputs(make_spec("CartPole-v1", packages=["numpy<3"]))) != venv_key(base)


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


def site_file(env: SandboxEnv, relative: str) -> Path:
    venv = Path(env.sandbox_versions["executable"]).parent.parent
    return next((venv / "lib").glob(f"python*/site-packages/{relative}"))


def test_an_env_writing_into_its_site_packages_changes_no_other_venv_nor_uvs_cache() -> None:
    uv_cache = Path(os.environ["UV_CACHE_DIR"])
    with SandboxEnv("CartPole-v1", packages=packages("0.0.4")) as other:
        other_numpy = site_file(other, "numpy/__init__.py")
    cached = {p: p.read_bytes() for p in uv_cache.rglob("numpy/__init__.py")}
    assert cached, "uv's cache holds numpy's files"
    before = other_numpy.read_bytes()
    pkgs = [*TEST_ENVS["packages"], "msgpack>=1.0,!=0.0.3"]
    fresh_key(pkgs)
    with SandboxEnv("rlmesh_test/Faulty-v0", mode="tamper", packages=pkgs,
                    imports=TEST_ENVS["imports"]) as tamperer:  # fmt: skip
        tamperer.reset()
        own = site_file(tamperer, "numpy/__init__.py")
    assert own.read_bytes().endswith(b"# tampered by a sandboxed env\n")  # it did write
    assert own.stat().st_nlink == 1  # a copy, not a hard link into uv's cache
    assert other_numpy.read_bytes() == before
    assert {p: p.read_bytes() for p in cached} == cached


def test_offline_builds_from_uvs_cache_and_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with SandboxEnv("CartPole-v1") as env:  # everything it needs is in uv's cache now
        env.reset(seed=0)
    monkeypatch.setenv("RLMESH_OFFLINE", "1")
    pkgs = packages("0.0.6")
    fresh_key(pkgs)
    with SandboxEnv("CartPole-v1", packages=pkgs) as env:
        env.reset(seed=0)
        assert env.step(0)[0].shape == (4,)
    with pytest.raises(SandboxBuildError, match=r"(?s)RLMESH_OFFLINE.*rlmesh-no-such-package"):
        SandboxEnv("CartPole-v1", packages=["rlmesh-no-such-package==0.0.1"])


def test_build_progress_goes_to_logging_with_a_heartbeat(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("rlmesh._backends.venv.HEARTBEAT", 0.05)
    caplog.set_level(logging.INFO, logger="rlmesh.build")
    pkgs = packages("0.0.10")
    fresh_key(pkgs)
    with SandboxEnv("CartPole-v1", packages=pkgs):
        pass
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "rlmesh.build")
    for expected in ("building sandbox venv", "installing gymnasium==", "still ",
                     "checking the worker imports", "built sandbox venv in"):  # fmt: skip
        assert expected in text, text


def test_build_progress_is_printed_on_a_terminal() -> None:
    pkgs = packages("0.0.11")
    fresh_key(pkgs)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", CREATE, *pkgs],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(120) == 0
    assert proc.stdout is not None and proc.stdout.read().startswith(b"OK")
    proc.stdout.close()
    shown = b"".join(chunks).decode()
    assert "rlmesh: CartPole-v1: building sandbox venv" in shown
    assert "rlmesh: CartPole-v1: built sandbox venv in" in shown


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_tasks_in_one_process_build_once(caplog: pytest.LogCaptureFixture) -> None:
    import anyio

    from rlmesh.numpy import AsyncSandboxEnv

    caplog.set_level(logging.INFO, logger="rlmesh.build")
    pkgs = packages("0.0.12")
    fresh_key(pkgs)
    envs: list[AsyncSandboxEnv] = []

    async def create() -> None:
        envs.append(await AsyncSandboxEnv.create("CartPole-v1", packages=pkgs))

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(create)
    for env in envs:
        assert (await env.reset(seed=1))[0].shape == (4,)
        await env.aclose()
    assert len(envs) == 4
    builds = [r for r in caplog.records if "building sandbox venv" in r.getMessage()]
    assert len(builds) == 1
