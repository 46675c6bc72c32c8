"""Starting a sandbox: resolve the source, start a worker on a backend, handshake, make.

``start_sandbox`` is the one startup path (async; the sync faces call it through the shared
blocking portal): resolve the source, let the backend build or reuse the environment and
start the worker, check the handshake, make the env and rebuild its spaces on the host. What
comes back is a ``Sandbox``: the worker handle, its frame reader and what the host knows
about the env. Also here: the small reply and action helpers every face uses.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from .._backends import WorkerHandle, backend_for
from .._errors import (
    ProtocolError,
    RemoteEnvError,
    SandboxCrashedError,
    SandboxError,
    SandboxStartupError,
    SandboxTimeoutError,
    remote_hint,
)
from .._version import __version__
from .._wire import protocol as P
from .._wire.spaces import space_from_data
from .channels import async_channel
from .spec import SandboxSpec

__all__ = [
    "Sandbox",
    "SandboxInfo",
    "action_checker",
    "bad_action",
    "discard",
    "discard_all",
    "host_env_spec",
    "reply_values",
    "start_sandbox",
    "start_vector_sandboxes",
]

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


@dataclass(frozen=True)
class SandboxInfo:
    """What a started sandbox is (``env.sandbox`` on every face).

    Attributes:
        source: The source as requested.
        resolved_source: The source as resolved: an EnvHub branch or tag becomes its commit.
        backend: Where it runs (``"venv"`` or ``"container"``).
        venv_key: The cache key of its environment, where it has one.
        packages: What is installed in it, name -> version.
        container: For a container sandbox: ``engine``, ``image``, ``image_id``,
            ``image_python`` and the container's ``name``; empty otherwise.
    """

    source: str
    resolved_source: str
    backend: str
    venv_key: str | None
    packages: Mapping[str, str]
    container: Mapping[str, str] = field(default_factory=dict)


CONTAINER_DETAILS = ("engine", "image", "image_id", "image_python", "name")


@dataclass
class Sandbox:
    """A started sandbox and what the host knows about its environment."""

    spec: SandboxSpec
    child: WorkerHandle
    reader: P.FrameReader
    versions: dict[str, Any]
    observation_space: Any
    action_space: Any
    metadata: dict[str, Any]
    render_mode: str | None
    env_spec: dict[str, Any] | None
    info: SandboxInfo
    num_envs: int | None = None  # for vector envs: sub-envs in this sandbox


def _make_request(spec: SandboxSpec, source: Any, vector: dict[str, Any] | None) -> list[Any]:
    return [
        P.MAKE,
        {
            "source": dict(source),
            "imports": list(spec.options.imports),
            "render_mode": spec.options.render_mode,
            "kwargs": dict(spec.make_kwargs),
            "wrappers": list(spec.options.wrappers),
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

    Bounded by the ``startup_timeout`` option in all; on any failure the child is stopped.
    """
    name = label or spec.label
    options = spec.options
    backend = backend_for(options)
    child: WorkerHandle | None = None
    try:
        with anyio.fail_after(options.startup_timeout):
            # Host I/O (an EnvHub download): off the loop, and abandoned at the deadline.
            resolved = await anyio.to_thread.run_sync(
                spec.source.resolve, options, abandon_on_cancel=True
            )
            child = await backend.start(options, resolved, name)
            details = child.details
            info = SandboxInfo(
                source=spec.label,
                resolved_source=resolved.label or spec.label,
                backend=str(details.get("backend", backend.name)),
                venv_key=details.get("venv_key"),
                packages=dict(details.get("packages") or {}),
                container={k: str(details[k]) for k in CONTAINER_DETAILS if k in details},
            )
            return await _handshake(spec, child, resolved.request, vector, name, info)
    except TimeoutError:
        if child is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(child.stop, options.timeouts.abort_grace)
        raise SandboxTimeoutError(
            f"the sandbox for {name!r} was not ready within startup_timeout="
            f"{options.startup_timeout:g} s (this includes building its virtualenv, which a "
            "first start does); raise startup_timeout, or build it ahead with "
            f"'rlmesh sandbox prepare {spec.label}' and the same packages"
        ) from None
    except OSError as exc:
        if child is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(child.stop, options.timeouts.failed_start_grace)
        if exc.errno not in _OUT_OF_FDS:
            raise
        from .._backends.process import out_of_fds_hint

        raise SandboxStartupError(
            f"the sandbox for {name!r} could not start: {out_of_fds_hint()}", source=spec.label
        ) from exc
    except BaseException:
        if child is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(child.stop, options.timeouts.failed_start_grace)
        raise


async def _handshake(
    spec: SandboxSpec,
    child: WorkerHandle,
    source: Any,
    vector: dict[str, Any] | None,
    name: str,
    info: SandboxInfo,
) -> Sandbox:
    reader = P.FrameReader()
    channel = async_channel(child, reader)

    def failed(message: str) -> SandboxStartupError:
        return SandboxStartupError(
            f"the sandbox for {name!r} ({child.whom()}) failed to start: {message}",
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
        reply = await channel.request(encoder.encode(_make_request(spec, source, vector)), "make")
        if reply[0] != P.OK or len(reply) != 2 or not isinstance(reply[1], dict):
            P.raise_for_reply(reply, 2)
        made = reply[1]
        return Sandbox(
            spec=spec,
            child=child,
            reader=reader,
            versions=hello,
            observation_space=space_from_data(made["observation_space"]),
            action_space=space_from_data(made["action_space"]),
            metadata=dict(made.get("metadata") or {}),
            render_mode=made.get("render_mode"),
            env_spec=made.get("spec"),
            info=info,
            num_envs=made.get("num_envs"),
        )
    except RemoteEnvError as exc:
        hint = remote_hint(exc.remote_type, exc.remote_message).strip()
        raise failed(
            f"{exc.remote_type}: {exc.remote_message}\n{hint}\n{exc.remote_traceback}"
        ) from None
    except SandboxCrashedError as exc:
        raise failed(f"the worker exited ({exc.exit_code}) before it was ready") from None
    except (ProtocolError, KeyError, TypeError, ValueError) as exc:
        raise failed(f"bad startup reply: {exc}") from None
    finally:
        channel.close()  # the face that takes the sandbox reads through its own channel


async def start_vector_sandboxes(
    spec: SandboxSpec, workers: list[tuple[dict[str, Any], str]]
) -> list[Sandbox]:
    """Start one vector-env sandbox per worker (its vector request, its label), concurrently.

    They share one venv (built once). If any fails, the others are stopped.
    """
    started: list[Sandbox | None] = [None] * len(workers)

    async def start(index: int, vector: dict[str, Any], label: str) -> None:
        started[index] = await start_sandbox(spec, vector, label)

    try:
        async with anyio.create_task_group() as group:
            for index, (vector, label) in enumerate(workers):
                group.start_soon(start, index, vector, label)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            for sandbox in started:
                if sandbox is not None:
                    await anyio.to_thread.run_sync(
                        sandbox.child.stop, spec.options.timeouts.failed_start_grace
                    )
        inner = getattr(exc, "exceptions", None)  # a task group's exception group
        if inner:
            first = next((e for e in inner if isinstance(e, SandboxError)), inner[0])
            raise first from None
        raise
    return [sandbox for sandbox in started if sandbox is not None]


def discard(sandbox: Sandbox) -> None:
    """Stop a sandbox nobody will use (its start finished after the caller was interrupted)."""
    sandbox.child.stop(sandbox.spec.options.timeouts.failed_start_grace)


def discard_all(sandboxes: list[Sandbox]) -> None:
    """``discard`` each of them."""
    for sandbox in sandboxes:
        discard(sandbox)


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


def reply_values(message: list[Any], length: int) -> list[Any]:
    """Check an OK reply of ``length`` items (kind included) or raise what it stands for."""
    if message[0] == P.OK and len(message) == length:
        return message
    P.raise_for_reply(message, length)
    raise AssertionError("unreachable")
