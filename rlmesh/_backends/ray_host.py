"""The Ray host: what runs inside a host actor, on a cluster node, for ``RayBackend``.

A host actor holds ordinary sandbox children, built and started by ``VenvBackend`` on its
node (so the node's venv cache, its locks and its integrity checks all apply), and moves
whole frames between the driver and a child's pipes without looking into them: the relay
reads a 4-byte header and that many bytes, and hands them back as ``bytes``. It never
decodes a child's frame, so nothing a sandbox writes is ever unpickled here or on the driver:
Ray carries only ``bytes`` objects that this code made.

Every method returns ``bytes``: a frame (behind one status byte) or a small report encoded
with rlmesh's own codec (``_wire.codec``), which the driver decodes with the safe decoder.
Failures come back as reports too, never as pickled exceptions.

The tcp data plane (``listen``, then ``start`` with its listener): the host takes the first
connection that sends the 32-byte token it handed the driver through Ray, and starts the
child with that socket as its protocol fds, so frames go between driver and child directly
and never through this actor; the actor keeps only control (stop, kill, reports).

The class is plain Python; ``ray_backend`` turns it into an actor class with ``ray.remote``.
A threaded actor (``max_concurrency``) lets ``kill``/``stop`` run while an ``exchange`` waits
on a busy child. When the actor process dies, its children see their request pipe close and
end themselves (the worker's watchdog), so a lost host leaves nothing behind.
"""

from __future__ import annotations

import hmac
import itertools
import os
import secrets
import socket
import threading
import time
from typing import Any

import anyio

from .._config import Options, Resolved
from .._errors import SandboxError
from .._wire import codec
from .._wire.protocol import MAGIC, MAX_FRAME
from .process import ChildProcess
from .venv import VenvBackend

__all__ = ["ALIVE", "DEAD", "SID_BYTES", "TOKEN_BYTES", "Host"]

ALIVE = 0  # status byte: a whole frame follows
DEAD = 1  # status byte: what was read before the child hung up (or a bad header) follows
SID_BYTES = 8  # a child's id, in front of each frame sent to ``exchange``
TOKEN_BYTES = 32  # the tcp data plane's secret, sent first by the driver
ACCEPT_WAIT = 30.0  # seconds a tcp listener waits for the driver to connect and prove it
TOKEN_WAIT = 5.0  # seconds a connection gets to send the token
READ = 1 << 20  # the most one read of a child's replies takes


class _Child:
    """A child and what the host has read of its replies.

    The host blocks for a reply and never spins: a Ray call costs a millisecond, so catching
    the reply microseconds sooner gains nothing, and a spinning actor takes a CPU from Ray's
    own threads and from the child (measured: spinning made a relayed step slower).
    """

    def __init__(self, process: ChildProcess) -> None:
        self.process = process
        self.buffer = bytearray()
        # a tcp child speaks on its own socket: the host holds no end of its protocol
        self.linked = process.from_child >= 0
        self.greeted = False
        self.lock = threading.Lock()  # one exchange at a time (the driver sends one anyway)


class Host:
    """A host actor's state: its sandbox children, by id."""

    def __init__(self) -> None:
        self._children: dict[int, _Child] = {}
        self._listeners: dict[int, tuple[socket.socket, bytes]] = {}
        # an id carries this incarnation's random epoch in its high bits: an id from before
        # Ray restarted this actor (max_restarts) never names a child of the new one, and
        # says that the actor restarted since it was given out
        self._epoch = secrets.randbits(30) + 1
        self._ids = itertools.count((self._epoch << 32) + 1)
        self._lock = threading.Lock()

    def ready(self) -> bytes:
        """Where this host runs (answered once it is placed and started)."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        ip = next((n.get("NodeManagerAddress") for n in ray.nodes() if n.get("NodeID") == node),
                  None) or ray.util.get_node_ip_address()  # fmt: skip
        return codec.encode({"node": node, "ip": ip, "pid": os.getpid(), "epoch": self._epoch})

    def listen(self) -> bytes:
        """The tcp data plane: a listening socket on this node and its token, for one
        ``start``; a report: its id, port and token."""
        import ray

        listener = socket.create_server((ray.util.get_node_ip_address(), 0))
        token = secrets.token_bytes(TOKEN_BYTES)
        with self._lock:
            lid = next(self._ids)
            self._listeners[lid] = (listener, token)
        return codec.encode({"id": lid, "port": listener.getsockname()[1], "token": token})

    def start(
        self,
        values: dict[str, Any],
        resolved: Resolved,
        label: str,
        timeout: float,
        listener: int = 0,
    ) -> bytes:
        """Build or reuse the venv and start a child; a report: its id, pid and details, or
        the error (its type's name and message). With a ``listener`` (tcp), first wait for
        the driver's connection and its token: the child speaks the protocol on that socket
        itself, so frames never pass through this actor."""
        options = Options({**values, "backend": None})
        begun = time.monotonic()
        conn = None
        if listener:
            with self._lock:
                server, token = self._listeners.pop(listener)
            with server:
                conn = accept(server, token, min(timeout, ACCEPT_WAIT))
            if conn is None:
                message = "the driver did not connect to the tcp data plane with its token"
                return codec.encode({"error": "SandboxStartupError", "message": message})
        fd = None if conn is None else conn.fileno()

        async def start() -> ChildProcess:
            with anyio.fail_after(max(timeout - (time.monotonic() - begun), 0.001)):
                return await VenvBackend().start(options, resolved, label, protocol_fd=fd)

        try:
            process = anyio.run(start)
        except TimeoutError:
            message = f"building or starting took over {timeout:g} s"
            return codec.encode({"error": "SandboxTimeoutError", "message": message})
        except Exception as exc:
            kind = type(exc).__name__ if isinstance(exc, (SandboxError, OSError)) else "error"
            return codec.encode({"error": kind, "message": f"{type(exc).__name__}: {exc}"})
        finally:
            if conn is not None:
                conn.close()  # the child holds its own copy: the driver's EOF reaches it
        sid = next(self._ids)
        with self._lock:
            self._children[sid] = _Child(process)
        details = {key: value for key, value in process.details.items()
                   if key in ("venv_key", "packages")}  # fmt: skip
        return codec.encode({"id": sid, "pid": process.pid, "details": details})

    def _child(self, sid: int) -> _Child | None:
        with self._lock:
            return self._children.get(sid)

    def exchange(self, request: bytes) -> bytes:
        """Write one request frame and return the status byte and the reply frame.

        ``request`` is the child's id (``SID_BYTES``, little-endian) and then the frame, in one
        argument: each argument of an actor call costs Ray a serialization on both sides
        (measured: a second argument added 7-9% to a bare echo's round trip). An empty frame
        (the first call) returns the child's greeting: ``MAGIC`` and ``HELLO``."""
        child = self._child(int.from_bytes(request[:SID_BYTES], "little"))
        if child is None or not child.linked:
            return bytes([DEAD])
        with child.lock:
            try:
                view = memoryview(request)[SID_BYTES:]
                while view:
                    view = view[os.write(child.process.to_child, view) :]
                start = 0 if child.greeted else len(MAGIC)
                child.greeted = True
                if not self._fill(child, start + 4):
                    return self._dead(child)
                size = int.from_bytes(child.buffer[start : start + 4], "little")
                if size > MAX_FRAME or not self._fill(child, start + 4 + size):
                    return self._dead(child)  # the driver's reader names a bad header
            except OSError:
                return self._dead(child)
            end = start + 4 + size
            reply = bytes([ALIVE]) + child.buffer[:end]
            del child.buffer[:end]
            return reply

    @staticmethod
    def _fill(child: _Child, size: int) -> bool:
        """Read until ``size`` bytes are buffered; ``False`` at end-of-file."""
        while len(child.buffer) < size:
            data = os.read(child.process.from_child, READ)
            if not data:
                return False
            child.buffer += data
        return True

    @staticmethod
    def _dead(child: _Child) -> bytes:
        child.process.kill()  # it hung up, or sent a header no reader accepts
        reply = bytes([DEAD]) + child.buffer
        child.buffer.clear()
        return reply

    def report(self, sid: int, what: str, wait: float) -> bytes:
        """How a child died: exit status, pid and its last output."""
        child = self._child(sid)
        if child is None:  # stopped, or held by this actor before Ray restarted it
            report = {"exit_code": None, "pid": None, "tail": "", "gone": True}
            return codec.encode({**report, "restarted": sid >> 32 != self._epoch})
        error = child.process.crashed_error(what, wait=wait)
        return codec.encode(
            {
                "exit_code": error.exit_code,
                "pid": child.process.pid,
                "tail": child.process.output_tail(),
            }
        )

    def tail(self, sid: int) -> bytes:
        child = self._child(sid)
        return codec.encode(child.process.output_tail() if child is not None else "")

    def kill(self, sid: int) -> bytes:
        """Kill a child at once (a timeout, a torn request); its exchange then returns."""
        child = self._child(sid)
        if child is not None:
            child.process.kill()
        return b""

    def stop(self, sid: int, grace: float | None) -> bytes:
        """Stop a child (EOF, SIGTERM, SIGKILL, bounded) and forget it: its exit status."""
        with self._lock:
            child = self._children.pop(sid, None)
        if child is None:
            return codec.encode(None)
        code = child.process.stop(grace)
        return codec.encode(code)

    def shutdown(self) -> bytes:
        """Stop every child still held (before the actor is killed)."""
        with self._lock:
            sids = list(self._children)
        for sid in sids:
            self.stop(sid, 0.0)
        return b""


def accept(listener: socket.socket, token: bytes, timeout: float) -> socket.socket | None:
    """The first connection to ``listener`` within ``timeout`` s that sends ``token``
    (compared in constant time; any other is closed at once), blocking; ``None`` if none."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        listener.settimeout(max(end - time.monotonic(), 0.001))
        try:
            conn, _ = listener.accept()
        except OSError:
            return None
        conn.settimeout(min(TOKEN_WAIT, max(end - time.monotonic(), 0.001)))
        try:
            given = conn.recv(TOKEN_BYTES, socket.MSG_WAITALL)
        except OSError:
            given = b""
        if hmac.compare_digest(given, token):
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn
        conn.close()  # a stranger, or a wrong token: keep waiting for the driver
    return None
