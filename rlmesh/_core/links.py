"""The channels over a ``FrameLink``: a worker reached by calls, not fds (Ray's actor calls).

They keep the pipe channels' contract (one request in flight, a reply never read is drained
before the next request, a timeout kills the child, end-of-worker is ``SandboxCrashedError``)
and change only how a frame moves: ``post`` sends it, ``wait`` (bounded, safe to abandon)
and ``take`` bring its reply, which goes through the same ``FrameReader`` and checks. The
sync face waits in its own thread, so a step costs one call and no thread hop; an async face
waits in a worker thread it may abandon when cancelled (the reply stays queued for the next
request to drain).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio

from .._backends import FrameLink, WorkerHandle
from .._wire import protocol as P
from .channels import AsyncChannel, BlockingChannel, _Base, _Gate, _in_flight, _timeout_error

__all__ = ["AsyncLinkChannel", "BlockingLinkChannel"]


def _link_of(child: WorkerHandle) -> FrameLink:
    link = child.link
    if link is None:
        raise TypeError(f"{child.label!r}: this worker is read through its fds, not a link")
    return link


class BlockingLinkChannel(BlockingChannel):
    """``BlockingChannel`` over a frame link: waits block the calling thread."""

    def __init__(self, child: WorkerHandle, reader: P.FrameReader) -> None:
        _Base.__init__(self, child, reader)
        self._lock = threading.Lock()
        self._link = _link_of(child)

    def request_frame(self, frame: bytes, what: str, timeout: float | None = None) -> list[Any]:
        with self._lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._post_frame(frame, what, deadline, timeout)
            message = self._receive(what, deadline, timeout)
            self._unanswered = 0
            return message

    def _send(
        self,
        frame: bytes,
        what: str,
        deadline: float | None,
        timeout: float | None,
        sent: int | None = None,
    ) -> None:
        try:
            self._link.post(frame)
        except BaseException as exc:  # Ctrl-C inside the call: whether it went out is unknown
            self._interrupted(what, exc)
            raise

    def _receive(self, what: str, deadline: float | None, timeout: float | None) -> list[Any]:
        ready = self._ready
        link = self._link
        while not ready:
            if deadline is None:
                link.wait(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0 or not link.wait(left):
                    if time.monotonic() < deadline:
                        continue
                    raise _timeout_error(self.child, what, timeout or 0.0)
            data, alive = link.take()
            if data:
                ready.extend(self._reader.feed(data))
            if not alive and not ready:
                raise self.child.crashed_error(what)
        return P.decode_message(ready.pop(0))


class AsyncLinkChannel(AsyncChannel):
    """``AsyncChannel`` over a frame link: a reply is awaited in a worker thread."""

    def __init__(self, child: WorkerHandle, reader: P.FrameReader) -> None:
        _Base.__init__(self, child, reader)
        self._lock = _Gate()
        self._loop_reader = None
        self._link = _link_of(child)

    async def _send(self, data: bytes, what: str) -> None:
        try:
            self._link.post(data)
        except BaseException as exc:  # as a torn frame: whether it went out is unknown
            self._tear(what, exc)
            self._unanswered += 1  # routes the next request to the check in _post
            _in_flight.count += 1
            raise

    async def _receive(self, what: str) -> list[Any]:
        link = self._link
        while True:
            payload = self._next_payload()
            if payload is not None:
                return P.decode_message(payload)
            # abandoned on cancellation: the wait consumes nothing, the reply stays queued
            await anyio.to_thread.run_sync(link.wait, None, abandon_on_cancel=True)
            data, alive = link.take()
            if data:
                self._absorb(data)
            if not alive and not self._ready:
                raise await anyio.to_thread.run_sync(self.child.crashed_error, what)
