"""The fault suite: broken and hostile environments cannot take the host down.

Every test here drives a real sandbox into one fault and checks what the user sees. The
table in docs/reliability.md points at these tests.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import numpy as np
import pytest
from processes import aclose_during_a_step, close_during_a_step, wait_gone
from sandbox_options import TEST_ENVS

from rlmesh import (
    ProtocolError,
    SandboxClosedError,
    SandboxCrashedError,
    SandboxStartupError,
    SandboxTimeoutError,
)
from rlmesh.numpy import AsyncSandboxEnv, RemoteObject, SandboxEnv, SandboxVectorEnv, State

pytestmark = [pytest.mark.faults, pytest.mark.sandbox]

FAULTY = "rlmesh_test/Faulty-v0"


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- timeouts ------------------------------------------------------------------------------


def test_a_step_over_call_timeout_stops_the_sandbox_and_says_which_call() -> None:
    env = SandboxEnv(FAULTY, mode="sleep", factor=600, call_timeout=0.5, **TEST_ENVS)
    env.reset()
    started = time.monotonic()
    with pytest.raises(SandboxTimeoutError, match=r"did not answer step\(\) within 0.5 s"):
        env.step(0)
    assert time.monotonic() - started < 2.0
    assert env.state is State.BROKEN
    with pytest.raises(SandboxClosedError, match="broken: SandboxTimeoutError"):
        env.step(0)
    assert wait_gone(env.pid, 2.0)
    env.close()


@pytest.mark.anyio
async def test_call_timeout_on_the_async_face() -> None:
    env = await AsyncSandboxEnv.create(FAULTY, mode="sleep", factor=600, call_timeout=0.5,
                                       **TEST_ENVS)  # fmt: skip
    await env.reset()
    with pytest.raises(SandboxTimeoutError, match=r"step\(\)"):
        await env.step(0)
    assert env.state is State.BROKEN
    await env.aclose()


def test_startup_timeout() -> None:
    with pytest.raises(SandboxTimeoutError, match=r"startup_timeout=0\.01"):
        SandboxEnv("CartPole-v1", startup_timeout=0.01)


# -- crashes -------------------------------------------------------------------------------


def test_segfault_is_a_crash_with_the_signal_name() -> None:
    env = SandboxEnv(FAULTY, mode="segv", **TEST_ENVS)
    env.reset()
    started = time.monotonic()
    with pytest.raises(SandboxCrashedError, match="signal SIGSEGV") as caught:
        env.step(0)
    assert time.monotonic() - started < 1.0
    assert caught.value.exit_code == -signal.SIGSEGV
    env.close()


def test_sigkill_from_outside_is_a_crash_within_a_second() -> None:
    with SandboxEnv(FAULTY, **TEST_ENVS) as env:
        env.reset()
        os.kill(env.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(SandboxCrashedError, match="signal SIGKILL"):
            env.step(0)
        assert time.monotonic() - started < 1.0


def test_out_of_memory_under_max_memory_ends_the_sandbox() -> None:
    with SandboxEnv(FAULTY, mode="alloc", factor=2**31, max_memory=768 * 2**20,
                    **TEST_ENVS) as env:  # fmt: skip
        env.reset()
        with pytest.raises(SandboxCrashedError, match="exit code 137") as caught:
            env.step(0)
        assert "ran out of memory" in caught.value.stderr_tail


def test_cpu_time_limit() -> None:
    with SandboxEnv(FAULTY, mode="spin", factor=30, max_cpu_seconds=1, **TEST_ENVS) as env:
        env.reset()
        with pytest.raises(SandboxCrashedError, match="signal SIGXCPU"):
            env.step(0)


def test_no_zombie_after_a_crash() -> None:
    env = SandboxEnv(FAULTY, mode="exit", **TEST_ENVS)
    pid = env.pid
    env.reset()
    with pytest.raises(SandboxCrashedError):
        env.step(0)
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or "zombie" not in status.read_text()
    env.close()


# -- host death ----------------------------------------------------------------------------

HOST = """
import sys
from rlmesh.numpy import SandboxEnv
env = SandboxEnv("rlmesh_test/Faulty-v0", mode="spawn", packages=[sys.argv[1]],
                 imports=["rlmesh_test_envs"])
obs, info = env.reset()
print(env.pid, info["grandchild"], flush=True)
env.step(0)  # the env sleeps in here; the test kills us meanwhile
"""


@pytest.mark.parametrize("busy", [True, False], ids=["env-busy", "worker-idle"])
def test_a_killed_host_takes_its_sandbox_and_the_envs_children_along(busy: bool) -> None:
    script = HOST if busy else HOST.replace("env.step(0)", "input()")
    host = subprocess.Popen([sys.executable, "-c", script, TEST_ENVS["packages"][0]],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "RLMESH_SANDBOX_ECHO": "1"})  # fmt: skip
    assert host.stdout is not None and host.stderr is not None and host.stdin is not None
    child, grandchild = (int(pid) for pid in host.stdout.readline().split())
    if busy:  # wait until the env is inside its sleeping step
        while "sleeping in step" not in host.stderr.readline():
            pass
    host.kill()
    host.stdin.close()
    host.stderr.close()
    host.wait()
    host.stdout.close()
    assert wait_gone(child, 2.0), "the sandbox outlived its host"
    assert wait_gone(grandchild, 2.0), "a process the env started outlived the host"


def test_a_killed_host_takes_its_sandbox_while_the_env_holds_the_gil() -> None:
    # A thread in the worker could never run here; the forked watcher needs no GIL of ours.
    script = HOST.replace('mode="spawn"', 'mode="gil"').replace(', info["grandchild"]', "")
    host = subprocess.Popen([sys.executable, "-c", script, TEST_ENVS["packages"][0]],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RLMESH_SANDBOX_ECHO": "1"})  # fmt: skip
    assert host.stdout is not None and host.stderr is not None
    child = int(host.stdout.readline())
    while "holding the GIL" not in host.stderr.readline():
        pass
    host.kill()
    host.stderr.close()
    host.wait()
    host.stdout.close()
    assert wait_gone(child, 2.0), "a sandbox whose env held the GIL outlived its host"


def _group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies left out)."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(name))
    return members


def test_a_large_action_to_a_worker_that_died_meanwhile_fails_at_once() -> None:
    # The worker's host watcher holds the read end of the request pipe. Once the worker is
    # gone it must let go at once: else a 4 MiB action, four times the pipe, would block with
    # nobody reading, until call_timeout, instead of failing as a crash.
    env = SandboxEnv("rlmesh_hardening/BigAction-v0", exit_after=0.1, call_timeout=30,
                     packages=TEST_ENVS["packages"],
                     imports=["rlmesh_test_envs.hardening"])  # fmt: skip
    try:
        env.reset()
        assert wait_gone(env.pid, 10)
        started = time.monotonic()
        with pytest.raises(SandboxCrashedError, match="exit code 3"):
            env.step(np.zeros(env.action_space.shape, np.float32))
        assert time.monotonic() - started < 10
        assert _group(env.pid) == []  # nothing of the sandbox runs on
    finally:
        env.close()


def test_close_kills_processes_the_env_started() -> None:
    with SandboxEnv(FAULTY, mode="spawn", **TEST_ENVS) as env:
        _, info = env.reset()
    assert wait_gone(info["grandchild"], 2.0)


# -- cancellation and concurrent close -------------------------------------------------------


def test_close_from_another_thread_while_a_step_is_in_flight() -> None:
    env = SandboxEnv(FAULTY, mode="sleep", factor=600, **TEST_ENVS)
    env.reset()
    errors = close_during_a_step(env, 10.0)
    assert len(errors) == 1 and isinstance(errors[0], SandboxClosedError)
    assert wait_gone(env.pid, 1.0)


@pytest.mark.anyio
async def test_aclose_from_another_task_while_a_step_is_in_flight() -> None:
    env = await AsyncSandboxEnv.create(FAULTY, mode="sleep", factor=600, **TEST_ENVS)
    await env.reset()
    seen = await aclose_during_a_step(env, 15)
    assert len(seen) == 1 and "in flight" in str(seen[0])


@pytest.mark.anyio
async def test_a_cancelled_reset_leaves_the_env_usable() -> None:
    async with AsyncSandboxEnv(FAULTY, mode="sleep", factor=0.3, **TEST_ENVS) as env:
        await env.reset()
        with anyio.move_on_after(0.05):
            await env.step(0)  # cancelled while the env sleeps
        obs, info = await env.reset(options={"after": "cancel"})
        assert info == {"options": {"after": "cancel"}}


# -- recovery ------------------------------------------------------------------------------


def test_auto_restart_rebuilds_a_crashed_sandbox_on_reset() -> None:
    with SandboxEnv(FAULTY, mode="exit", auto_restart=True, **TEST_ENVS) as env:
        first = env.pid
        env.reset()
        with pytest.raises(SandboxCrashedError):
            env.step(0)
        obs, info = env.reset()
        assert info["rlmesh_restarted"] is True and env.pid != first and env.restarts == 1
        assert env.state is State.READY


def test_auto_restart_replaces_only_the_crashed_vector_worker() -> None:
    env = SandboxVectorEnv(FAULTY, num_envs=4, num_workers=2, auto_restart=True, **TEST_ENVS)
    try:
        before = env.pids
        env.reset(seed=0)
        env.set_attr("mode", ["ok", "ok", "exit", "ok"])
        with pytest.raises(SandboxCrashedError, match=r"\[worker 1/2\]"):
            env.step(np.zeros(4, dtype=np.int64))
        obs, infos = env.reset(seed=1)
        assert env.pids[0] == before[0] and env.pids[1] != before[1]
        assert infos["rlmesh_restarted"].tolist() == [False, False, True, True]
        assert env.step(np.zeros(4, dtype=np.int64))[0].shape == (4, 2)
    finally:
        env.close()


# -- hostile environments -------------------------------------------------------------------


def test_objects_with_reduce_never_run_on_the_host() -> None:
    marker = Path("/tmp/rlmesh-evil-was-unpickled")
    marker.unlink(missing_ok=True)
    with SandboxEnv(FAULTY, mode="evil", **TEST_ENVS) as env:
        env.reset()
        *_, info = env.step(0)
    assert isinstance(info["evil"], RemoteObject)
    assert not marker.exists()


@pytest.mark.parametrize("mode", ["garbage", "bigframe"])
def test_junk_written_to_the_protocol_stream_is_a_protocol_error(mode: str) -> None:
    with SandboxEnv(FAULTY, mode=mode, **TEST_ENVS) as env:
        env.reset()
        with pytest.raises(ProtocolError):
            env.step(0)
        assert env.state is State.BROKEN


def test_flooding_stdout_and_stderr_keeps_host_memory_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RLMESH_SANDBOX_ECHO", "0")
    with SandboxEnv(FAULTY, mode="flood", **TEST_ENVS) as env:
        env.reset()
        env.step(0)
        before = rss()
        for _ in range(10):  # 40 MB of output
            env.step(0)
        assert rss() - before < 20 * 2**20
        assert len(env._core.started().child.output_tail()) <= 16 * 1024


# -- isolation -----------------------------------------------------------------------------


@pytest.fixture
def listener() -> int:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def probe(tmp_path: Path, port: int, **options: object) -> dict:
    with SandboxEnv(FAULTY, mode="probe", **options, **TEST_ENVS) as env:
        _, info = env.reset(options={"home": str(tmp_path / "f"), "port": port})
    return info


def test_a_plain_sandbox_is_not_a_security_boundary(tmp_path: Path, listener: int) -> None:
    info = probe(tmp_path, listener)
    assert info["write_home"] and info["network"]  # the probe can see what bwrap takes away


@pytest.mark.skipif(
    shutil.which("bwrap") is None and os.environ.get("CI") != "true",
    reason="bubblewrap is not installed here (CI installs it, so there this test runs)",
)
def test_bwrap_isolation_takes_network_files_and_pids_away(tmp_path: Path, listener: int) -> None:
    info = probe(tmp_path, listener, isolation="bwrap")
    assert info["write_tmp"] and not info["write_home"] and not info["network"]
    assert info["pid"] < 10  # its own PID namespace


def test_bwrap_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxStartupError, match="apt-get install bubblewrap"):
        SandboxEnv("CartPole-v1", isolation="bwrap")


# -- load ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sixty_four_sandboxes_at_once() -> None:
    async def episode(index: int) -> float:
        async with AsyncSandboxEnv("CartPole-v1") as env:
            await env.reset(seed=index)
            env.action_space.seed(index)
            total = 0.0
            while True:
                _, reward, terminated, truncated, _ = await env.step(env.action_space.sample())
                total += float(reward)
                if terminated or truncated:
                    return total

    returns: list[float] = []

    async def run(index: int) -> None:
        returns.append(await episode(index))

    with anyio.fail_after(240):
        async with anyio.create_task_group() as group:
            for index in range(64):
                group.start_soon(run, index)
    assert len(returns) == 64 and all(r > 0 for r in returns)


def test_soak_a_million_steps_without_growth() -> None:
    with SandboxEnv(FAULTY, **TEST_ENVS) as env:
        env.reset()
        for _ in range(20_000):
            env.step(0)  # warm up: caches, allocator pools
        gc.collect()
        start_rss, start_fds = rss(), fds()
        for i in range(1_000_000):
            *_, truncated, _ = env.step(i & 1)
            if truncated:
                env.reset()
        gc.collect()
        assert fds() == start_fds
        assert rss() - start_rss < 10 * 2**20
