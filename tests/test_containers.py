"""The container backend (``base_image=``), for real: rootful podman, and the docker CLI talking
to podman's Docker-compatible API (no Docker daemon runs here).

``.ci/containers`` sets both up (podman, runc, two debootstrapped base images, the API socket);
``.ci/run`` runs it and sets ``RLMESH_REQUIRE_CONTAINERS=1``, which turns a missing engine or
image into a failure. Elsewhere these tests are skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import gymnasium
import numpy as np
import pytest
from processes import rlmesh, wait_gone
from sandbox_options import TEST_ENVS

from rlmesh import SandboxBuildError, SandboxCrashedError
from rlmesh._backends import engine as engines
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv, SandboxVectorEnv
from rlmesh.testing import check_sandbox_env

pytestmark = pytest.mark.sandbox

IMAGE = "localhost/rlmesh-test-python"
NO_PYTHON = "localhost/rlmesh-test-nopython"
PYTHON39 = "localhost/rlmesh-test-python39"
SOCKET = "/run/podman/podman.sock"
REQUIRED = os.environ.get("RLMESH_REQUIRE_CONTAINERS") == "1"
FAULTY = "rlmesh_test/Faulty-v0"


def _missing(engine: str) -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed"
    if engine == "docker":
        if shutil.which("docker") is None:
            return "the docker CLI is not installed"
        if not Path(SOCKET).exists():
            return f"podman's API socket {SOCKET} is not there"
    found = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True)
    return None if found.returncode == 0 else f"the image {IMAGE} is missing"


def unavailable(why: str) -> NoReturn:
    """Fail where CI requires the container tests (``RLMESH_REQUIRE_CONTAINERS=1``), else
    skip; either way say how to set them up."""
    message = f"{why}: run .ci/containers (as root) to set up the container tests"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def require_podman_image(image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Select podman as the engine for ``image``; without either, fail where CI requires
    them, else skip saying how to set them up."""
    why = _missing("podman")
    if why is None and subprocess.run(["podman", "image", "exists", image]).returncode:
        why = f"the image {image} is missing"
    if why:
        unavailable(why)
    monkeypatch.setenv(engines.ENGINE_ENV, "podman")


@pytest.fixture(scope="session", params=["podman", "docker"])
def engine(request: pytest.FixtureRequest) -> str:
    """The engine a test runs under (``RLMESH_CONTAINER_ENGINE``), set up or skipped."""
    name = str(request.param)
    why = _missing(name)
    if why:
        unavailable(why)
    return name


@pytest.fixture
def use(engine: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(engines.ENGINE_ENV, engine)
    if engine == "docker":
        monkeypatch.setenv("DOCKER_HOST", f"unix://{SOCKET}")
    yield engine


@pytest.fixture
def podman(monkeypatch: pytest.MonkeyPatch) -> str:
    why = _missing("podman")
    if why:
        unavailable(why)
    monkeypatch.setenv(engines.ENGINE_ENV, "podman")
    return "podman"


def _containers(engine: str, name: str) -> list[str]:
    """Names of the containers (running or not) called ``name``."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}"}
    out = subprocess.run(
        [engine, "ps", "--all", "--filter", f"name={name}", "--format", "{{.Names}}"],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    )  # fmt: skip
    return [line for line in out.stdout.split() if line == name]


def _gone_within(engine: str, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _containers(engine, name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)  # polling the engine for a condition, with a deadline
    return True


# -- acceptance 1: the same trajectories and check_env as the venv backend -----------------


def test_cartpole_in_a_container_matches_in_process_gymnasium(use: str) -> None:
    report = check_sandbox_env("CartPole-v1", seeds=(7, 8), max_steps=40, base_image=IMAGE)
    assert report.compared and report.episodes == 2 and report.steps >= 2


def test_container_and_venv_trajectories_are_equal(use: str) -> None:
    def play(**options: object) -> list[tuple[object, ...]]:
        with SandboxEnv("CartPole-v1", **options) as env:
            obs, _ = env.reset(seed=3)
            env.action_space.seed(3)
            steps = [(obs.tolist(),)]
            for _ in range(30):
                obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                steps.append((obs.tolist(), reward, terminated, truncated))
                if terminated or truncated:
                    break
            return steps

    in_container = play(base_image=IMAGE)
    assert in_container == play()


def test_the_sandbox_reports_its_container(use: str) -> None:
    with SandboxEnv("CartPole-v1", base_image=IMAGE) as env:
        info = env.sandbox
        assert info.backend == "container"
        assert info.container["image"] == IMAGE
        assert info.container["engine"].startswith(use)
        assert info.container["image_python"].startswith("3.11.")
        assert info.packages["gymnasium"] and info.packages["numpy"]
        assert env.sandbox_versions["executable"] == "/usr/bin/python3"  # the image's own
        name = info.container["name"]
        assert _containers(use, name) == [name]
    assert _gone_within(use, name, 30)


def test_vector_env_in_containers(use: str) -> None:
    with SandboxVectorEnv("CartPole-v1", num_envs=4, num_workers=2, base_image=IMAGE) as env:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4, 4)
        obs, reward, terminated, truncated, _ = env.step(np.zeros(4, dtype=np.int64))
        assert reward.tolist() == [1.0] * 4


# -- acceptance 2: hardened defaults; gone after close and after the host's death ----------


def test_defaults_no_network_non_root_read_only_root(use: str) -> None:
    listener = socket.create_server(("0.0.0.0", 0))
    host = _host_address()
    try:
        port = listener.getsockname()[1]
        options = {"host": host, "port": port, "home": "/root/x"}
        with SandboxEnv(FAULTY, mode="probe", base_image=IMAGE, **TEST_ENVS) as env:
            _, probe = env.reset(options=options)
    finally:
        listener.close()
    assert probe["uid"] == 65534  # nobody, not root
    assert probe["interfaces"] == ["lo"]
    assert probe["network"] is False  # the host's own address is out of reach
    assert probe["write_root"] is False  # read-only root
    assert probe["write_home"] is False
    assert probe["write_tmp"] is True  # a scratch /tmp


def _host_address() -> str:
    """An address of this host that is not loopback (a container with a network reaches it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: this picks the route
        return str(probe.getsockname()[0])


def test_container_is_gone_after_the_host_is_killed(use: str, tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from rlmesh.numpy import SandboxEnv
        env = SandboxEnv("CartPole-v1", base_image={IMAGE!r})
        env.reset(seed=0)
        print(env.sandbox.container["name"], flush=True)
        sys.stdin.read()  # until killed
    """))
    with subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as host:  # fmt: skip
        try:
            assert host.stdout is not None
            name = host.stdout.readline().strip()
            assert name.startswith("rlmesh-") and _containers(use, name) == [name]
        finally:
            host.send_signal(signal.SIGKILL)
            host.wait(30)
    assert _gone_within(use, name, 60), f"{name} outlived its host"


# -- errors --------------------------------------------------------------------------------


def test_a_crash_names_the_container_the_exit_code_and_the_output(use: str) -> None:
    env = SandboxEnv(FAULTY, mode="exit", base_image=IMAGE, **TEST_ENVS)
    try:
        env.reset(seed=0)
        with pytest.raises(SandboxCrashedError) as caught:
            env.step(0)
        error = caught.value
        assert error.exit_code == 3
        assert "goodbye from the env" in (error.stderr_tail or "")
        assert env.sandbox.container["name"] in str(error) and IMAGE in str(error)
        assert f"pid {error.pid}" in str(error)
    finally:
        env.close()
    assert _gone_within(use, env.sandbox.container["name"], 30)


def test_out_of_memory_under_a_memory_limit_is_reported(use: str) -> None:
    limit = 256 << 20
    env = SandboxEnv(FAULTY, mode="alloc", factor=1 << 30, max_memory=limit, base_image=IMAGE,
                     **TEST_ENVS)  # fmt: skip
    try:
        env.reset(seed=0)
        with pytest.raises(SandboxCrashedError, match="probably out of memory") as caught:
            env.step(0)
        assert caught.value.exit_code == 137
    finally:
        env.close()


def test_an_image_without_python_is_refused_with_a_reason(podman: str) -> None:
    with pytest.raises(SandboxBuildError, match="has no Python the sandbox can run"):
        SandboxEnv("CartPole-v1", base_image=NO_PYTHON)


def test_a_missing_image_names_the_engine_and_the_image(podman: str) -> None:
    with pytest.raises(SandboxBuildError, match="localhost/rlmesh-no-such-image"):
        SandboxEnv("CartPole-v1", base_image="localhost/rlmesh-no-such-image")


def test_no_engine_is_one_clear_error_before_anything_is_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Not a mock: this PATH really holds no engine (a machine without podman or docker).
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    monkeypatch.setenv("RLMESH_CACHE_DIR", str(tmp_path / "cache"))
    engines._find.cache_clear()
    try:
        with pytest.raises(SandboxBuildError) as caught:
            SandboxEnv("CartPole-v1", base_image=IMAGE)
    finally:
        engines._find.cache_clear()
    message = str(caught.value)
    assert "tried podman (not found on PATH); docker (not found on PATH)" in message
    assert "leave base_image unset" in message
    assert not (tmp_path / "cache").exists()  # failed before any build


def test_an_engine_that_does_not_answer_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A real docker CLI pointed at a socket where nothing listens: a machine without a daemon.
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not installed")
    monkeypatch.setenv(engines.ENGINE_ENV, "docker")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    engines._find.cache_clear()
    try:
        with pytest.raises(SandboxBuildError, match="did not answer: docker"):
            SandboxEnv("CartPole-v1", base_image=IMAGE)
    finally:
        engines._find.cache_clear()


def test_venv_only_options_are_refused_with_a_base_image() -> None:
    with pytest.raises(ValueError, match="the image's own Python runs the env"):
        SandboxEnv("CartPole-v1", base_image=IMAGE, python="3.12")
    with pytest.raises(ValueError, match="isolated by the engine already"):
        SandboxEnv("CartPole-v1", base_image=IMAGE, isolation="bwrap")


def test_container_only_options_need_a_base_image() -> None:
    with pytest.raises(ValueError, match=r"cpus=2\.0 applies to container sandboxes"):
        SandboxEnv("CartPole-v1", cpus=2)
    with pytest.raises(ValueError, match="gpus must be 'all' or device numbers"):
        SandboxEnv("CartPole-v1", gpus="many", base_image=IMAGE)


def test_the_run_command_carries_every_hardening_flag_and_the_limits() -> None:
    # What goes to the engine, for options this machine cannot exercise (GPUs).
    from rlmesh._backends.container import run_command
    from rlmesh._config import Resolved, check_options

    options = check_options({"base_image": IMAGE, "cpus": 1.5, "gpus": "0,1",
                             "max_memory": 1 << 30, "env": {"A": "b"}})  # fmt: skip
    python = engines.ImagePython("/usr/bin/python3", "3.11.2", "x86_64", "glibc", "2.36")
    cdi = ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"]
    for name, gpu_args in (("podman", cdi), ("docker", ["--gpus", "0,1"])):
        cli = engines.Engine(name, name, "1")
        argv = run_command(cli, options, Resolved({"kind": "gym"}, mounts=("/data/repo",)),
                           image="sha256:x", env_dir=Path("/c/k"), python=python, name="n",
                           labels={"io.rlmesh.sandbox": "1"})  # fmt: skip
        line = " ".join(argv)
        for flag in ("--network none", "--cap-drop ALL", "--security-opt no-new-privileges",
                     "--user 65534:65534", "--read-only", "--init", "--pids-limit",
                     "--volume /c/k:/opt/rlmesh:ro", "--volume /data/repo:/data/repo:ro",
                     "--memory 1073741824", "--cpus 1.5", "--env A=b"):  # fmt: skip
            assert flag in line, (name, flag)
        assert " ".join(gpu_args) in line
        assert ("--rm" in argv) == (name == "podman")  # docker's exit status needs the guard
    opened = check_options({"base_image": IMAGE, "network": True})
    argv = run_command(engines.Engine("podman", "podman", "1"), opened, Resolved({}),
                       image="i", env_dir=Path("/e"), python=python, name="n",
                       labels={})  # fmt: skip
    assert "--network" not in argv


# -- cache, reaper, CLI ----------------------------------------------------------------------


def test_the_environment_is_built_once_and_reused(podman: str) -> None:
    with SandboxEnv("CartPole-v1", base_image=IMAGE) as first:
        key = first.sandbox.venv_key
    started = time.monotonic()
    with SandboxEnv("CartPole-v1", base_image=IMAGE) as again:
        assert again.sandbox.venv_key == key
    assert time.monotonic() - started < 20  # reused: no install (a build takes longer)
    listed = rlmesh("cache", "list", "--json")
    assert key in listed and f"CartPole-v1 in {IMAGE}" in listed


def test_the_reaper_removes_containers_of_dead_hosts_only(podman: str) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cli = engines.find_engine()
    labels = {**engines.owner_labels(), f"{engines.LABEL}.pid": str(dead.pid)}
    mine = engines.owner_labels()
    names = {kind: f"rlmesh-test-{kind}-{os.getpid()}" for kind in ("orphan", "live")}
    try:
        for kind, owner in (("orphan", labels), ("live", mine)):
            flags = [arg for k, v in owner.items() for arg in ("--label", f"{k}={v}")]
            subprocess.run(["podman", "create", "--name", names[kind], *flags, IMAGE, "true"],
                           check=True, capture_output=True, timeout=60)  # fmt: skip
        assert cli.name == "podman"
        out = rlmesh("cache", "prune")
        assert f"removed container {names['orphan']} (its host process is gone)" in out
        assert names["live"] not in out
        assert not _containers("podman", names["orphan"])
        assert _containers("podman", names["live"]) == [names["live"]]
    finally:
        subprocess.run(["podman", "rm", "--force", "--ignore", *names.values()], check=True,
                       capture_output=True)  # fmt: skip


def test_prepare_builds_a_container_sandbox(podman: str) -> None:
    out = rlmesh("sandbox", "prepare", "CartPole-v1", "--base-image", IMAGE)
    assert "ready: CartPole-v1" in out and IMAGE in out


def test_doctor_reports_the_container_engine(
    podman: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RLMESH_CACHE_DIR", str(tmp_path))  # a cache of its own, all sound
    out = rlmesh("doctor")
    assert "backend container: engine podman" in out
    monkeypatch.setenv("RLMESH_SANDBOX_BASE_IMAGE", IMAGE)
    assert f"[ok] base image (RLMESH_SANDBOX_BASE_IMAGE): {IMAGE}: Python 3.11." in rlmesh("doctor")
    monkeypatch.setenv("RLMESH_SANDBOX_BASE_IMAGE", NO_PYTHON)
    out = rlmesh("doctor", code=1)
    assert "[FAIL] base image" in out and "has no Python the sandbox can run" in out


def test_a_host_process_start_does_not_leak_the_guard(use: str) -> None:
    # The docker CLI runs under a guard process; after close, neither is left.
    with SandboxEnv("CartPole-v1", base_image=IMAGE) as env:
        pid = env.pid
        assert pid is not None
    assert wait_gone(pid, 10)


# -- every way in: async faces, EnvHub, rlmesh_package, another Python ---------------------


@pytest.mark.anyio
async def test_the_async_face_in_a_container(podman: str) -> None:
    async with await AsyncSandboxEnv.create("CartPole-v1", base_image=IMAGE) as env:
        obs, _ = await env.reset(seed=5)
        assert obs.shape == (4,) and env.sandbox.backend == "container"
        _, reward, *_ = await env.step(1)
        assert reward == 1.0


def test_an_envhub_repository_is_mounted_read_only(
    podman: str, hf_commits: dict[str, str]
) -> None:
    # The repository's requirements (six) are built in; its sibling module imports from the
    # mounted snapshot, which the container's unprivileged user reads but cannot change.
    commit = hf_commits["rlmesh-test/with-requirements"]
    with SandboxEnv(f"hf://rlmesh-test/with-requirements@{commit}", trust_remote_code=True,
                    base_image=IMAGE) as env:  # fmt: skip
        env.reset(seed=0)
        steps = 0
        truncated = False
        while not truncated:
            *_, truncated, _ = env.step(0 if steps % 2 else 1)
            steps += 1
        assert steps == 7  # helpers.horizon(), from the mounted repository
        assert env.sandbox.packages["six"]


def test_rlmesh_package_installs_a_wheel_into_the_container_environment(
    podman: str, tmp_path: Path
) -> None:
    from test_sandbox_packages import build_wheel

    import rlmesh

    wheel = build_wheel(tmp_path / "dist")
    with SandboxEnv("CartPole-v1", base_image=IMAGE, rlmesh_package=str(wheel)) as env:
        assert env.reset(seed=0)[0].shape == (4,)
        assert env.sandbox.packages["rlmesh"] == rlmesh.__version__  # from the wheel's metadata
        assert env.sandbox_versions["rlmesh"] == rlmesh.__version__


def test_an_image_with_another_python_gets_an_environment_built_for_it(podman: str) -> None:
    # Debian bullseye's Python 3.9, while the host runs 3.11: uv builds for 3.9 and the
    # image's platform, and the trajectory is the host's (gymnasium 1.1.1 runs on both).
    why = subprocess.run(["podman", "image", "exists", PYTHON39], capture_output=True)
    if why.returncode:
        message = f"the image {PYTHON39} is missing: run .ci/containers"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    with SandboxEnv("CartPole-v1", base_image=PYTHON39, packages=["gymnasium==1.1.1"]) as env:
        assert env.sandbox.container["image_python"].startswith("3.9.")
        assert env.sandbox_versions["python"].startswith("3.9.")
        assert env.sandbox.packages["gymnasium"] == "1.1.1"
        obs, _ = env.reset(seed=11)
        local = gymnasium.make("CartPole-v1")
        want, _ = local.reset(seed=11)
        assert obs.tolist() == want.tolist()
        for action in (0, 1, 1, 0):
            assert env.step(action)[0].tolist() == local.step(action)[0].tolist()


# -- the core's recovery paths, through containers ---------------------------------------------


def test_a_wedged_step_times_out_and_the_container_is_removed(podman: str) -> None:
    from rlmesh import SandboxTimeoutError

    env = SandboxEnv(FAULTY, mode="sleep", call_timeout=1.0, base_image=IMAGE, **TEST_ENVS)
    try:
        name = env.sandbox.container["name"]
        env.reset(seed=0)
        with pytest.raises(SandboxTimeoutError):
            env.step(0)
        assert not _containers("podman", name)  # killed and removed, not left running
    finally:
        env.close()


def test_auto_restart_replaces_a_crashed_container(podman: str) -> None:
    with SandboxEnv(FAULTY, mode="exit", auto_restart=True, base_image=IMAGE,
                    **TEST_ENVS) as env:  # fmt: skip
        first = env.sandbox.container["name"]
        env.reset(seed=0)
        with pytest.raises(SandboxCrashedError):
            env.step(0)
        _, info = env.reset(seed=0)
        assert info["rlmesh_restarted"] is True
        assert env.sandbox.container["name"] != first
        assert not _containers("podman", first)


def test_a_proxys_ca_bundle_reaches_uv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Behind a TLS-intercepting proxy the bundle is often in pip's or requests' variable; uv
    # reads only SSL_CERT_FILE. (No such proxy is reachable here: this checks what uv gets.)
    # Container sandboxes are built by uv on the host too, so no bundle enters any image.
    from rlmesh._backends import venv

    bundle = tmp_path / "proxy-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    for name in venv.CA_BUNDLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert "SSL_CERT_FILE" not in venv._uv_env()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("PIP_CERT", str(bundle))
    assert venv._uv_env()["SSL_CERT_FILE"] == str(bundle)
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    assert venv._uv_env()["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"


@pytest.mark.anyio
async def test_concurrent_starts_build_the_environment_once(
    podman: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import anyio

    monkeypatch.setenv("RLMESH_CACHE_DIR", str(tmp_path / "cache"))  # nothing built yet
    caplog.set_level("INFO", logger="rlmesh.build")
    keys: list[str | None] = []

    async def start() -> None:
        async with await AsyncSandboxEnv.create("CartPole-v1", base_image=IMAGE) as env:
            await env.reset(seed=0)
            keys.append(env.sandbox.venv_key)

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(start)
    assert len(keys) == 3 and len(set(keys)) == 1
    builds = [r for r in caplog.records if "building sandbox venv" in r.getMessage()]
    assert len(builds) == 1, [r.getMessage() for r in builds]
