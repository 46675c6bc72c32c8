"""The shared core of both faces: start a sandbox, describe it, and shape its messages.

``start_sandbox`` is the one startup path (async; the sync face calls it through the shared
blocking portal): pick the backend, build or reuse the environment, start the worker, check
the handshake, make the env and rebuild its spaces on the host. What comes back is a
``Sandbox``: the child process, its frame reader and what the host knows about the env.
Per-call work (encode a request, check the reply) is plain functions shared by both faces.
"""

from __future__ import annotations

import enum
import os
import sys
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from . import _protocol as P
from ._errors import (
    ProtocolError,
    RemoteEnvError,
    SandboxClosedError,
    SandboxCrashedError,
    SandboxError,
    SandboxStartupError,
    SandboxTimeoutError,
)
from ._process import ChildProcess, bwrap_command, spawn_worker
from ._spaces import space_from_data
from ._spec import GymSource, SandboxSpec
from ._transport import AsyncChannel
from ._venv import ensure_venv
from ._version import __version__

__all__ = ["Sandbox", "State", "action_checker", "host_env_spec", "start_sandbox"]

CLOSE_TIMEOUT = 10.0  # how long env.close() in the sandbox may take before we stop it


class State(enum.Enum):
    """Lifecycle of a sandbox env."""

    CREATED = "created"  # options checked, nothing started
    READY = "ready"
    CLOSED = "closed"
    BROKEN = "broken"  # the child died, timed out or spoke nonsense; only close() is left


@dataclass
class Sandbox:
    """A started sandbox and what the host knows about its environment."""

    spec: SandboxSpec
    child: ChildProcess
    reader: P.FrameReader
    versions: dict[str, Any]
    observation_space: Any
    action_space: Any
    metadata: dict[str, Any]
    render_mode: str | None
    env_spec: dict[str, Any] | None
    num_envs: int | None = None  # for vector envs: sub-envs in this sandbox


def _child_env(venv_path: str) -> dict[str, str]:
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = venv_path
    env["PATH"] = os.pathsep.join([os.path.join(venv_path, "bin"), env.get("PATH", "")])
    env.pop("PYTHONHOME", None)
    return env


def _make_request(spec: SandboxSpec, vector: dict[str, Any] | None) -> list[Any]:
    return [
        P.MAKE,
        {
            "source": spec.source.worker_request(),
            "imports": list(spec.imports),
            "render_mode": spec.render_mode,
            "kwargs": dict(spec.make_kwargs),
            "vector": vector,
        },
    ]


async def start_sandbox(
    spec: SandboxSpec, vector: dict[str, Any] | None = None, label: str | None = None
) -> Sandbox:
    """Build (or reuse) the sandbox for ``spec``, start its worker and make the env.

    Args:
        spec: The validated options.
        vector: For a vector env: ``num_envs``, ``vectorization_mode``, ``autoreset_mode``.
        label: How messages name this sandbox (default: the source).

    Bounded by ``spec.startup_timeout`` in all; on any failure the child is stopped.
    """
    name = label or spec.label
    if spec.base_image is not None:
        raise NotImplementedError(
            "the Docker backend (base_image=...) is not available yet; leave base_image unset "
            "to run the environment in a uv virtualenv"
        )
    if not isinstance(spec.source, GymSource):
        raise NotImplementedError(
            f"{spec.label!r}: Hugging Face EnvHub sources are not supported yet; use a Gymnasium id"
        )
    wrapper: list[str] = []
    if spec.isolation == "bwrap":
        wrapper = bwrap_command()  # checked before the build: a missing bwrap fails fast
    worker_args: list[str] = []
    if spec.max_memory is not None:
        worker_args += ["--max-memory", str(spec.max_memory)]
    if spec.max_cpu_seconds is not None:
        worker_args += ["--max-cpu-seconds", str(spec.max_cpu_seconds)]
    child: ChildProcess | None = None
    try:
        with anyio.fail_after(spec.startup_timeout):
            venv = await ensure_venv(spec)
            if wrapper:
                keep = [str(venv.path), os.path.realpath(sys.base_prefix)]
                wrapper = bwrap_command([p for p in keep if p.startswith("/tmp")])
            try:  # the child inherits the venv's in-use lock, so no prune removes it meanwhile
                child = await anyio.to_thread.run_sync(
                    lambda: spawn_worker(
                        venv.python,
                        label=name,
                        env=_child_env(str(venv.path)),
                        keep_fds=(venv.in_use_fd,),
                        worker_args=worker_args,
                        wrapper=wrapper,
                    )
                )
            finally:
                os.close(venv.in_use_fd)
            return await _handshake(spec, child, vector, name)
    except TimeoutError:
        if child is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(child.stop, 0.5)
        raise SandboxTimeoutError(
            f"the sandbox for {name!r} was not ready within startup_timeout="
            f"{spec.startup_timeout:g} s (this includes building its virtualenv)"
        ) from None
    except BaseException:
        if child is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(child.stop, 1.0)
        raise


async def _handshake(
    spec: SandboxSpec, child: ChildProcess, vector: dict[str, Any] | None, name: str
) -> Sandbox:
    reader = P.FrameReader()
    channel = AsyncChannel(child, reader)

    def failed(message: str) -> SandboxStartupError:
        return SandboxStartupError(
            f"the sandbox for {name!r} (pid {child.pid}) failed to start: {message}",
            source=spec.label,
            pid=child.pid,
            stderr_tail=child.output_tail(),
        )

    try:
        hello = P.check_hello(await channel.receive_unprompted("startup"))
        mismatch = P.version_mismatch(hello, host_rlmesh=__version__)
        if mismatch:
            raise failed(mismatch)
        encoder = P.RequestEncoder()
        reply = await channel.request(encoder.encode(_make_request(spec, vector)), "make")
        if reply[0] != P.OK or len(reply) != 2 or not isinstance(reply[1], dict):
            P.raise_for_reply(reply, 2)
        info = reply[1]
        return Sandbox(
            spec=spec,
            child=child,
            reader=reader,
            versions=hello,
            observation_space=space_from_data(info["observation_space"]),
            action_space=space_from_data(info["action_space"]),
            metadata=dict(info.get("metadata") or {}),
            render_mode=info.get("render_mode"),
            env_spec=info.get("spec"),
            num_envs=info.get("num_envs"),
        )
    except RemoteEnvError as exc:
        raise failed(f"{exc.remote_type}: {exc.remote_message}\n{exc.remote_traceback}") from None
    except SandboxCrashedError as exc:
        raise failed(f"the worker exited ({exc.exit_code}) before it was ready") from None
    except (ProtocolError, KeyError, TypeError, ValueError) as exc:
        raise failed(f"bad startup reply: {exc}") from None
    finally:
        channel.close()  # the face that takes the sandbox reads through its own channel


async def start_vector_sandboxes(
    spec: SandboxSpec, sizes: list[int], vectorization_mode: str, autoreset_mode: str | None
) -> list[Sandbox]:
    """Start one vector-env sandbox per entry of ``sizes`` (sub-envs each), concurrently.

    They share one venv (built once). If any fails, the others are stopped.
    """
    started: list[Sandbox | None] = [None] * len(sizes)

    async def start(index: int, size: int) -> None:
        vector = {
            "num_envs": size,
            "vectorization_mode": vectorization_mode,
            "autoreset_mode": autoreset_mode,
        }
        label = spec.label if len(sizes) == 1 else f"{spec.label} [worker {index}/{len(sizes)}]"
        started[index] = await start_sandbox(spec, vector, label)

    try:
        async with anyio.create_task_group() as group:
            for index, size in enumerate(sizes):
                group.start_soon(start, index, size)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            for sandbox in started:
                if sandbox is not None:
                    await anyio.to_thread.run_sync(sandbox.child.stop, 1.0)
        inner = getattr(exc, "exceptions", None)  # a task group's exception group
        if inner:
            first = next((e for e in inner if isinstance(e, SandboxError)), inner[0])
            raise first from None
        raise
    return [sandbox for sandbox in started if sandbox is not None]


_Face = TypeVar("_Face", bound="AsyncFace")


class AsyncFace:
    """Lifecycle plumbing shared by the async faces: ``create``, ``async with``."""

    _state: State

    def __init__(self, source: str, **options: Any) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    @classmethod
    async def create(cls: type[_Face], source: str, **options: Any) -> _Face:
        """Build (or reuse) the sandbox and start it; takes the constructor's options."""
        env = cls(source, **options)
        await env.start()
        return env

    async def __aenter__(self: _Face) -> _Face:
        if self._state is State.CREATED:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def host_env_spec(sandbox: Sandbox) -> EnvSpec | None:
    """An ``EnvSpec`` whose ``make()`` builds another sandbox like this one."""
    data = sandbox.env_spec or {}
    env_id = data.get("id") or "RLMeshSandbox-v0"
    try:
        return EnvSpec(
            id=env_id,
            entry_point="rlmesh.numpy:SandboxEnv",
            reward_threshold=data.get("reward_threshold"),
            nondeterministic=bool(data.get("nondeterministic", False)),
            max_episode_steps=data.get("max_episode_steps"),
            order_enforce=True,
            disable_env_checker=True,
            kwargs=sandbox.spec.factory_kwargs(),
        )
    except Exception:  # an id our gymnasium rejects: the spec is informative only
        return None


def action_checker(space: Any) -> Any:
    """A fast ``contains`` for the action space (Discrete is checked on every step)."""
    if type(space) is spaces.Discrete:
        start, stop = int(space.start), int(space.start + space.n)
        integer = np.integer

        def contains_discrete(action: Any) -> bool:
            if type(action) is int or isinstance(action, integer):
                return bool(start <= action < stop)
            return bool(space.contains(action))

        return contains_discrete
    return space.contains


def bad_action(sandbox: Sandbox, action: Any) -> ValueError:
    """The error for an action outside the action space."""
    text = repr(action)
    if len(text) > 200:
        text = text[:200] + "..."
    return ValueError(
        f"action {text} (type {type(action).__name__}) is not in the action space "
        f"{sandbox.action_space} of {sandbox.spec.label!r}; env.action_space.sample() gives a "
        "valid one"
    )


def closed_error(label: str, state: State, reason: str | None) -> SandboxClosedError:
    """The error for a call on a sandbox that is not ready."""
    if state is State.CREATED:
        return SandboxClosedError(
            f"the sandbox for {label!r} is not started; use 'await AsyncSandboxEnv.create(...)' "
            "or 'async with AsyncSandboxEnv(...) as env'"
        )
    why = f": {reason}" if reason else ""
    return SandboxClosedError(f"the sandbox for {label!r} is {state.value}{why}")


def is_fatal(exc: BaseException) -> bool:
    """Whether an error leaves the sandbox unusable (the env's own errors do not)."""
    return isinstance(exc, SandboxError) and not isinstance(exc, RemoteEnvError)


def reply_values(message: list[Any], length: int) -> list[Any]:
    """Check an OK reply of ``length`` items (kind included) or raise what it stands for."""
    if message[0] == P.OK and len(message) == length:
        return message
    P.raise_for_reply(message, length)
    raise AssertionError("unreachable")
