"""The backend seam: where a sandbox runs. A ``Backend`` starts a worker; a ``WorkerHandle``
is what the core holds of it.

The core (startup, channels, faces) knows a worker only through ``WorkerHandle``: two byte
streams (``to_child`` / ``from_child`` fds, the same fd for a socket) or, for a worker
reached by calls rather than fds, a ``FrameLink``; a label, a pid where the host can see
one, the tail of the worker's output, and how to end it. How the worker is built and
started, and how it is killed (a process group, a container), is the backend's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .._config import Options, Resolved
from .._errors import SandboxCrashedError

__all__ = ["Backend", "FrameLink", "WorkerHandle"]


class FrameLink(Protocol):
    """A worker reached by calls instead of fds (Ray's actor calls): whole frames each way.

    One request frame goes out per ``post`` and one reply comes back for it, in order; the
    first ``post`` of ``b""`` brings the greeting (``MAGIC`` and the HELLO frame). The
    channels wait with ``wait`` (bounded, safe to abandon: it consumes nothing) and take the
    reply with ``take``, so a cancelled wait never loses a reply.
    """

    def post(self, frame: bytes) -> None:
        """Send one whole request frame (header included); returns at once."""
        ...

    def wait(self, timeout: float | None) -> bool:
        """Whether the oldest posted request's reply is in, waiting up to ``timeout`` s
        (``None``: until it is, or the worker is being stopped)."""
        ...

    def take(self) -> tuple[bytes, bool]:
        """The oldest reply, once ``wait`` said so: its bytes (a whole frame, or what the
        worker wrote before it hung up) and whether the worker is still there."""
        ...


class WorkerHandle(Protocol):
    """A started worker, as the core uses it."""

    @property
    def link(self) -> FrameLink | None:
        """The worker's frame link, or ``None``: then the core reads and writes the fds."""
        ...

    @property
    def label(self) -> str:
        """How messages name the sandbox."""
        ...

    @property
    def pid(self) -> int | None:
        """The worker's pid; ``None`` where the host cannot see its process."""
        ...

    @property
    def to_child(self) -> int:
        """The fd the host writes requests to."""
        ...

    @property
    def from_child(self) -> int:
        """The fd the host reads replies from (may equal ``to_child``: a socket)."""
        ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def details(self) -> Mapping[str, Any]:
        """What the backend tells of this sandbox: ``backend``, ``venv_key``, ``packages``
        (installed name -> version)."""
        ...

    def whom(self) -> str:
        """How messages name the worker: ``pid 123``, or where it runs (a container, a node)."""
        ...

    def output_tail(self) -> str:
        """The last lines the worker printed."""
        ...

    def crashed_error(self, what: str, *, wait: float | None = None) -> SandboxCrashedError:
        """The error for a worker that hung up during ``what`` (waits for its exit status)."""
        ...

    def peer_fd_path(self, fd: int) -> str | None:
        """A host path that opens the worker's fd ``fd`` (shared memory), or ``None``."""
        ...

    def kill(self) -> None:
        """End the worker and all it started, at once; never raises."""
        ...

    def abandon(self) -> None:
        """``kill`` and release the host's ends (garbage collection, a broken sandbox)."""
        ...

    def stop(self, grace: float | None = None) -> int | None:
        """End-of-file, then terminate, then kill; bounded (by the handle's ``Timeouts``;
        ``grace`` overrides the first wait) and idempotent. The exit status."""
        ...


class Backend(Protocol):
    """Where sandboxes run: builds (or reuses) the environment and starts a worker in it."""

    name: str

    async def start(self, options: Options, resolved: Resolved, label: str) -> WorkerHandle:
        """Build or reuse the sandbox for ``options`` and ``resolved`` and start its worker.

        Runs under the caller's startup deadline; cancellation must leave no process behind
        unless it returned the handle (the caller stops what it holds).
        """
        ...
