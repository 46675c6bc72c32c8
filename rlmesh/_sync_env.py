"""``SandboxEnv``: a real ``gymnasium.Env`` over the same core as ``AsyncSandboxEnv``.

Startup and shutdown of the sandbox run through the shared blocking portal (``_portal``);
``reset``/``step``/``render`` talk to the child with blocking pipe I/O directly, because a
portal hop per call would cost more than the sandboxed step itself.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import gymnasium as gym

from . import _protocol as P
from ._errors import SandboxClosedError, SandboxError
from ._portal import portal_call
from ._sandbox import (
    CLOSE_TIMEOUT,
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
from ._spaces import OpaqueSpace
from ._spec import DEFAULT_STARTUP_TIMEOUT, spec_from_arguments
from ._transport import BlockingChannel

__all__ = ["SandboxEnv"]

_READY, _OK = State.READY, P.OK


class SandboxEnv(gym.Env[Any, Any]):
    """A Gymnasium environment running in its own sandbox process.

    A real ``gymnasium.Env``: use it with wrappers, ``check_env`` and training code as usual.
    The constructor builds (or reuses) the sandbox and makes the env; ``close()`` stops it.
    Safe to call from several threads (calls are serialised).

    Takes the same arguments as ``AsyncSandboxEnv``; see there.
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
        self._state = State.CREATED
        spec = spec_from_arguments(source, locals())
        self._spec_options = spec
        self._label = spec.label
        self._reason: str | None = None
        self.restarts = 0
        sandbox: Sandbox = portal_call(start_sandbox, spec)
        self._install(sandbox)
        self._encode = P.RequestEncoder().encode
        self._timeout = spec.call_timeout
        self._contains = action_checker(sandbox.action_space)
        self.observation_space = sandbox.observation_space
        self.action_space = sandbox.action_space
        self._metadata = sandbox.metadata
        self.render_mode = sandbox.render_mode
        self.spec = host_env_spec(sandbox)
        self._wire_opaque(self.action_space, "action")
        self._wire_opaque(self.observation_space, "observation")
        self._state = State.READY

    def _install(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._channel = BlockingChannel(sandbox.child, sandbox.reader)
        self._request = self._channel.request_frame
        self._step_frames: dict[int, bytes] = {}  # int action -> its STEP frame
        self._finalizer = weakref.finalize(self, sandbox.child.abandon)

    def _restart(self) -> None:
        """Replace a broken sandbox with a fresh one (``auto_restart``)."""
        self._sandbox.child.stop(0.5)
        self._finalizer.detach()
        self._install(portal_call(start_sandbox, self._spec_options))
        self._state, self._reason = State.READY, None
        self.restarts += 1

    def _wire_opaque(self, space: Any, which: str) -> None:
        if not isinstance(space, OpaqueSpace):
            return
        ref = weakref.ref(self)

        def sample() -> Any:
            env = ref()
            if env is None:
                raise SandboxError("the sandbox env of this space is gone")
            return env._call([P.SPACE_SAMPLE, which], f"{which}_space.sample()", 2)[1]

        def contains(value: Any) -> bool:
            env = ref()
            if env is None:
                raise SandboxError("the sandbox env of this space is gone")
            reply = env._call([P.SPACE_CONTAINS, which, value], f"{which}_space.contains()", 2)
            return bool(reply[1])

        space.remote_sample = sample
        space.remote_contains = contains

    @property  # type: ignore[override]
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
    def state(self) -> State:
        """``ready``, ``closed`` or ``broken``."""
        return self._state

    @property
    def pid(self) -> int:
        """The sandbox process id."""
        return self._sandbox.child.pid

    @property
    def sandbox_versions(self) -> dict[str, Any]:
        """Versions the sandbox reported in its handshake (rlmesh, python, gymnasium, numpy)."""
        return dict(self._sandbox.versions)

    def _call(self, message: list[Any], what: str, length: int) -> list[Any]:
        if self._state is not State.READY:
            raise closed_error(self._label, self._state, self._reason)
        try:
            reply = self._channel.request(self._encode(message), what, self._timeout)
            return reply_values(reply, length)
        except SandboxError as exc:
            error = self._failed(exc, what)
            if error is exc:
                raise
            raise error from exc

    def _failed(self, exc: SandboxError, what: str) -> SandboxError:
        """Book a failed call; return what to raise for it."""
        if self._state is State.CLOSED:  # close() from another thread ended this call
            return SandboxClosedError(
                f"the sandbox for {self._label!r} was closed while {what} was in flight"
            )
        if is_fatal(exc):
            self._state = State.BROKEN
            self._reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            self._sandbox.child.abandon()
        return exc

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env in the sandbox; returns ``(observation, info)``."""
        super().reset(seed=seed)
        restarted = self._state is State.BROKEN and self._spec_options.auto_restart
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
            frame = self._step_frame(action)
        if self._state is not _READY:
            raise closed_error(self._label, self._state, self._reason)
        try:
            reply = self._request(frame, "step()", self._timeout)
            if reply[0] != _OK or len(reply) != 6:
                reply_values(reply, 6)
        except SandboxError as exc:
            error = self._failed(exc, "step()")
            if error is exc:
                raise
            raise error from exc
        return reply[1], reply[2], reply[3], reply[4], reply[5]

    def _step_frame(self, action: Any) -> bytes:
        if not self._contains(action):
            raise bad_action(self._sandbox, action)
        payload = self._encode([P.STEP, action])
        frame = P.frame_header(len(payload)) + payload
        if type(action) is int and len(self._step_frames) < 64:  # Discrete: a few values
            self._step_frames[action] = frame
        return frame

    def render(self) -> Any:
        """Render in the sandbox (``rgb_array``: HxWx3 uint8 array; ``ansi``: str)."""
        return self._call([P.RENDER], "render()", 2)[1]

    def close(self) -> None:
        """Close the env and stop the sandbox. Idempotent; safe after a failure."""
        state = getattr(self, "_state", State.CLOSED)
        if state in (State.CLOSED, State.CREATED):
            self._state = State.CLOSED
            return
        child = self._sandbox.child
        self._state = State.CLOSED  # first: a call in flight elsewhere then says "closed"
        if state is State.READY:
            with contextlib.suppress(SandboxError):  # stop() below makes sure
                goodbye = self._encode([P.CLOSE])
                if self._channel.try_request(goodbye, "close()", CLOSE_TIMEOUT) is None:
                    child.kill()  # another thread waits on a call: end it, then let it finish
                    self._channel.wait_idle(CLOSE_TIMEOUT)
        child.stop()
        self._finalizer.detach()

    def __repr__(self) -> str:
        return f"<SandboxEnv {self._label!r} {self._state.value} pid={self._sandbox.child.pid}>"
