"""Two drivers of one protocol: blocking pipe I/O (sync face) and anyio waits (async face).

They differ only in how they wait. Framing, decoding and reply checks are ``_protocol``'s.
Each channel allows one request in flight (a lock serialises callers) and remembers a request
whose reply was never read (the caller was cancelled or interrupted): the next request first
drains that reply, so the stream never goes out of step.

A request can also be cut off while it is being written (a Ctrl-C, a cancellation, on a
frame larger than the pipe). The worker would wait for the rest of it forever, and no later
frame can be told apart from that rest, so a channel whose request was cut off kills the
child at once and raises ``SandboxCrashedError`` (saying so) on its next call; the face books
that as a failure like any crash. An async request cancelled before its first byte leaves
the stream whole and the sandbox usable.

A channel turns end-of-file into ``SandboxCrashedError`` (with exit status and output tail)
and an expired ``timeout`` into ``SandboxTimeoutError`` after killing the child.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import select
import threading
import time
import weakref
from typing import Any

import anyio

from .._backends import WorkerHandle
from .._errors import ProtocolError, SandboxCrashedError, SandboxError, SandboxTimeoutError
from .._wire import protocol as P
from .._wire.spin import Spinner

__all__ = ["AsyncChannel", "BlockingChannel", "async_channel", "blocking_channel"]

MIN_READ = 1 << 16  # small reads stay cheap: os.read allocates the whole size up front
MAX_READ = 1 << 20
MAX_POLL_MS = 2**31 - 1  # poll() takes a C int


def _timeout_error(child: WorkerHandle, what: str, timeout: float) -> SandboxTimeoutError:
    child.kill()
    return SandboxTimeoutError(
        f"the sandbox for {child.label!r} ({child.whom()}) did not answer {what} within "
        f"{timeout:g} s; it was stopped (raise call_timeout if the env is just slow)"
    )


def blocking_channel(child: WorkerHandle, reader: P.FrameReader) -> BlockingChannel:
    """The sync faces' channel to ``child``: over its fds, or its frame link if it has one."""
    if child.link is not None:
        from .links import BlockingLinkChannel

        return BlockingLinkChannel(child, reader)
    return BlockingChannel(child, reader)


def async_channel(child: WorkerHandle, reader: P.FrameReader) -> AsyncChannel:
    """The async faces' channel to ``child``: over its fds, or its frame link if it has one."""
    if child.link is not None:
        from .links import AsyncLinkChannel

        return AsyncLinkChannel(child, reader)
    return AsyncChannel(child, reader)


class _Base:
    def __init__(self, child: WorkerHandle, reader: P.FrameReader) -> None:
        self.child = child
        self._reader = reader
        self._ready: list[bytes | bytearray] = []
        self._unanswered = 0  # requests sent whose replies were never read
        self._torn: str | None = None  # how a request was cut off mid-frame (then: dead)

    def _tear(self, what: str, exc: BaseException) -> None:
        """A request was cut off after part of its frame went out: end the child now."""
        self._torn = (
            f"{what} was interrupted ({type(exc).__name__}) while its request was half "
            "written to the sandbox"
        )
        self.child.kill()

    def _torn_error(self, what: str) -> SandboxCrashedError:
        return SandboxCrashedError(
            f"the sandbox for {self.child.label!r} ({self.child.whom()}) was stopped before "
            f"{what}: an earlier {self._torn}, which leaves the request stream out of step; "
            "start a new env (or pass auto_restart=True to let reset() do it)",
            source=self.child.label,
            pid=self.child.pid,
        )

    def _frame(self, payload: bytes) -> bytes:
        return P.frame_header(len(payload)) + payload

    def _next_payload(self) -> bytes | bytearray | None:
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

    def __init__(self, child: WorkerHandle, reader: P.FrameReader) -> None:
        super().__init__(child, reader)
        os.set_blocking(child.from_child, False)
        os.set_blocking(child.to_child, False)
        self._lock = threading.Lock()
        self._readable = select.poll()
        self._readable.register(child.from_child, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(child.to_child, select.POLLOUT)
        self._spin = Spinner(child.from_child).read
        self._to_child = child.to_child
        self._whole = reader.whole

    def request(self, payload: bytes, what: str, timeout: float | None = None) -> list[Any]:
        """Send one request payload and return the decoded reply message."""
        return self.request_frame(P.frame_header(len(payload)) + payload, what, timeout)

    def request_frame(self, frame: bytes, what: str, timeout: float | None = None) -> list[Any]:
        """``request`` for a whole frame (header included): the sync step's hot path."""
        with self._lock:
            if timeout is None and not self._unanswered and not self._ready:
                # The common case, with no extra calls: one write, a reply caught while
                # spinning, one whole frame in it.
                try:  # free on 3.11+: exception tables
                    sent = os.write(self._to_child, frame)
                    if sent != len(frame):
                        self._send(frame, what, None, None, sent)
                except BlockingIOError:  # a full pipe: nothing was written
                    self._send(frame, what, None, None, 0)
                except SandboxError:
                    raise
                except OSError:
                    raise self.child.crashed_error(what) from None
                except BaseException as exc:  # Ctrl-C between the write and _send's guard
                    self._interrupted(what, exc)
                    raise
                self._unanswered = 1
                data = self._spin(MIN_READ)
                payload = self._whole(data) if data else None
                if payload is not None:
                    message = P.decode_message(payload)
                else:
                    if data:
                        self._ready.extend(self._reader.feed(data))
                    message = self._receive(what, None, None)
            else:
                deadline = None if timeout is None else time.monotonic() + timeout
                self._post_frame(frame, what, deadline, timeout)
                message = self._receive(what, deadline, timeout)
            self._unanswered = 0
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
        self._post_frame(P.frame_header(len(payload)) + payload, what, deadline, timeout)

    def _post_frame(
        self, frame: bytes, what: str, deadline: float | None, timeout: float | None
    ) -> None:
        while self._unanswered:
            if self._torn is not None:
                raise self._torn_error(what)
            self._receive(what, deadline, timeout)
            self._unanswered -= 1
        self._send(frame, what, deadline, timeout)
        self._unanswered += 1

    def _wait(self, poller: Any, what: str, deadline: float | None, timeout: float | None) -> None:
        if deadline is None:
            poller.poll()
            return
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(min(math.ceil(left * 1000), MAX_POLL_MS)):
            if time.monotonic() < deadline:
                return  # a wait longer than poll() takes: the caller waits again
            raise _timeout_error(self.child, what, timeout or 0.0)

    def _send(
        self,
        frame: bytes,
        what: str,
        deadline: float | None,
        timeout: float | None,
        sent: int | None = None,
    ) -> None:
        """Write the whole ``frame`` (``sent`` bytes of it are out already, if given).

        An interruption (Ctrl-C) once writing has begun tears the stream (``_interrupted``):
        the bytes a write took cannot always be counted when a signal lands right after it,
        and the pipe is empty when a request starts, so a first write always takes some.
        """
        fd = self.child.to_child
        try:
            if sent is None:
                try:
                    sent = os.write(fd, frame)
                except BlockingIOError:
                    sent = 0
                if sent == len(frame):
                    return
            view = memoryview(frame)[sent:]
            while view:
                self._wait(self._writable, what, deadline, timeout)
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    continue
        except SandboxError:
            raise  # the child is dead or killed already; the face books it
        except OSError:
            raise self.child.crashed_error(what) from None
        except BaseException as exc:  # Ctrl-C mid-frame: the stream cannot be resumed
            self._interrupted(what, exc)
            raise

    def _interrupted(self, what: str, exc: BaseException) -> None:
        if self._torn is None:
            self._tear(what, exc)
            self._unanswered += 1  # routes the next request to the check in _post_frame

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


class _InFlight(threading.local):
    """Async requests of this thread's event loop sent and not yet answered.

    A lone request (a rollout loop over one env) spins for its reply (``_spin``) after one
    checkpoint, because waking a halted CPU from the event loop costs more than a sandboxed
    step; with several in flight (many envs, vector workers) every one parks in the loop.
    """

    count = 0


_in_flight = _InFlight()


def _after_fork_in_child() -> None:
    """In a forked child: the parent's requests are not this process's to wait for, and
    the standing readers' duplicates of the parent's reply pipes now point at /dev/null
    (the numbers stay taken: a copy of the parent's loop may still name them)."""
    _in_flight.count = 0
    readers = [reader for reader in list(_readers) if reader.fd >= 0]
    if readers:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        for reader in readers:
            with contextlib.suppress(OSError):
                os.dup2(null, reader.fd, inheritable=False)
        os.close(null)


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Gate:
    """A FIFO lock for tasks of one event loop that costs nothing when it is free.

    ``anyio.Lock`` asks the backend for a cancellation check on every acquire (about 5 us
    here, a tenth of a sandboxed step); a free gate is taken with no scheduler call at all.
    A request that takes it always awaits its reply next, so it stays a cancellation point.
    """

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters: collections.deque[anyio.Event] = collections.deque()

    def locked(self) -> bool:
        return self._held

    async def __aenter__(self) -> None:
        if not self._held:
            self._held = True
            return
        turn = anyio.Event()
        self._waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # the gate was handed to us as we were cancelled: pass it on
                self._release()
            else:
                self._waiters.remove(turn)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # handed over: the gate stays held
        else:
            self._held = False


class _LoopReader:
    """An asyncio reader kept registered for a channel's life (asyncio only).

    ``anyio.wait_readable`` registers and unregisters the fd on every call, which costs about
    45 us on asyncio here, more than a whole sandboxed step; a standing reader costs one
    future per reply, as asyncio's own pipe transports do. It reads through its own duplicate
    of the fd, which only it closes, after unregistering: the selector never holds a closed
    (or reused) fd number, whoever stops the child and whenever.
    """

    def __init__(self, channel: AsyncChannel, loop: asyncio.AbstractEventLoop) -> None:
        self._channel = channel
        self.loop = loop
        self.fd = os.dup(channel.child.from_child)
        self.waiter: asyncio.Future[None] | None = None
        self.ended = False  # end of file or a dead pipe
        self.error: ProtocolError | None = None
        loop.add_reader(self.fd, self._readable)
        _readers.add(self)

    def _readable(self) -> None:
        channel = self._channel
        try:
            data = os.read(self.fd, channel._read_size())
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            try:
                channel._absorb(data)
            except ProtocolError as exc:
                self.error = exc
                self.close()
        else:
            self.ended = True
            self.close()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Unregister and close the fd. Idempotent; call it on the loop's thread."""
        if self.fd < 0:
            return
        with contextlib.suppress(Exception):  # the loop may be closed already
            self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1


_readers: weakref.WeakSet[_LoopReader] = weakref.WeakSet()  # for the fork hook


class AsyncChannel(_Base):
    """Request/reply over the child's pipes with anyio readiness waits; for the async face.

    On asyncio the channel reads through a standing reader (``_LoopReader``); call ``close()``
    when done with it (a reader whose child exits also closes itself). Other backends (trio)
    wait with ``anyio.wait_readable``.
    """

    def __init__(self, child: WorkerHandle, reader: P.FrameReader) -> None:
        super().__init__(child, reader)
        os.set_blocking(child.from_child, False)
        os.set_blocking(child.to_child, False)
        self._lock = _Gate()
        self._loop_reader: _LoopReader | None = None
        self._spin = Spinner(child.from_child).read

    def close(self) -> None:
        """Stop reading (asyncio: unregister the standing reader). Idempotent.

        Call it from the thread of the channel's event loop.
        """
        if self._loop_reader is not None:
            self._loop_reader.close()
        _in_flight.count -= self._unanswered  # replies nobody will read
        self._unanswered = 0

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
        self._answered()
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
        self._answered()
        return message

    def _answered(self) -> None:
        self._unanswered -= 1
        _in_flight.count -= 1

    async def _post(self, payload: bytes, what: str) -> None:
        while self._unanswered:
            if self._torn is not None:
                raise self._torn_error(what)
            await self._receive(what)
            self._answered()
        await self._send(self._frame(payload), what)
        self._unanswered += 1
        _in_flight.count += 1

    async def _send(self, data: bytes, what: str) -> None:
        fd = self.child.to_child
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    await anyio.wait_writable(fd)
                except OSError:
                    raise self.child.crashed_error(what) from None
        except SandboxError:
            raise  # the child is dead; the face books it
        except BaseException as exc:  # cancelled mid-frame: the stream cannot be resumed
            if view and len(view) < len(data):
                self._tear(what, exc)
                self._unanswered += 1  # routes the next request to the check in _post
                _in_flight.count += 1
            raise

    async def _receive(self, what: str) -> list[Any]:
        yielded = False
        while True:
            payload = self._next_payload()
            if payload is not None:
                return P.decode_message(payload)
            if _in_flight.count <= 1:  # no other request of this loop waits: spin
                if not yielded:  # but first give the loop's other tasks their turn
                    yielded = True
                    await anyio.lowlevel.checkpoint()
                    continue
                data = self._spin(self._read_size())
                if data is not None:
                    await self._take(data, what)
                    continue
            loop = asyncio._get_running_loop()
            if loop is None:  # not asyncio (trio)
                await self._read_when_readable(what)
            else:
                await self._read_with_reader(loop, what)

    async def _take(self, data: bytes, what: str) -> None:
        if not data:
            raise await anyio.to_thread.run_sync(self.child.crashed_error, what)
        self._absorb(data)

    async def _read_with_reader(self, loop: asyncio.AbstractEventLoop, what: str) -> None:
        reader = self._loop_reader
        if reader is None or reader.loop is not loop:
            if reader is not None:  # the env moved to another loop
                reader.close()
            reader = self._loop_reader = _LoopReader(self, loop)
        if reader.error is not None:
            raise reader.error
        if reader.ended:
            raise await anyio.to_thread.run_sync(self.child.crashed_error, what)
        waiter = reader.waiter = loop.create_future()
        try:
            await waiter
        finally:
            reader.waiter = None

    async def _read_when_readable(self, what: str) -> None:
        await anyio.wait_readable(self.child.from_child)
        data = self._try_read()
        if data is not None:
            await self._take(data, what)
