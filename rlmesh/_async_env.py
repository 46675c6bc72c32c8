"""``AsyncSandboxEnv``: the async face, for rollout loops on asyncio or trio (via anyio)."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import anyio

from . import _protocol as P
from ._errors import SandboxClosedError, SandboxError
from ._sandbox import (
    CLOSE_TIMEOUT,
    AsyncFace,
    Sandbox,
    State,
    action_checker,
    bad_action,
    closed_error,
    host_env_spec,
    is_fatal,
    reply_values,
    start_sandbox,
)
from ._spec import DEFAULT_STARTUP_TIMEOUT, spec_from_arguments
from ._transport import AsyncChannel

__all__ = ["AsyncSandboxEnv"]


class AsyncSandboxEnv(AsyncFace):
    """A Gymnasium environment running in its own sandbox process, driven with ``await``.

    Start it with ``env = await AsyncSandboxEnv.create(...)`` or ``async with
    AsyncSandboxEnv(...) as env``. Spaces, ``metadata``, ``render_mode`` and ``spec`` are
    available once it is started. Works on asyncio and trio.

    Args:
        source: A Gymnasium id (``"CartPole-v1"``, ``"gym://CartPole-v1"``,
            ``"ALE/Pong-v5"``, ``"my_pkg.envs:MyEnv-v0"``).
        packages: Requirements installed into the sandbox (``["gymnasium==1.3.0"]``). Without a
            gymnasium entry the sandbox gets the host's gymnasium version.
        imports: Modules imported in the sandbox before the env is made (to register it).
        render_mode: Passed to ``gymnasium.make``.
        base_image: Docker image for the container backend (not available yet).
        rlmesh_package: The rlmesh installed in the sandbox: ``"local"`` (newest wheel in
            ``dist/``), a wheel path or a pip specifier. Default: the host's own rlmesh.
        trust_remote_code: Allow sources that run repository code (EnvHub).
        allow_unpinned_hf: Allow EnvHub sources not pinned to a full commit sha.
        startup_timeout: Seconds for build plus startup before ``SandboxTimeoutError``.
        call_timeout: Seconds each call may take (``None``: no limit); on expiry the sandbox
            is stopped and ``SandboxTimeoutError`` raised.
        isolation: ``None`` (a plain child process: crash isolation, not a security boundary)
            or ``"bwrap"`` (bubblewrap: no network, read-only filesystem but a scratch
            ``/tmp``, own PID namespace, dies with the host).
        max_memory: Address-space limit of the sandbox process in bytes (``RLIMIT_AS``).
        max_cpu_seconds: CPU-time limit of the sandbox process (``RLIMIT_CPU``).
        auto_restart: After a crash or timeout, the next ``reset()`` starts a fresh sandbox
            and reports ``info["rlmesh_restarted"] = True`` instead of raising.
        **gym_make_kwargs: Forwarded to ``gymnasium.make`` in the sandbox.
    """

    def __init__(
        self,
        source: str,
        *,
        packages: list[str] | tuple[str, ...] = (),
        imports: list[str] | tuple[str, ...] = (),
        render_mode: str | None = None,
        base_image: str | None = None,
        rlmesh_package: str | None = None,
        trust_remote_code: bool = False,
        allow_unpinned_hf: bool = False,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        call_timeout: float | None = None,
        isolation: str | None = None,
        max_memory: int | None = None,
        max_cpu_seconds: int | None = None,
        auto_restart: bool = False,
        **gym_make_kwargs: Any,
    ) -> None:
        self._spec = spec_from_arguments(source, locals())
        self._state = State.CREATED
        self._reason: str | None = None
        self._sandbox: Sandbox | None = None
        self._channel: AsyncChannel | None = None
        self._encoder = P.RequestEncoder()
        self._contains: Any = None
        self._timeout = self._spec.call_timeout
        self.restarts = 0  # sandboxes replaced by auto_restart

    async def start(self) -> None:
        """Start the sandbox of an env built with the constructor (``create`` does this)."""
        if self._state is not State.CREATED:
            raise closed_error(self._spec.label, self._state, "start() was already called")
        sandbox = await start_sandbox(self._spec)
        self._sandbox = sandbox
        self._channel = AsyncChannel(sandbox.child, sandbox.reader)
        self._contains = action_checker(sandbox.action_space)
        self._env_spec = host_env_spec(sandbox)
        self._finalizer = weakref.finalize(self, sandbox.child.abandon)
        self._state = State.READY

    async def _restart(self) -> None:
        """Replace a broken sandbox with a fresh one (``auto_restart``)."""
        old = self._started()
        if self._channel is not None:
            self._channel.close()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(old.child.stop, 0.5)
        self._finalizer.detach()
        sandbox = await start_sandbox(self._spec)
        self._sandbox = sandbox
        self._channel = AsyncChannel(sandbox.child, sandbox.reader)
        self._finalizer = weakref.finalize(self, sandbox.child.abandon)
        self._state, self._reason = State.READY, None
        self.restarts += 1

    # -- what the host knows -------------------------------------------------------------

    def _started(self) -> Sandbox:
        if self._sandbox is None:
            raise closed_error(self._spec.label, self._state, None)
        return self._sandbox

    @property
    def observation_space(self) -> Any:
        """The observation space, rebuilt on the host."""
        return self._started().observation_space

    @property
    def action_space(self) -> Any:
        """The action space, rebuilt on the host."""
        return self._started().action_space

    @property
    def metadata(self) -> dict[str, Any]:
        """The env's ``metadata`` as the sandbox reports it."""
        return self._started().metadata

    @property
    def render_mode(self) -> str | None:
        return self._started().render_mode

    @property
    def spec(self) -> Any:
        """An ``EnvSpec`` whose ``make()`` builds an equivalent ``SandboxEnv``."""
        self._started()
        return self._env_spec

    @property
    def state(self) -> State:
        """``created``, ``ready``, ``closed`` or ``broken``."""
        return self._state

    @property
    def pid(self) -> int | None:
        """The sandbox process id, once started."""
        return None if self._sandbox is None else self._sandbox.child.pid

    @property
    def sandbox_versions(self) -> dict[str, Any]:
        """Versions the sandbox reported in its handshake (rlmesh, python, gymnasium, numpy)."""
        return dict(self._started().versions)

    # -- calls -----------------------------------------------------------------------------

    async def _call(self, message: list[Any], what: str, length: int) -> list[Any]:
        if self._state is not State.READY:
            raise closed_error(self._spec.label, self._state, self._reason)
        assert self._channel is not None
        try:
            reply = await self._channel.request(self._encoder.encode(message), what, self._timeout)
            return reply_values(reply, length)
        except SandboxError as exc:
            if self.state is State.CLOSED:  # aclose() from another task ended this call
                raise SandboxClosedError(
                    f"the sandbox for {self._spec.label!r} was closed while {what} was in flight"
                ) from exc
            if is_fatal(exc):
                self._break(exc)
            raise

    def _break(self, exc: BaseException) -> None:
        self._state = State.BROKEN
        self._reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        if self._sandbox is not None:
            self._sandbox.child.abandon()

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env; returns ``(observation, info)``."""
        restarted = self._state is State.BROKEN and self._spec.auto_restart
        if restarted:
            await self._restart()
        reply = await self._call([P.RESET, seed, options], "reset()", 3)
        if restarted:
            return reply[1], {**reply[2], "rlmesh_restarted": True}
        return reply[1], reply[2]

    async def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step the env; returns ``(observation, reward, terminated, truncated, info)``.

        Raises:
            ValueError: ``action`` is not in ``action_space`` (nothing is sent).
        """
        if self._contains is not None and not self._contains(action):
            raise bad_action(self._started(), action)
        reply = await self._call([P.STEP, action], "step()", 6)
        return reply[1], reply[2], reply[3], reply[4], reply[5]

    async def render(self) -> Any:
        """Render the env (an ``HxWx3`` uint8 array for ``rgb_array``, a str for ``ansi``)."""
        return (await self._call([P.RENDER], "render()", 2))[1]

    async def aclose(self) -> None:
        """Close the env and stop the sandbox. Idempotent; safe after a failure."""
        if self._state in (State.CLOSED, State.CREATED):
            self._state = State.CLOSED
            return
        sandbox = self._sandbox
        assert sandbox is not None and self._channel is not None
        channel, state = self._channel, self._state
        self._state = State.CLOSED  # first: a call in flight in another task then says "closed"
        with anyio.CancelScope(shield=True):
            if state is State.READY and channel.busy:
                sandbox.child.kill()  # another task waits on a call: end it, let it finish
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    await channel.wait_idle()
            elif state is State.READY:
                with contextlib.suppress(SandboxError):  # stop() below makes sure
                    goodbye = self._encoder.encode([P.CLOSE])
                    await channel.request(goodbye, "close()", CLOSE_TIMEOUT)
            channel.close()
            await anyio.to_thread.run_sync(sandbox.child.stop)
            self._finalizer.detach()

    def __repr__(self) -> str:
        pid = f" pid={self.pid}" if self.pid else ""
        return f"<AsyncSandboxEnv {self._spec.label!r} {self._state.value}{pid}>"
