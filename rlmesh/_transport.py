"""Two drivers of one protocol: blocking pipe I/O (sync face) and anyio waits (async face).

They differ only in how they wait. Framing, decoding and reply checks are ``_protocol``'s.
Each channel allows one request in flight (a lock serialises callers) and remembers a request
whose reply was never read (the caller was cancelled or interrupted): the next request first
drains that reply, so the stream never goes out of step.

A channel turns end-of-file into ``SandboxCrashedError`` (with exit status and output tail)
and an expired ``timeout`` into ``SandboxTimeoutError`` after killing the child.
"""

from __future__ import annotations

import math
import os
import select
import threading
import time
from typing import Any

import anyio

from . import _protocol as P
from ._errors import SandboxTimeoutError
from ._process import ChildProcess
from ._spin import Spinner

__all__ = ["AsyncChannel", "BlockingChannel"]

MIN_READ = 1 << 16  # small reads stay cheap: os.read allocates the whole size up front
MAX_READ = 1 << 20


def _timeout_error(child: ChildProcess, what: str, timeout: float) -> SandboxTimeoutError:
    child.kill()
    return SandboxTimeoutError(
        f"the sandbox for {child.label!r} (pid {child.pid}) did not answer {what} within "
        f"{timeout:g} s; it was stopped (raise call_timeout if the env is just slow)"
    )


class _Base:
    def __init__(self, child: ChildProcess, reader: P.FrameReader) -> None:
        self.child = child
        self._reader = reader
        self._ready: list[bytes] = []
        self._unanswered = 0  # requests sent whose replies were never read

    def _frame(self, payload: bytes) -> bytes:
        return P.frame_header(len(payload)) + payload

    def _next_payload(self) -> bytes | None:
        ready = self._ready
        return ready.pop(0) if ready else None

    def _read_size(self) -> int:
        return min(MAX_READ, max(MIN_READ, self._reader.wanted()))

    def _try_read(self) -> bytes | None:
        """One non-blocking read: data, ``b''`` at EOF or on a dead pipe, ``None`` if none yet."""
        try:
            return os.read(self.child.from_child, self._read_size())
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def _absorb(self, data: bytes) -> None:
        self._ready.extend(self._reader.feed(data))


class BlockingChannel(_Base):
    """Request/reply over the child's pipes with blocking waits; for the sync face.

    The fds are non-blocking; a wait first spins briefly (``_spin``) and then blocks in
    ``poll``, which also bounds it when a timeout is given.
    """

    def __init__(self, child: ChildProcess, reader: P.FrameReader) -> None:
        super().__init__(child, reader)
        os.set_blocking(child.from_child, False)
        os.set_blocking(child.to_child, False)
        self._lock = threading.Lock()
        self._readable = select.poll()
        self._readable.register(child.from_child, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(child.to_child, select.POLLOUT)
        self._spin = Spinner(child.from_child).read

    def request(self, payload: bytes, what: str, timeout: float | None = None) -> list[Any]:
        """Send one request payload and return the decoded reply message."""
        with self._lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._post(payload, what, deadline, timeout)
            message = self._receive(what, deadline, timeout)
            self._unanswered -= 1
            return message

    def try_request(self, payload: bytes, what: str, timeout: float) -> list[Any] | None:
        """``request`` if no other thread has a call in flight, else ``None`` at once."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            deadline = time.monotonic() + timeout
            self._post(payload, what, deadline, timeout)
            message = self._receive(what, deadline, timeout)
            self._unanswered -= 1
            return message
        finally:
            self._lock.release()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight; ``False`` if that took longer than ``timeout``."""
        if not self._lock.acquire(timeout=timeout):
            return False
        self._lock.release()
        return True

    def send(self, payload: bytes, what: str, timeout: float | None = None) -> None:
        """First half of a split request (vector ``step_async``); ``receive`` completes it.

        The caller serialises use (vector envs are single-user, as in Gymnasium).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._post(payload, what, deadline, timeout)

    def receive(self, what: str, timeout: float | None = None) -> list[Any]:
        """The reply to the oldest request sent with ``send``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        message = self._receive(what, deadline, timeout)
        self._unanswered -= 1
        return message

    def _post(
        self, payload: bytes, what: str, deadline: float | None, timeout: float | None
    ) -> None:
        while self._unanswered:
            self._receive(what, deadline, timeout)
            self._unanswered -= 1
        self._send(P.frame_header(len(payload)) + payload, what, deadline, timeout)
        self._unanswered += 1

    def _wait(self, poller: Any, what: str, deadline: float | None, timeout: float | None) -> None:
        if deadline is None:
            poller.poll()
            return
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(math.ceil(left * 1000)):
            raise _timeout_error(self.child, what, timeout or 0.0)

    def _send(self, data: bytes, what: str, deadline: float | None, timeout: float | None) -> None:
        fd = self.child.to_child
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            raise self.child.crashed_error(what) from None
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            self._wait(self._writable, what, deadline, timeout)
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue
            except OSError:
                raise self.child.crashed_error(what) from None

    def _receive(self, what: str, deadline: float | None, timeout: float | None) -> list[Any]:
        ready = self._ready
        while not ready:
            data = self._spin(MIN_READ)
            if data is None:
                self._wait(self._readable, what, deadline, timeout)
                data = self._try_read()
                if data is None:
                    continue
            if not data:
                raise self.child.crashed_error(what)
            ready.extend(self._reader.feed(data))
        return P.decode_message(ready.pop(0))


class AsyncChannel(_Base):
    """Request/reply over the child's pipes with anyio readiness waits; for the async face."""

    def __init__(self, child: ChildProcess, reader: P.FrameReader) -> None:
        super().__init__(child, reader)
        os.set_blocking(child.from_child, False)
        os.set_blocking(child.to_child, False)
        self._lock = anyio.Lock(fast_acquire=True)  # no scheduler round trip when free

    async def request(self, payload: bytes, what: str, timeout: float | None = None) -> list[Any]:
        """Send one request payload and return the decoded reply message."""
        async with self._lock:
            if timeout is None:
                return await self._exchange(payload, what)
            try:
                with anyio.fail_after(timeout):
                    return await self._exchange(payload, what)
            except TimeoutError:
                raise _timeout_error(self.child, what, timeout) from None

    @property
    def busy(self) -> bool:
        """Whether a call is in flight."""
        return self._lock.locked()

    async def wait_idle(self) -> None:
        """Wait until no call is in flight."""
        async with self._lock:
            pass

    async def receive_unprompted(self, what: str) -> list[Any]:
        """Wait for a message the child sends on its own (the HELLO)."""
        async with self._lock:
            return await self._receive(what)

    async def _exchange(self, payload: bytes, what: str) -> list[Any]:
        await self._post(payload, what)
        message = await self._receive(what)
        self._unanswered -= 1
        return message

    async def send(self, payload: bytes, what: str) -> None:
        """First half of a split request (vector ``step_async``); ``receive`` completes it."""
        await self._post(payload, what)

    async def receive(self, what: str, timeout: float | None = None) -> list[Any]:
        """The reply to the oldest request sent with ``send``."""
        if timeout is None:
            message = await self._receive(what)
        else:
            try:
                with anyio.fail_after(timeout):
                    message = await self._receive(what)
            except TimeoutError:
                raise _timeout_error(self.child, what, timeout) from None
        self._unanswered -= 1
        return message

    async def _post(self, payload: bytes, what: str) -> None:
        while self._unanswered:
            await self._receive(what)
            self._unanswered -= 1
        await self._send(self._frame(payload), what)
        self._unanswered += 1

    async def _send(self, data: bytes, what: str) -> None:
        fd = self.child.to_child
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(fd)
            except OSError:
                raise self.child.crashed_error(what) from None

    async def _receive(self, what: str) -> list[Any]:
        fd = self.child.from_child
        while True:
            payload = self._next_payload()
            if payload is not None:
                return P.decode_message(payload)
            await anyio.wait_readable(fd)
            data = self._try_read()
            if data is None:
                continue
            if not data:
                raise await anyio.to_thread.run_sync(self.child.crashed_error, what)
            self._absorb(data)
