"""The single-env faces: ``SandboxEnv`` (a real ``gymnasium.Env``) and ``AsyncSandboxEnv``.

Side by side, over one ``EnvCore`` each (lifecycle, frames, reply checks, failure booking):
they differ only where they wait. ``SandboxEnv`` starts and restarts its sandbox through the
shared blocking portal and does every per-call exchange with blocking pipe I/O
(``BlockingChannel``), because a portal hop per call would cost more than the sandboxed step
itself. ``AsyncSandboxEnv`` awaits everything on the caller's loop (asyncio or trio).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import anyio
import gymnasium as gym
from gymnasium import spaces

from ._core.channels import AsyncChannel, async_channel, blocking_channel
from ._core.face import AsyncFace, SingleFace, public_face
from ._core.lifecycle import State, reraise
from ._core.portal import portal_call
from ._core.single import EnvCore
from ._core.spec import spec_from_arguments
from ._core.startup import bad_action, discard, reply_values, start_sandbox
from ._errors import SandboxError
from ._wire import protocol as P
from ._wire.spaces import OpaqueSpace

__all__ = ["AsyncSandboxEnv", "SandboxEnv"]

_READY, _OK = State.READY, P.OK
_ASYNC_HINT = "use 'await AsyncSandboxEnv.create(...)' or 'async with AsyncSandboxEnv(...) as env'"


@public_face(vector=False)
class SandboxEnv(SingleFace, gym.Env[Any, Any]):
    """A Gymnasium environment running in its own sandbox process.

    A real ``gymnasium.Env``: use it with wrappers, ``check_env`` and training code as usual.
    The constructor builds (or reuses) the sandbox and makes the env; ``close()`` stops it.
    Safe to call from several threads (calls are serialised).

    {options}
    """

    _core: EnvCore

    def __init__(self, source: str, **options: Any) -> None:
        core = self._core = EnvCore(spec_from_arguments(source, options, vector=False), "")
        self._install(portal_call(start_sandbox, core.spec, undo=discard))
        sandbox = core.started()
        self.observation_space = sandbox.observation_space
        self.action_space = sandbox.action_space
        self._metadata = sandbox.metadata
        self.render_mode = sandbox.render_mode
        self.spec = core.env_spec
        self._wire_opaque(self.action_space, "action")
        self._wire_opaque(self.observation_space, "observation")

    def _install(self, sandbox: Any) -> None:
        core = self._core
        core.install(self, sandbox)
        self._life = core.life
        self._channel = blocking_channel(sandbox.child, sandbox.reader)
        self._request = self._channel.request_frame
        self._step_frames = core.step_frames
        self._timeout = core.timeouts.call

    def _restart(self) -> None:
        """Replace a broken sandbox with a fresh one (``auto_restart``)."""
        core = self._core
        core.started().child.stop(core.timeouts.abort_grace)
        core.detach()
        self._install(portal_call(start_sandbox, core.spec, undo=discard))

    def _wire_opaque(self, space: Any, which: str, path: tuple[str | int, ...] = ()) -> None:
        """Let opaque spaces (also inside ``Dict``, ``Tuple`` and ``OneOf``) check and sample
        through the sandbox; ``path`` leads from the env's space to ``space``."""
        if isinstance(space, spaces.Dict):
            for key, sub in space.spaces.items():
                self._wire_opaque(sub, which, (*path, key))
            return
        if isinstance(space, (spaces.Tuple, spaces.OneOf)):
            for index, sub in enumerate(space.spaces):
                self._wire_opaque(sub, which, (*path, index))
            return
        if not isinstance(space, OpaqueSpace):
            return
        ref = weakref.ref(self)
        where = which + "".join(f"[{key!r}]" for key in path)
        tail = [list(path)] if path else []  # the top-level space: the original request

        def sample() -> Any:
            env = ref()
            if env is None:
                raise SandboxError("the sandbox env of this space is gone")
            return env._call([P.SPACE_SAMPLE, which, *tail], f"{where}_space.sample()", 2)[1]

        def contains(value: Any) -> bool:
            env = ref()
            if env is None:
                raise SandboxError("the sandbox env of this space is gone")
            request = [P.SPACE_CONTAINS, which, value, *tail]
            return bool(env._call(request, f"{where}_space.contains()", 2)[1])

        space.remote_sample = sample
        space.remote_contains = contains

    @property
    def metadata(self) -> dict[str, Any]:
        """The env's ``metadata`` as the sandbox reports it.

        A property, so ``gymnasium.make(env.spec, render_mode=...)`` reads the render modes
        of the instance rather than the (empty) class-level default.
        """
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        self._metadata = value

    @property
    def pid(self) -> int | None:
        """The sandbox process id."""
        return self._core.started().child.pid

    def _call(self, message: list[Any], what: str, length: int) -> list[Any]:
        core = self._core
        core.life.check_ready()
        try:
            return reply_values(self._request(core.frame(message), what, self._timeout), length)
        except SandboxError as exc:
            reraise(core.failed(exc, what), exc)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env in the sandbox; returns ``(observation, info)``."""
        super().reset(seed=seed)
        restarted = self._core.life.wants_restart()
        if restarted:
            self._restart()
        reply = self._call([P.RESET, seed, options], "reset()", 3)
        if restarted:
            return reply[1], {**reply[2], "rlmesh_restarted": True}
        return reply[1], reply[2]

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step the env in the sandbox; returns the usual 5-tuple.

        Raises:
            ValueError: ``action`` is not in ``action_space`` (nothing is sent).
        """
        # The hot path: _call inlined (one Python frame less per step). An int action with
        # a cached frame was checked against the action space when the frame was made.
        frame = self._step_frames.get(action) if type(action) is int else None
        if frame is None:
            frame = self._core.step_frame(action)
        if self._life.state is not _READY:
            raise self._life.closed_error()
        try:
            reply = self._request(frame, "step()", self._timeout)
            if reply[0] != _OK or len(reply) != 6:
                reply_values(reply, 6)
        except SandboxError as exc:
            reraise(self._core.failed(exc, "step()"), exc)
        return reply[1], reply[2], reply[3], reply[4], reply[5]

    def render(self) -> Any:
        """Render in the sandbox (``rgb_array``: HxWx3 uint8 array; ``ansi``: str)."""
        return self._call([P.RENDER], "render()", 2)[1]

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the env's method ``name`` in the sandbox (its value if it is no method).

        Found as Gymnasium's ``get_wrapper_attr`` finds it: on the outermost wrapper that has
        it. The arguments travel as requests do; the result comes back safely encoded.
        """
        return self._call([P.CALL, name, list(args), dict(kwargs)], f"call({name!r})", 2)[1]

    def get_attr(self, name: str) -> Any:
        """The env's attribute ``name`` in the sandbox (``get_wrapper_attr``)."""
        return self._call([P.GET_ATTR, name], f"get_attr({name!r})", 2)[1]

    def set_attr(self, name: str, value: Any) -> None:
        """Set the env's attribute ``name`` in the sandbox (``set_wrapper_attr``)."""
        self._call([P.SET_ATTR, name, value], f"set_attr({name!r})", 1)

    def close(self) -> None:
        """Close the env and stop the sandbox. Idempotent; safe after a failure."""
        core: EnvCore | None = getattr(self, "_core", None)
        if core is None or core.sandbox is None:  # the constructor failed
            return
        before = core.begin_close()
        if before is State.CLOSED:
            return
        child = core.sandbox.child
        if before is State.READY:
            with contextlib.suppress(SandboxError):  # stop() below makes sure
                goodbye = core.encode([P.CLOSE])
                close = core.timeouts.close
                if self._channel.try_request(goodbye, "close()", close) is None:
                    child.kill()  # another thread waits on a call: end it, then let it finish
                    self._channel.wait_idle(close)
        child.stop()
        core.detach()

    def __repr__(self) -> str:
        core = self._core
        pid = "" if core.sandbox is None else f" pid={core.sandbox.child.pid}"
        return f"<SandboxEnv {core.spec.label!r} {core.life.state.value}{pid}>"


@public_face(vector=False)
class AsyncSandboxEnv(SingleFace, AsyncFace):
    """A Gymnasium environment running in its own sandbox process, driven with ``await``.

    Start it with ``env = await AsyncSandboxEnv.create(...)`` or ``async with
    AsyncSandboxEnv(...) as env``. Spaces, ``metadata``, ``render_mode`` and ``spec`` are
    available once it is started. Works on asyncio and trio.

    {options}
    """

    _core: EnvCore

    def __init__(self, source: str, **options: Any) -> None:
        self._core = EnvCore(spec_from_arguments(source, options, vector=False), _ASYNC_HINT)
        self._life = self._core.life
        self._channel: AsyncChannel | None = None

    async def start(self) -> None:
        """Start the sandbox of an env built with the constructor (``create`` does this)."""
        self._life.check_startable()
        self._install(await start_sandbox(self._core.spec))

    def _install(self, sandbox: Any) -> None:
        self._core.install(self, sandbox)
        self._channel = async_channel(sandbox.child, sandbox.reader)

    async def _restart(self) -> None:
        """Replace a broken sandbox with a fresh one (``auto_restart``)."""
        core = self._core
        old = core.started()
        if self._channel is not None:
            self._channel.close()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(old.child.stop, core.timeouts.abort_grace)
        core.detach()
        self._install(await start_sandbox(core.spec))

    # -- what the host knows -------------------------------------------------------------

    @property
    def observation_space(self) -> Any:
        """The observation space, rebuilt on the host."""
        return self._core.started().observation_space

    @property
    def action_space(self) -> Any:
        """The action space, rebuilt on the host."""
        return self._core.started().action_space

    @property
    def metadata(self) -> dict[str, Any]:
        """The env's ``metadata`` as the sandbox reports it."""
        return self._core.started().metadata

    @property
    def render_mode(self) -> str | None:
        return self._core.started().render_mode

    @property
    def spec(self) -> Any:
        """An ``EnvSpec`` whose ``make()`` builds an equivalent ``SandboxEnv``."""
        self._core.started()
        return self._core.env_spec

    @property
    def pid(self) -> int | None:
        """The sandbox process id, once started."""
        sandbox = self._core.sandbox
        return None if sandbox is None else sandbox.child.pid

    # -- calls -----------------------------------------------------------------------------

    async def _call(self, message: list[Any], what: str, length: int) -> list[Any]:
        core = self._core
        core.life.check_ready()
        assert self._channel is not None
        try:
            reply = await self._channel.request(core.encode(message), what, core.timeouts.call)
            return reply_values(reply, length)
        except SandboxError as exc:
            reraise(core.failed(exc, what), exc)

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env; returns ``(observation, info)``."""
        restarted = self._life.wants_restart()
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
        core = self._core
        if core.contains is not None and not core.contains(action):
            raise bad_action(core.started(), action)
        reply = await self._call([P.STEP, action], "step()", 6)
        return reply[1], reply[2], reply[3], reply[4], reply[5]

    async def render(self) -> Any:
        """Render the env (an ``HxWx3`` uint8 array for ``rgb_array``, a str for ``ansi``)."""
        return (await self._call([P.RENDER], "render()", 2))[1]

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the env's method ``name`` in the sandbox; see ``SandboxEnv.call``."""
        message = [P.CALL, name, list(args), dict(kwargs)]
        return (await self._call(message, f"call({name!r})", 2))[1]

    async def get_attr(self, name: str) -> Any:
        """The env's attribute ``name`` in the sandbox (``get_wrapper_attr``)."""
        return (await self._call([P.GET_ATTR, name], f"get_attr({name!r})", 2))[1]

    async def set_attr(self, name: str, value: Any) -> None:
        """Set the env's attribute ``name`` in the sandbox (``set_wrapper_attr``)."""
        await self._call([P.SET_ATTR, name, value], f"set_attr({name!r})", 1)

    async def aclose(self) -> None:
        """Close the env and stop the sandbox. Idempotent; safe after a failure."""
        core = self._core
        before = core.begin_close()
        if before in (State.CLOSED, State.CREATED):
            return
        sandbox, channel = core.started(), self._channel
        assert channel is not None
        with anyio.CancelScope(shield=True):
            if before is State.READY and channel.busy:
                sandbox.child.kill()  # another task waits on a call: end it, let it finish
                with anyio.move_on_after(core.timeouts.close):
                    await channel.wait_idle()
            elif before is State.READY:
                with contextlib.suppress(SandboxError):  # stop() below makes sure
                    goodbye = core.encode([P.CLOSE])
                    await channel.request(goodbye, "close()", core.timeouts.close)
            channel.close()
            await anyio.to_thread.run_sync(sandbox.child.stop)
            core.detach()

    def __repr__(self) -> str:
        pid = f" pid={self.pid}" if self.pid else ""
        return f"<AsyncSandboxEnv {self._core.spec.label!r} {self._life.state.value}{pid}>"
