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

The class is plain Python; ``ray_backend`` turns it into an actor class with ``ray.remote``.
A threaded actor (``max_concurrency``) lets ``kill``/``stop`` run while an ``exchange`` waits
on a busy child. When the actor process dies, its children see their request pipe close and
end themselves (the worker's watchdog), so a lost host leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import threading
from typing import Any

import anyio

from .._config import Options, Resolved
from .._errors import SandboxError
from .._wire import codec
from .._wire.protocol import MAGIC, MAX_FRAME
from .process import ChildProcess
from .venv import VenvBackend

__all__ = ["ALIVE", "DEAD", "Host"]

ALIVE = 0  # status byte: a whole frame follows
DEAD = 1  # status byte: what was read before the child hung up (or a bad header) follows


class _Child:
    """A child and the host's blocking reader of its replies."""

    def __init__(self, process: ChildProcess) -> None:
        self.process = process
        self.reader = io.FileIO(process.from_child, "rb", closefd=False)
        self.greeted = False
        self.lock = threading.Lock()  # one exchange at a time (the driver sends one anyway)


class Host:
    """A host actor's state: its sandbox children, by id."""

    def __init__(self) -> None:
        self._children: dict[int, _Child] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def ready(self) -> bytes:
        """Where this host runs (answered once it is placed and started)."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        ip = next((n.get("NodeManagerAddress") for n in ray.nodes() if n.get("NodeID") == node),
                  None) or ray.util.get_node_ip_address()  # fmt: skip
        return codec.encode({"node": node, "ip": ip, "pid": os.getpid()})

    def start(
        self, values: dict[str, Any], resolved: Resolved, label: str, timeout: float
    ) -> bytes:
        """Build or reuse the venv and start a child; a report: its id, pid and details, or
        the error (its type's name and message)."""
        options = Options({**values, "backend": None})

        async def start() -> ChildProcess:
            with anyio.fail_after(timeout):
                return await VenvBackend().start(options, resolved, label)

        try:
            process = anyio.run(start)
        except TimeoutError:
            message = f"building or starting took over {timeout:g} s"
            return codec.encode({"error": "SandboxTimeoutError", "message": message})
        except Exception as exc:
            kind = type(exc).__name__ if isinstance(exc, (SandboxError, OSError)) else "error"
            return codec.encode({"error": kind, "message": f"{type(exc).__name__}: {exc}"})
        sid = next(self._ids)
        with self._lock:
            self._children[sid] = _Child(process)
        details = {key: value for key, value in process.details.items()
                   if key in ("venv_key", "packages")}  # fmt: skip
        return codec.encode({"id": sid, "pid": process.pid, "details": details})

    def _child(self, sid: int) -> _Child | None:
        with self._lock:
            return self._children.get(sid)

    def exchange(self, sid: int, frame: bytes) -> bytes:
        """Write one request frame and return the status byte and the reply frame; the
        first call (an empty ``frame``) returns the child's greeting: ``MAGIC`` and ``HELLO``."""
        child = self._child(sid)
        if child is None:
            return bytes([DEAD])
        with child.lock:
            out = bytearray([ALIVE])
            try:
                if frame:
                    view = memoryview(frame)
                    while view:
                        view = view[os.write(child.process.to_child, view) :]
                if not child.greeted:
                    child.greeted = True
                    if not self._read(child.reader, out, len(MAGIC)):
                        return self._dead(child, out)
                if not self._read(child.reader, out, 4):
                    return self._dead(child, out)
                size = int.from_bytes(out[-4:], "little")
                if size > MAX_FRAME or not self._read(child.reader, out, size):
                    return self._dead(child, out)  # the driver's reader names a bad header
            except OSError:
                return self._dead(child, out)
            return bytes(out)

    @staticmethod
    def _read(reader: io.FileIO, out: bytearray, size: int) -> bool:
        """Append exactly ``size`` bytes to ``out``; ``False`` at end-of-file (``out`` then
        holds what did arrive)."""
        start = len(out)
        out.extend(bytes(size))
        filled = 0
        with memoryview(out) as whole:
            view = whole[start:]
            while filled < size:
                got = reader.readinto(view[filled:])
                if not got:
                    break
                filled += got
            view.release()
        if filled < size:
            del out[start + filled :]
            return False
        return True

    @staticmethod
    def _dead(child: _Child, out: bytearray) -> bytes:
        child.process.kill()  # it hung up, or sent a header no reader accepts
        out[0] = DEAD
        return bytes(out)

    def report(self, sid: int, what: str, wait: float) -> bytes:
        """How a child died: exit status, pid and its last output."""
        child = self._child(sid)
        if child is None:
            return codec.encode({"exit_code": None, "pid": None, "tail": "", "gone": True})
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
        with contextlib.suppress(OSError):
            child.reader.close()
        return codec.encode(code)

    def shutdown(self) -> bytes:
        """Stop every child still held (before the actor is killed)."""
        with self._lock:
            sids = list(self._children)
        for sid in sids:
            self.stop(sid, 0.0)
        return b""
