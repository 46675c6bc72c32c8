"""The lifecycle of every face, I/O-free: one state, one transition table, teaching errors.

In the style of h11's ``_state.py``: a face never writes its state; it reports what happened
(``Event``) and ``Lifecycle.fire`` looks the move up in ``TRANSITIONS``. A move that is not
in the table is a bug in rlmesh and raises ``RuntimeError``. The table::

    CREATED --STARTED--> READY --FAILED--> BROKEN --RESTARTED--> READY
       |                   |                 |
       +------CLOSED-------+------CLOSED-----+-----> CLOSED (CLOSED and FAILED stay there)

A vector face's ``step_async``/``step_wait`` pair is a sub-state of READY (``pending``), with
Gymnasium's own errors for misuse.
"""

from __future__ import annotations

import enum
from typing import NoReturn

from gymnasium.error import AlreadyPendingCallError, NoAsyncCallError

from .._errors import RemoteEnvError, SandboxClosedError, SandboxError

__all__ = ["TRANSITIONS", "Event", "Lifecycle", "State", "is_fatal", "reraise"]


class State(enum.Enum):
    """Lifecycle of a sandbox env."""

    CREATED = "created"  # options checked, nothing started
    READY = "ready"
    CLOSED = "closed"
    BROKEN = "broken"  # the child died, timed out or spoke nonsense; only close() is left


class Event(enum.Enum):
    """What can happen to a sandbox env."""

    STARTED = "started"  # startup finished
    FAILED = "failed"  # a fatal error: the sandbox cannot go on
    RESTARTED = "restarted"  # auto_restart replaced what broke
    CLOSED = "closed"  # close() began


_C, _R, _X, _B = State.CREATED, State.READY, State.CLOSED, State.BROKEN
TRANSITIONS: dict[tuple[State, Event], State] = {
    (_C, Event.STARTED): _R,
    (_C, Event.CLOSED): _X,
    (_R, Event.FAILED): _B,
    (_R, Event.CLOSED): _X,
    (_B, Event.FAILED): _B,  # a second worker of a vector env fails in the same call
    (_B, Event.RESTARTED): _R,
    (_B, Event.CLOSED): _X,
    (_X, Event.CLOSED): _X,  # close() is idempotent
    (_X, Event.FAILED): _X,  # a call that close() ended from another thread or task
}


def reraise(error: SandboxError, exc: SandboxError) -> NoReturn:
    """Raise what a core's ``failed`` said to raise for ``exc`` (chained when it differs)."""
    if error is exc:
        raise exc
    raise error from exc


def is_fatal(exc: BaseException) -> bool:
    """Whether an error leaves the sandbox unusable (the env's own errors do not)."""
    return isinstance(exc, SandboxError) and not isinstance(exc, RemoteEnvError)


class Lifecycle:
    """The state of one face, and the words for misuse.

    Attributes:
        state: The current ``State``; changed only by ``fire``.
        reason: Why it broke (the first line of the error), while BROKEN.
        pending: A vector ``step_async`` awaits its ``step_wait``.
        restarts: Sandboxes (or workers) that ``auto_restart`` replaced.
    """

    __slots__ = ("auto_restart", "label", "pending", "reason", "restarts", "start_hint", "state")

    def __init__(self, label: str, *, auto_restart: bool = False, start_hint: str = "") -> None:
        self.label = label
        self.auto_restart = auto_restart
        self.start_hint = start_hint  # how to start a face built with the constructor
        self.state = State.CREATED
        self.reason: str | None = None
        self.pending = False
        self.restarts = 0

    def fire(self, event: Event, reason: str | None = None) -> State:
        """Make the move ``event`` from the current state; return the state before it."""
        before = self.state
        after = TRANSITIONS.get((before, event))
        if after is None:
            raise RuntimeError(
                f"rlmesh bug: no lifecycle move from {before.value} on {event.value}"
            )
        self.state = after
        if event is Event.FAILED and before is State.READY:
            self.reason = reason
        elif after is State.READY:
            self.reason = None
        if after is not State.READY:
            self.pending = False
        return before

    # -- questions the faces ask -------------------------------------------------------------

    def closed_error(self, extra: str | None = None) -> SandboxClosedError:
        """The error for a call on a sandbox that is not ready."""
        if self.state is State.CREATED and extra is None:
            return SandboxClosedError(
                f"the sandbox for {self.label!r} is not started; {self.start_hint}"
            )
        why = extra if extra is not None else self.reason
        return SandboxClosedError(
            f"the sandbox for {self.label!r} is {self.state.value}{': ' + why if why else ''}"
        )

    def check_ready(self, what: str = "") -> None:
        """Raise unless a call may be made now."""
        if self.state is not State.READY:
            raise self.closed_error()
        if self.pending:
            raise AlreadyPendingCallError(
                f"{what or 'a call'} while a step_async() awaits its step_wait(); call "
                "step_wait() first",
                "step",
            )

    def check_startable(self) -> None:
        if self.state is not State.CREATED:
            raise self.closed_error("start() was already called")

    def begin_pending(self) -> None:
        """``step_async`` sent its actions."""
        self.pending = True

    def end_pending(self) -> None:
        """``step_wait`` collects; ``NoAsyncCallError`` without a ``step_async`` before it."""
        if not self.pending:
            raise NoAsyncCallError("step_wait() without a step_async() before it", "step")
        self.pending = False

    def wants_restart(self) -> bool:
        """Whether the next ``reset()`` replaces what broke (``auto_restart``)."""
        return self.state is State.BROKEN and self.auto_restart

    def failed(self, exc: SandboxError, what: str) -> tuple[SandboxError, bool]:
        """Book a failed call. Returns what to raise and whether the sandbox just broke
        (then the face must stop what it holds)."""
        if self.state is State.CLOSED:  # close() from elsewhere ended this call
            self.fire(Event.FAILED)
            return SandboxClosedError(
                f"the sandbox for {self.label!r} was closed while {what} was in flight"
            ), False
        if not is_fatal(exc):
            return exc, False
        self.fire(Event.FAILED, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        return exc, True

    def restarted(self, count: int = 1) -> None:
        self.fire(Event.RESTARTED)
        self.restarts += count
