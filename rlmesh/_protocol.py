"""The wire protocol between host and sandbox: framing, message kinds, handshake. No I/O.

A byte stream in each direction. The child first writes ``MAGIC`` (so the host can tell its
worker from anything else that wrote to the stream), then frames. A frame is a 4-byte
little-endian payload length and the payload; the payload is one codec value, a list whose
first item is the message kind::

    host -> child   [MAKE, request] [RESET, seed, options] [STEP, action] [RENDER] [CLOSE]
                    [SPACE_SAMPLE, which] [SPACE_CONTAINS, which, value]
                    [CALL, name, args, kwargs] [GET_ATTR, name] [SET_ATTR, name, values]
                    [SHM_SETUP, nbytes]
                    [PICKLED, cloudpickle bytes of one of the above]   (host -> child only)
    child -> host   [HELLO, versions]  once, unprompted, first
                    [OK, *values]      the reply to a request
                    [OK_SHM, None, *values]  a reply whose observations are in shared memory
                    [ERROR, type name, message, traceback text]

Every request gets exactly one reply, in order. The child never sends pickles; the host never
unpickles. Both sides use this module; it imports only the standard library and the codec.
"""

from __future__ import annotations

import struct
from typing import Any

from ._codec import Encoder, UnsafeValueError, unpack
from ._errors import ProtocolError, RemoteEnvError

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "FrameReader",
    "RequestEncoder",
    "check_hello",
    "decode_message",
    "frame_header",
    "raise_for_reply",
    "version_mismatch",
]

PROTOCOL_VERSION = 1
MAGIC = b"\x00RLMESH\x01"
MAX_FRAME = 256 * 1024 * 1024  # bytes of one payload; larger is a ProtocolError
MAX_PREAMBLE = 64 * 1024  # bytes tolerated before MAGIC (stdio transports only)

# Message kinds.
MAKE, RESET, STEP, RENDER, CLOSE, SPACE_SAMPLE, SPACE_CONTAINS, PICKLED = range(1, 9)
CALL, GET_ATTR, SET_ATTR = range(9, 12)  # vector envs: env.call / get_attr / set_attr
SHM_SETUP = 12  # vector envs: [SHM_SETUP, nbytes] -> [OK, memfd number in the child]
HELLO, OK, ERROR = 100, 101, 102
OK_SHM = 103  # as OK, but the observations (item 1) are in the shared buffer, item 1 is None

HEADER = struct.Struct("<I")  # a frame's payload length


def frame_too_large(size: int) -> str:
    """The message for a payload over ``MAX_FRAME``."""
    return f"a message of {size} bytes exceeds the {MAX_FRAME}-byte frame limit"


def frame_header(size: int) -> bytes:
    """The 4-byte header of a payload of ``size`` bytes.

    Raises ``ValueError`` (nothing was sent, the sandbox stays usable) if it is too large.
    """
    if size > MAX_FRAME:
        raise ValueError(frame_too_large(size))
    return HEADER.pack(size)


class FrameReader:
    """Turns received bytes into payloads. Feed it whatever a read returned.

    Args:
        expect_magic: Wait for ``MAGIC`` before the first frame (the host side does).
        max_frame: The largest payload accepted.
    """

    def __init__(self, *, expect_magic: bool = True, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._synced = not expect_magic
        self._max_frame = max_frame
        self._need = 0  # size of the frame being assembled, 0 if none

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a payload."""
        return len(self._buffer)

    def wanted(self) -> int:
        """How many more bytes would complete the frame in progress (at least 1)."""
        if self._need:
            return max(1, self._need + 4 - len(self._buffer))
        return max(1, 4 - len(self._buffer))

    def whole(self, data: bytes) -> bytes | None:
        """The payload if ``data`` is exactly one whole frame and nothing is pending, else
        ``None`` (then ``feed`` it). The cheap path for a reply read in one piece."""
        if self._buffer or not self._synced or len(data) < 4:
            return None
        (size,) = HEADER.unpack_from(data)
        if len(data) != 4 + size or size > self._max_frame:
            return None
        return data[4:]

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data``; return the complete payloads now available, in order."""
        buffer = self._buffer
        if self._synced and not buffer and len(data) >= 4:
            # Fast path: exactly one whole frame, the common case for a reply.
            (size,) = HEADER.unpack_from(data)
            if len(data) == 4 + size and size <= self._max_frame:
                return [bytes(data[4:])]
        buffer += data
        if not self._synced:
            at = buffer.find(MAGIC)
            if at < 0:
                if len(buffer) > MAX_PREAMBLE:
                    raise ProtocolError(
                        "the sandbox wrote to the protocol stream before the worker started: "
                        f"{bytes(buffer[:200])!r}"
                    )
                return []
            del buffer[: at + len(MAGIC)]
            self._synced = True
        payloads = []
        while len(buffer) >= 4:
            (size,) = HEADER.unpack_from(buffer)
            if size > self._max_frame:
                raise ProtocolError(
                    f"the sandbox announced a frame of {size} bytes, over the "
                    f"{self._max_frame}-byte limit"
                )
            end = 4 + size
            if len(buffer) < end:
                self._need = size
                break
            payloads.append(bytes(buffer[4:end]))
            del buffer[:end]
            self._need = 0
        return payloads


def decode_message(payload: bytes) -> list[Any]:
    """Decode one payload into a message list, or raise ``ProtocolError``."""
    try:
        message = unpack(payload)
    except Exception as exc:
        raise ProtocolError(f"malformed message from the sandbox: {exc!r}") from None
    if type(message) is not list or not message or type(message[0]) is not int:
        raise ProtocolError(f"malformed message from the sandbox: {message!r:.200}")
    return message  # type: ignore[no-any-return]


class RequestEncoder:
    """Encodes host requests: the safe codec first, cloudpickle when a value needs it."""

    def __init__(self) -> None:
        self._encoder = Encoder()
        self._pack = self._encoder.pack_fast

    def encode(self, message: list[Any]) -> bytes:
        try:
            return self._pack(message)  # type: ignore[no-any-return]
        except (UnsafeValueError, OverflowError):
            pass
        try:
            return self._encoder.encode(message)
        except UnsafeValueError:
            import cloudpickle  # host -> child only; the child may unpickle what we send

            return self._encoder.encode([PICKLED, cloudpickle.dumps(message)])


def raise_for_reply(message: list[Any], length: int) -> None:
    """Raise the error a non-OK reply stands for, or ``ProtocolError`` for a wrong shape."""
    kind = message[0]
    if kind == ERROR and len(message) == 4:
        remote_type, text, trace = (str(part) for part in message[1:])
        raise RemoteEnvError(remote_type, text, trace)
    if kind == OK:
        raise ProtocolError(f"reply has {len(message) - 1} values where {length - 1} were expected")
    raise ProtocolError(f"unexpected message kind {kind} from the sandbox")


def check_hello(message: list[Any]) -> dict[str, Any]:
    """Validate the shape of the child's HELLO; return its version info.

    A protocol mismatch is found by ``version_mismatch`` and reported by the caller as a
    startup error that names both versions.
    """
    if message[0] != HELLO or len(message) != 2 or not isinstance(message[1], dict):
        raise ProtocolError(f"expected HELLO from the sandbox, got {message!r:.200}")
    info: dict[str, Any] = message[1]
    return info


def version_mismatch(info: dict[str, Any], *, host_rlmesh: str) -> str | None:
    """Return a message if the child's protocol differs from ours, else ``None``."""
    theirs = info.get("protocol")
    if theirs == PROTOCOL_VERSION:
        return None
    return (
        f"the sandbox speaks rlmesh protocol {theirs} (rlmesh {info.get('rlmesh', '?')}), "
        f"the host speaks protocol {PROTOCOL_VERSION} (rlmesh {host_rlmesh}); "
        "leave rlmesh_package unset to install the host's own rlmesh in the sandbox, or "
        f"install the same release on both sides (rlmesh_package='rlmesh=={host_rlmesh}' once "
        "it is published, or rlmesh_package='local' with a freshly built wheel in dist/)"
    )
