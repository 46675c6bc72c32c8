"""Hardening: processes, forks and signals (issue 11, items 3-6, 13-15, 17 and 28).

Each test drives real parts into one fault: real forks (``os.fork``, Gymnasium's
``AsyncVectorEnv`` with the fork context), real signals (SIGINT, SIGKILL, SIGSTOP), real
uv builds, a real host process whose stderr nobody reads. Hosts that must die or misbehave
run as separate Python processes (``run_host``), so the test process itself stays clean.
The table in docs/reliability.md ("Hardening: processes, forks and signals") points here.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from processes import wait_gone
from sandbox_options import ENVS_PACKAGE, TEST_ENVS

from rlmesh import SandboxCrashedError
from rlmesh._config import check_options
from rlmesh._wire.spin import Spinner
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv, State

HARD = {"packages": [ENVS_PACKAGE], "imports": ["rlmesh_test_envs.hardening"]}
BIG_ACTION = 1 << 20  # as in rlmesh_test_envs.hardening
FAULTY = "rlmesh_test/Faulty-v0"
sandbox = pytest.mark.sandbox
faults = pytest.mark.faults


# -- helpers -------------------------------------------------------------------------------


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def children() -> set[int]:
    """The pids of this process's children (of every thread)."""
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            found |= {
                int(pid) for pid in Path(f"/proc/self/task/{task}/children").read_text().split()
            }
    return found


class Host:
    """A Python process running ``script``, in its own session; its output read by threads."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None,
                 read_stderr: bool = True) -> None:  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "RLMESH_SANDBOX_ECHO": "1", **(env or {})},
            start_new_session=True,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self._threads = [self._reader(self.proc.stdout, self.out)]
        if read_stderr:
            self.read_stderr()

    def _reader(self, stream: object, into: queue.Queue[str]) -> threading.Thread:
        def run() -> None:
            for line in iter(stream.readline, b""):  # type: ignore[attr-defined]
                into.put(line.decode("utf-8", "replace"))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def read_stderr(self) -> None:
        self._threads.append(self._reader(self.proc.stderr, self.err))

    def line(self, timeout: float = 120.0, stream: str = "out") -> str:
        """The next line the host prints (``AssertionError`` if none comes in time)."""
        try:
            return (self.out if stream == "out" else self.err).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"the host printed no line on std{stream} in {timeout} s"
            ) from None

    def line_with(self, text: str, timeout: float = 120.0, stream: str = "out") -> str:
        end = time.monotonic() + timeout
        while True:
            line = self.line(max(0.0, end - time.monotonic()), stream)
            if text in line:
                return line

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the host and any helper it forked
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        for thread in self._threads:
            thread.join(10)


@contextlib.contextmanager
def run_host(script: str, *args: str, **kwargs: object) -> Iterator[Host]:
    host = Host(script, *args, **kwargs)  # type: ignore[arg-type]
    try:
        yield host
    finally:
        host.close()


def pipe_full(fd: int) -> bool:
    """Whether the pipe whose write end is ``fd`` is full (no room: not writable)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return not poller.poll(0)


def wait_for(condition: object, timeout: float = 30.0) -> None:
    """Wait until ``condition()`` holds: an observable state, checked every millisecond."""
    end = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError("the condition never came true")
        time.sleep(0.001)


def stop_and_wait(pid: int) -> None:
    """SIGSTOP our child ``pid`` and wait until it has stopped."""
    os.kill(pid, signal.SIGSTOP)
    os.waitid(os.P_PID, pid, os.WSTOPPED | os.WNOWAIT)


# -- 3: fork ----------------------------------------------------------------------------

FORK_CREATES = """
import os
from rlmesh.numpy import SandboxEnv, SandboxVectorEnv
SandboxEnv("CartPole-v1").close()  # the parent made one: its portal, its state
pid = os.fork()
if pid == 0:
    try:
        with SandboxEnv("CartPole-v1", startup_timeout=60) as env:
            env.reset(seed=0)
            env.step(0)
        with SandboxVectorEnv("CartPole-v1", num_envs=2, startup_timeout=60) as venv:
            venv.reset(seed=0)
        print("child ok", flush=True)
        code = 0
    except BaseException as exc:
        print("child failed", repr(exc), flush=True)
        code = 1
    os._exit(code)
_, status = os.waitpid(pid, 0)
print("parent saw", os.waitstatus_to_exitcode(status), flush=True)
"""


@sandbox
@faults
def test_a_forked_process_starts_its_own_sandboxes() -> None:
    with run_host(FORK_CREATES) as host:
        assert host.line(90).strip() == "child ok"
        assert host.line(30).strip() == "parent saw 0"


FORK_EXITS = """
import gc, os, sys
from rlmesh import SandboxError
from rlmesh.numpy import SandboxEnv
env = SandboxEnv("CartPole-v1")
env.reset(seed=0)
pid = os.fork()
if pid == 0:
    try:
        env.step(0)
        print("child stepped the parent's sandbox", flush=True)
    except SandboxError as exc:
        print("child:", type(exc).__name__, str(exc).splitlines()[0], flush=True)
    env.close()
    del env
    gc.collect()
    sys.exit(0)  # a normal exit: atexit and the finalizers run
os.waitpid(pid, 0)
env.step(0)
env.step(1)
print("parent stepped", flush=True)
env.close()
"""


@sandbox
@faults
def test_a_forked_child_neither_uses_nor_kills_its_parents_sandbox() -> None:
    with run_host(FORK_EXITS) as host:
        child = host.line(60)
        assert child.startswith("child: SandboxCrashedError"), child
        assert "a forked process cannot use its parent's sandboxes" in child
        assert host.line(30).strip() == "parent stepped"


FORK_HELPER = """
import os, sys
from rlmesh.numpy import SandboxEnv
env = SandboxEnv("CartPole-v1")
env.reset(seed=0)
helper = os.fork()
if helper == 0:
    sys.stdin.read()  # holds whatever it inherited until the test ends it
    os._exit(0)
print(env.pid, helper, flush=True)
sys.stdin.read()
"""


@sandbox
@faults
def test_a_forked_helper_does_not_keep_the_sandbox_alive_after_the_host_is_killed() -> None:
    with run_host(FORK_HELPER) as host:
        worker, helper = (int(pid) for pid in host.line(60).split())
        os.kill(host.proc.pid, signal.SIGKILL)
        try:
            assert wait_gone(worker, 3.0), "the sandbox outlived its host (a fork held its pipe)"
        finally:
            kill_quietly(worker)
        assert not wait_gone(helper, 0.0)  # the helper still holds what it inherited


FORK_FDS = """
import asyncio, os, stat
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv

def pipes(child):
    return {os.fstat(fd).st_ino for fd in (child.to_child, child.from_child, child._pump.fd)}

sync_env = SandboxEnv("CartPole-v1")
sync_env.reset(seed=0)

async def main():
    env = await AsyncSandboxEnv.create("CartPole-v1")
    await env.reset(seed=0)
    await env.step(0)  # its channel's standing reader holds a duplicate of the reply pipe
    inodes = pipes(sync_env._core.started().child) | pipes(env._core.started().child)
    pid = os.fork()
    if pid == 0:
        held = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                info = os.stat(f"/proc/self/fd/{name}")
            except OSError:
                continue
            held += stat.S_ISFIFO(info.st_mode) and info.st_ino in inodes
        print("child holds", held, flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    await env.step(1)
    await env.aclose()

asyncio.run(main())
sync_env.step(1)
sync_env.close()
print("parent ok", flush=True)
"""


@sandbox
@faults
def test_a_forked_child_holds_none_of_the_sandbox_pipes() -> None:
    with run_host(FORK_FDS) as host:
        assert host.line(90).strip() == "child holds 0"
        assert host.line(30).strip() == "parent ok"


ASYNC_VECTOR = """
import gymnasium as gym
from rlmesh.numpy import SandboxEnv
envs = gym.vector.AsyncVectorEnv(
    [lambda: SandboxEnv("CartPole-v1", startup_timeout=60)] * 2, context="fork"
)
obs, _ = envs.reset(seed=0)
envs.action_space.seed(0)
obs, reward, *_ = envs.step(envs.action_space.sample())
envs.close()
print("ok", obs.shape, reward.tolist(), flush=True)
"""


@sandbox
@faults
def test_gymnasium_async_vector_env_over_sandbox_envs_with_the_fork_context() -> None:
    # AsyncVectorEnv makes one env in the parent first (for the spaces), then forks.
    with run_host(ASYNC_VECTOR) as host:
        assert host.line(120).strip() == "ok (2, 4) [1.0, 1.0]"


# -- 4: half-sent frames -------------------------------------------------------------------


@sandbox
@faults
def test_ctrl_c_while_a_large_action_is_half_written_breaks_the_sandbox_clearly() -> None:
    env = SandboxEnv("rlmesh_hardening/BigAction-v0", **HARD)
    worker = env.pid
    assert worker is not None
    try:
        env.reset()
        action = np.full(BIG_ACTION, 0.5, np.float32)
        assert env.step(action)[0][0] == 0.5
        to_child = env._core.started().child.to_child
        stop_and_wait(worker)  # it reads nothing: the 4 MiB request fills the pipe and waits
        main = threading.get_ident()

        def interrupt() -> None:
            try:
                wait_for(lambda: pipe_full(to_child))
            finally:  # a failed wait must not leave the step waiting forever
                signal.pthread_kill(main, signal.SIGINT)

        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            env.step(action)
        interrupter.join()
        os.kill(worker, signal.SIGCONT)
        guard = threading.Timer(20, kill_quietly, (worker,))  # bounds the hang this fixes
        guard.start()
        try:
            with pytest.raises(SandboxCrashedError, match="half written") as caught:
                env.step(action)
        finally:
            guard.cancel()
        assert "KeyboardInterrupt" in str(caught.value) and "auto_restart" in str(caught.value)
        assert env.state is State.BROKEN
        assert wait_gone(worker, 2.0)
    finally:
        with contextlib.suppress(OSError):
            os.kill(worker, signal.SIGCONT)
        env.close()


@sandbox
@faults
@pytest.mark.anyio
async def test_a_step_cancelled_while_its_large_action_is_half_written_breaks_the_sandbox() -> None:
    async with AsyncSandboxEnv("rlmesh_hardening/BigAction-v0", **HARD) as env:
        await env.reset()
        action = np.full(BIG_ACTION, 0.5, np.float32)
        assert (await env.step(action))[0][0] == 0.5
        worker = env.pid
        assert worker is not None
        stop_and_wait(worker)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(env.step, action)
                await anyio.wait_all_tasks_blocked()  # the step waits for room in the pipe
                group.cancel_scope.cancel()
        finally:
            os.kill(worker, signal.SIGCONT)
        with anyio.fail_after(20):  # bounds the hang this fixes
            with pytest.raises(SandboxCrashedError, match="half written"):
                await env.step(action)
        assert env.state is State.BROKEN
        assert wait_gone(worker, 2.0)


# -- 5: interrupted startup, cancelled and killed builds ------------------------------------

CTRL_C_STARTUP = """
import sys
from rlmesh.numpy import SandboxEnv
try:
    SandboxEnv("rlmesh_hardening/SlowMake-v0", packages=[sys.argv[1]],
               imports=["rlmesh_test_envs.hardening"])
except KeyboardInterrupt:
    print("interrupted", flush=True)
sys.stdin.read()  # the host lives on
"""


@sandbox
@faults
def test_ctrl_c_during_sync_startup_stops_the_sandbox_at_once() -> None:
    with run_host(CTRL_C_STARTUP, ENVS_PACKAGE) as host:
        worker = int(host.line_with("making ", 180, stream="err").split()[-1])
        try:
            os.kill(host.proc.pid, signal.SIGINT)
            assert host.line(30).strip() == "interrupted"
            assert wait_gone(worker, 3.0), "the sandbox ran on after Ctrl-C"
            assert host.proc.poll() is None
        finally:
            kill_quietly(worker)


SLOW_BACKEND = """
import base64, hashlib, os, time, zipfile

def _hold():
    fifo = os.environ.get("RLMESH_TEST_BUILD_FIFO")
    if fifo:  # say who we are, then build "forever"
        with open(fifo, "w") as handle:
            handle.write(f"{os.getpid()} {os.getppid()}\\n")
        time.sleep(600)

def get_requires_for_build_wheel(config_settings=None):
    _hold()
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _hold()
    name, info = "NAME-0.1.0-py3-none-any.whl", "NAME-0.1.0.dist-info"
    files = {
        "NAME/__init__.py": b"",
        f"{info}/METADATA": b"Metadata-Version: 2.1\\nName: NAME\\nVersion: 0.1.0\\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\n"
                         b"Tag: py3-none-any\\n",
    }
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        wheel.writestr(f"{info}/RECORD", "\\n".join(record) + "\\n")
    return name
"""


def slow_package(root: Path, name: str) -> Path:
    """A local package whose in-tree build backend blocks when ``RLMESH_TEST_BUILD_FIFO`` is
    set (after writing its pid and its parent's to that FIFO) and builds fine otherwise."""
    root.mkdir()
    (root / "pyproject.toml").write_text(
        f'[build-system]\nrequires = []\nbuild-backend = "slow_backend"\nbackend-path = ["."]\n'
        f'[project]\nname = "{name}"\nversion = "0.1.0"\n'
    )
    (root / "slow_backend.py").write_text(SLOW_BACKEND.replace("NAME", name))
    return root


def read_fifo(path: Path, timeout: float = 180.0) -> list[int]:
    """The pids the build backend writes to the FIFO ``path`` (bounded wait)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        data = b""
        end = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            left = end - time.monotonic()
            assert left > 0 and poller.poll(int(left * 1000)), "the build backend never started"
            with contextlib.suppress(BlockingIOError):
                data += os.read(fd, 100)
        return [int(pid) for pid in data.split()]
    finally:
        os.close(fd)


@sandbox
@faults
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancelled_build_kills_uv_and_the_build_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A startup_timeout is this same cancellation; here the test picks the moment.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    package = slow_package(tmp_path / "slow", f"rlmesh_slow_{os.getpid()}_{time.time_ns()}")
    monkeypatch.setenv("RLMESH_TEST_BUILD_FIFO", str(fifo))
    pids: list[int] = []
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: AsyncSandboxEnv.create("CartPole-v1", packages=[str(package)]))
            pids += await anyio.to_thread.run_sync(read_fifo, fifo)
            group.cancel_scope.cancel()
        backend, parent = pids
        assert wait_gone(backend, 5.0), "the build backend outlived the cancelled build"
        assert wait_gone(parent, 5.0), "uv outlived the cancelled build"
    finally:
        for pid in pids:
            kill_quietly(pid)


TIMEOUT_BUILD_HOST = """
import sys
from rlmesh import SandboxTimeoutError
from rlmesh.numpy import SandboxEnv
try:
    SandboxEnv("CartPole-v1", packages=[sys.argv[1]], startup_timeout=float(sys.argv[2]))
except SandboxTimeoutError as exc:
    print("timed out:", str(exc).splitlines()[0], flush=True)
sys.stdin.read()  # the host lives on
"""


@sandbox
@faults
def test_a_startup_timeout_during_a_build_kills_uv_and_the_build_backend(tmp_path: Path) -> None:
    # The backend holds the build for 600 s: the startup_timeout expires while it runs. The
    # build reaches the backend in under a second here (0.7 s, measured), so 8 s is room enough.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    slow = slow_package(tmp_path / "slow", f"rlmesh_slow_{os.getpid()}_{time.time_ns()}")
    env = {"RLMESH_TEST_BUILD_FIFO": str(fifo)}
    pids: list[int] = []
    try:
        with run_host(TIMEOUT_BUILD_HOST, str(slow), "8", env=env) as host:
            pids += read_fifo(fifo)
            assert "startup_timeout=8" in host.line(60)
            backend, parent = pids
            assert wait_gone(backend, 5.0), "the build backend outlived the startup timeout"
            assert wait_gone(parent, 5.0), "uv outlived the startup timeout"
            assert host.proc.poll() is None
    finally:
        for pid in pids:
            kill_quietly(pid)


BUILD_HOST = """
import sys
from rlmesh.numpy import SandboxEnv
SandboxEnv("CartPole-v1", packages=[sys.argv[1]])
"""


@sandbox
@faults
def test_a_killed_host_takes_its_build_along_and_a_later_build_removes_its_tmp(
    tmp_path: Path,
) -> None:
    venvs = Path(os.environ["RLMESH_CACHE_DIR"]) / "venvs"
    before = set(venvs.glob(".tmp-*"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    tag = f"{os.getpid()}_{time.time_ns()}"
    slow = slow_package(tmp_path / "slow", f"rlmesh_slow_{tag}")
    pids: list[int] = []
    try:
        with run_host(BUILD_HOST, str(slow), env={"RLMESH_TEST_BUILD_FIFO": str(fifo)}) as host:
            pids += read_fifo(fifo)
            os.kill(host.proc.pid, signal.SIGKILL)  # only the host: not its session
            host.proc.wait()
            backend, parent = pids
            assert wait_gone(backend, 5.0), "the build backend outlived its host"
            assert wait_gone(parent, 5.0), "uv outlived its host"
        dead = set(venvs.glob(".tmp-*")) - before
        assert dead, "the killed build left no .tmp directory (nothing to clean up)"
        fast = slow_package(tmp_path / "fast", f"rlmesh_fast_{tag}")  # builds at once
        with SandboxEnv("CartPole-v1", packages=[str(fast)]) as env:
            env.reset(seed=0)
        assert not any(path.exists() for path in dead)
    finally:
        for pid in pids:
            kill_quietly(pid)


# -- 6 and 14: the echo of the env's output --------------------------------------------------

UNREAD_STDERR = """
import sys
from rlmesh.numpy import SandboxEnv
env = SandboxEnv("rlmesh_test/Faulty-v0", mode="flood", packages=[sys.argv[1]],
                 imports=["rlmesh_test_envs"])
env.reset()
for _ in range(3):  # 12 MB of output against a 64 KiB stderr pipe nobody reads
    env.step(0)
print("stepped", flush=True)
sys.stdin.readline()
for _ in range(3):  # now the test reads: the echo says what it dropped
    env.step(0)
env.close()
print("closed", flush=True)
"""


@sandbox
@faults
def test_a_host_whose_stderr_nobody_reads_still_steps() -> None:
    with run_host(UNREAD_STDERR, ENVS_PACKAGE, read_stderr=False) as host:
        assert host.line(90).strip() == "stepped"
        host.read_stderr()
        host.send("\n")
        assert host.line(60).strip() == "closed"
        host.proc.wait(30)
        host.close()
        err = "".join(host.err.queue)
    assert "bytes of sandbox output were dropped: nothing read this process's stderr" in err


@sandbox
@faults
def test_escape_sequences_from_the_env_are_shown_not_obeyed(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLMESH_SANDBOX_ECHO", "1")
    env = SandboxEnv("rlmesh_hardening/Escapes-v0", **HARD)
    try:
        env.reset()
        env.step(0)
        with pytest.raises(SandboxCrashedError) as caught:
            env.step(1)
    finally:
        env.close()  # waits for the output pump: the echo is complete
    err = capfd.readouterr().err
    for text in (err, caught.value.stderr_tail, str(caught.value)):
        assert "plain text\tand a tab" in text
        for shown in ("\\x1b]52;c;cm0gLXJmIH4=\\x07", "\\x1b[2J", "\\x9b31m", "\\u202e", "\\x08"):
            assert shown in text
        for raw in ("\x1b", "\x07", "\x08", "\x9b", "\u202e"):
            assert raw not in text


# -- 13: detached processes ------------------------------------------------------------------


@sandbox
@faults
def test_close_kills_a_daemon_the_env_detached_with_setsid() -> None:
    env = SandboxEnv("rlmesh_hardening/Daemon-v0", **HARD)
    daemon = 0
    try:
        _, info = env.reset()
        daemon = info["daemon"]
        assert os.getsid(daemon) != os.getsid(env.pid or 0)  # it left the worker's session
    finally:
        env.close()
    try:
        assert wait_gone(daemon, 3.0), "a daemon the env detached outlived close()"
    finally:
        kill_quietly(daemon)


DAEMON_HOST = """
import sys
from rlmesh.numpy import SandboxEnv
env = SandboxEnv("rlmesh_hardening/Daemon-v0", packages=[sys.argv[1]],
                 imports=["rlmesh_test_envs.hardening"])
_, info = env.reset()
print(env.pid, info["daemon"], flush=True)
sys.stdin.read()
"""


@sandbox
@faults
def test_a_killed_host_takes_a_detached_daemon_along() -> None:
    with run_host(DAEMON_HOST, ENVS_PACKAGE) as host:
        worker, daemon = (int(pid) for pid in host.line(120).split())
        os.kill(host.proc.pid, signal.SIGKILL)
        try:
            assert wait_gone(worker, 3.0)
            assert wait_gone(daemon, 3.0), "a daemon the env detached outlived the host"
        finally:
            kill_quietly(daemon)


# -- 15: timeouts poll() cannot take, spin windows that never end ----------------------------


def test_call_timeout_inf_is_no_limit_and_too_long_a_one_is_refused_with_words() -> None:
    assert check_options({"call_timeout": math.inf}).call_timeout is None
    assert check_options({"call_timeout": 2_000_000}).call_timeout == 2_000_000.0
    with pytest.raises(ValueError, match=r"call_timeout=10000000.0 is longer .*call_timeout=None"):
        check_options({"call_timeout": 1e7})


@sandbox
@faults
def test_a_slow_step_under_call_timeout_inf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLMESH_SPIN_US", "0")  # every wait goes through poll()
    with SandboxEnv(FAULTY, mode="sleep", factor=0.05, call_timeout=math.inf,
                    **TEST_ENVS) as env:  # fmt: skip
        env.reset()
        assert env.step(0)[1] == 1.0
        assert env.spec is not None and env.spec.kwargs["call_timeout"] is None
    with SandboxEnv(FAULTY, mode="sleep", factor=0.05, call_timeout=2_147_483,
                    **TEST_ENVS) as env:  # fmt: skip
        env.reset()
        assert env.step(0)[1] == 1.0


@pytest.mark.parametrize("value", ["inf", "nan", "-5", "1e9", "fast"])
def test_a_spin_window_that_is_not_one_is_refused_with_words(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RLMESH_SPIN_US", value)
    with pytest.raises(ValueError, match=r"RLMESH_SPIN_US=.* microseconds from 0"):
        Spinner(0)


@pytest.mark.parametrize("value", ["0", "250", " 100 "])
def test_good_spin_windows_still_work(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RLMESH_SPIN_US", value)
    assert Spinner(0).window == float(value) / 1e6


@sandbox
def test_an_endless_spin_window_fails_the_start_and_leaves_no_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RLMESH_SPIN_US", "inf")
    before = children()
    with pytest.raises(ValueError, match="RLMESH_SPIN_US='inf'"):
        SandboxEnv("CartPole-v1")
    assert children() == before


# -- 17: file descriptors ---------------------------------------------------------------------

FD_LIMIT = """
import os, resource, sys
from rlmesh.numpy import SandboxEnv
hard = int(sys.argv[1]) if sys.argv[1] != "tight" else None
spare = 6
limit = len(os.listdir("/proc/self/fd")) + spare
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard or limit))
for attempt in range(2):
    try:
        with SandboxEnv("CartPole-v1") as env:
            env.reset(seed=0)
        print("ok", resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)
    except Exception as exc:
        fds = len(os.listdir("/proc/self/fd"))
        print("failed", fds, type(exc).__name__, str(exc).splitlines()[0], flush=True)
"""


@sandbox
@faults
def test_a_low_soft_fd_limit_is_raised_at_the_first_sandbox() -> None:
    with run_host(FD_LIMIT, "4096") as host:
        assert host.line(120).strip() == "ok 4096"
        assert host.line(60).strip() == "ok 4096"


@sandbox
@faults
def test_running_out_of_fds_is_a_startup_error_that_says_what_to_do_and_leaks_none() -> None:
    with run_host(FD_LIMIT, "tight") as host:
        first, second = host.line(120).split(maxsplit=3), host.line(60).split(maxsplit=3)
    assert first[0] == second[0] == "failed", (first, second)
    assert first[2] == second[2] == "SandboxStartupError"
    assert "ran out of file descriptors" in first[3] and "ulimit -n" in first[3]
    assert first[1] == second[1], "a failed start leaked file descriptors"


# -- 28: PYTHONHASHSEED -------------------------------------------------------------------

HASH_HOST = """
import os, sys
sys.path.insert(0, sys.argv[1])
import gymnasium as gym
import rlmesh_test_envs.hardening
from rlmesh.numpy import SandboxEnv
here = gym.make("rlmesh_hardening/HashOrder-v0").reset()[0].tolist()
with SandboxEnv("rlmesh_hardening/HashOrder-v0", packages=[sys.argv[1]],
                imports=["rlmesh_test_envs.hardening"]) as env:
    obs, info = env.reset()
print(here == obs.tolist(), here, obs.tolist(), flush=True)
print(os.getcwd() in info["sys_path"] or "" in info["sys_path"], flush=True)
print(any("shadow" in entry for entry in info["sys_path"]), flush=True)
"""


@sandbox
@faults
@pytest.mark.parametrize("seed", ["0", "12345"])
def test_the_sandbox_hashes_with_the_hosts_pythonhashseed(tmp_path: Path, seed: str) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    env = {"PYTHONHASHSEED": seed, "PYTHONPATH": str(shadow)}
    with run_host(HASH_HOST, ENVS_PACKAGE, env=env) as host:
        same = host.line(180)
        assert same.startswith("True"), same
        assert host.line(10).strip() == "False"  # no cwd on the worker's sys.path
        assert host.line(10).strip() == "False"  # and no PYTHONPATH
