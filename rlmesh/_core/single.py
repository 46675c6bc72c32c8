"""``EnvCore``: what both single-env faces share, without I/O.

The lifecycle, the started sandbox and what the host knows of it, request frames (with the
step-frame cache of the sync hot path), reply checks and failure booking. ``SandboxEnv`` and
``AsyncSandboxEnv`` hold one each and differ only in how they wait for the child.
"""

from __future__ import annotations

import weakref
from typing import Any

from .._errors import SandboxError
from .._wire import protocol as P
from .lifecycle import Event, Lifecycle, State
from .spec import SandboxSpec
from .startup import Sandbox, action_checker, bad_action, host_env_spec

__all__ = ["EnvCore"]

_STEP_FRAMES = 64  # cached STEP frames of int actions (Discrete: a few values)


class EnvCore:
    """One single env's shared state and its I/O-free steps.

    Attributes:
        spec: The validated spec.
        life: The face's lifecycle.
        timeouts: Every bound on a wait.
        sandbox: The started sandbox (``None`` before ``install``).
        step_frames: int action -> its whole STEP frame; a hit skips the action check.
    """

    def __init__(self, spec: SandboxSpec, start_hint: str) -> None:
        self.spec = spec
        self.life = Lifecycle(spec.label, auto_restart=spec.options.auto_restart,
                              start_hint=start_hint)  # fmt: skip
        self.timeouts = spec.options.timeouts
        self.encode = P.RequestEncoder().encode
        self.sandbox: Sandbox | None = None
        self.step_frames: dict[int, bytes] = {}
        self.contains: Any = None
        self.env_spec: Any = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def install(self, owner: object, sandbox: Sandbox) -> None:
        """Take a started sandbox (first start or ``auto_restart``); ``owner`` is the face,
        whose garbage collection kills the child."""
        restart = self.sandbox is not None
        self.detach()
        self.sandbox = sandbox
        self.contains = action_checker(sandbox.action_space)
        self.env_spec = host_env_spec(sandbox)
        self.step_frames.clear()
        self._finalizer = weakref.finalize(owner, sandbox.child.abandon)
        if restart:
            self.life.restarted()
        else:
            self.life.fire(Event.STARTED)

    def detach(self) -> None:
        """Stop guarding the current child (it was stopped, or is about to be replaced)."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def started(self) -> Sandbox:
        """The sandbox, or the error for a face that was never started."""
        if self.sandbox is None:
            raise self.life.closed_error()
        return self.sandbox

    def frame(self, message: list[Any]) -> bytes:
        """A whole request frame (header and payload)."""
        payload = self.encode(message)
        return P.frame_header(len(payload)) + payload

    def step_frame(self, action: Any) -> bytes:
        """The STEP frame of ``action``; ``ValueError`` for one outside the action space."""
        if self.contains is not None and not self.contains(action):
            raise bad_action(self.started(), action)
        frame = self.frame([P.STEP, action])
        if type(action) is int and len(self.step_frames) < _STEP_FRAMES:
            self.step_frames[action] = frame
        return frame

    def failed(self, exc: SandboxError, what: str) -> SandboxError:
        """Book a failed call (a fatal one kills the child); return what to raise."""
        error, broke = self.life.failed(exc, what)
        if broke and self.sandbox is not None:
            self.sandbox.child.abandon()
        return error

    def begin_close(self) -> State:
        """Mark the face closed (first: a call in flight elsewhere then says "closed");
        return the state it was in."""
        return self.life.fire(Event.CLOSED)
