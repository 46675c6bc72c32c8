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
                    a packed step reply (below)

A packed step reply is the hot path's form of ``[OK, obs, reward, terminated, truncated,
info]`` when ``obs`` is a plain array of a dtype and shape the child sent before, ``reward``
a float, an int or a numpy float, the flags bools and ``info`` a dict: a fixed struct, the
info as a codec value, then the observation as a bare array payload. It starts with 0xC1, a
byte msgpack never uses, so it cannot be mistaken for a codec value::

    u8 0xC1 | u8 flags | u8 reward kind | pad | 8-byte reward | u32 info length | info | array

``flags``: bit 0 terminated, bit 1 truncated, bits 2/3 set when that flag is a ``numpy.bool_``.
Reward kinds: 0 float, 1 int (as int64), 2 ``numpy.float64``, 3 ``numpy.float32`` (as float64,
which holds every float32 exactly). ``decode_message`` returns it as the OK list, so no caller
can tell the two forms apart. Packing skips msgpack's per-value dispatch, on both sides.

Every request gets exactly one reply, in order. The child never sends pickles; the host never
unpickles. Both sides use this module; it imports only the standard library, numpy and the
codec.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from .._errors import ProtocolError, RemoteEnvError
from .codec import ND, Encoder, UnsafeValueError, array_at, unpack

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "FrameReader",
    "RequestEncoder",
    "check_hello",
    "decode_message",
    "frame_header",
    "raise_for_reply",
    "step_packer",
    "version_mismatch",
]

PROTOCOL_VERSION = 2  # 2: packed step replies
MAGIC = b"\x00RLMESH\x01"
MAX_FRAME = 256 * 1024 * 1024  # bytes of one payload; larger is a ProtocolError
MAX_PREAMBLE = 64 * 1024  # bytes tolerated before MAGIC (stdio transports only)

# Message kinds.
MAKE, RESET, STEP, RENDER, CLOSE, SPACE_SAMPLE, SPACE_CONTAINS, PICKLED = range(1, 9)
CALL, GET_ATTR, SET_ATTR = range(9, 12)  # vector envs: env.call / get_attr / set_attr
SHM_SETUP = 12  # vector envs: [SHM_SETUP, nbytes] -> [OK, memfd number in the child]
# The seals the child puts on that memfd, and the host requires before it maps it: the size
# is fixed (a shrunk file would kill the host with SIGBUS), and so are the seals.
# F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW (Linux's values; fcntl names them from 3.8 on).
SHM_SEALS = 0x0001 | 0x0002 | 0x0004
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


BIG_FRAME = 1 << 20  # payloads from this size are assembled in place, in a buffer of their own


class FrameReader:
    """Turns received bytes into payloads. Feed it whatever a read returned.

    A payload of ``BIG_FRAME`` bytes or more is copied once, into a ``bytearray`` of its
    size made when its header arrives, and handed over as that ``bytearray``: a 250 MiB
    reply costs the host 250 MiB, not a growing buffer plus two copies of it.

    Args:
        expect_magic: Wait for ``MAGIC`` before the first frame (the host side does).
        max_frame: The largest payload accepted.
    """

    def __init__(self, *, expect_magic: bool = True, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._synced = not expect_magic
        self._max_frame = max_frame
        self._need = 0  # size of the frame being assembled, 0 if none
        self._big: bytearray | None = None  # a large payload being assembled in place
        self._filled = 0  # bytes of it received

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a payload."""
        return len(self._buffer) + self._filled

    def wanted(self) -> int:
        """How many more bytes would complete the frame in progress (at least 1)."""
        if self._big is not None:
            return max(1, len(self._big) - self._filled)
        if self._need:
            return max(1, self._need + 4 - len(self._buffer))
        return max(1, 4 - len(self._buffer))

    def whole(self, data: bytes) -> bytes | None:
        """The payload if ``data`` is exactly one whole frame and nothing is pending, else
        ``None`` (then ``feed`` it). The cheap path for a reply read in one piece."""
        if self._buffer or self._big is not None or not self._synced or len(data) < 4:
            return None
        (size,) = HEADER.unpack_from(data)
        if len(data) != 4 + size or size > self._max_frame:
            return None
        return data[4:]

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | bytearray]:
        """Add ``data``; return the complete payloads now available, in order."""
        payloads: list[bytes | bytearray] = []
        big = self._big
        if big is not None:
            view = memoryview(data)
            take = min(len(view), len(big) - self._filled)
            big[self._filled : self._filled + take] = view[:take]
            self._filled += take
            if self._filled < len(big):
                return payloads
            payloads.append(big)
            self._big, self._filled = None, 0
            data = view[take:]
            if not data:
                return payloads
        buffer = self._buffer
        if self._synced and not buffer and len(data) >= 4:
            # Fast path: exactly one whole frame, the common case for a reply.
            (size,) = HEADER.unpack_from(data)
            if len(data) == 4 + size and size <= self._max_frame:
                payloads.append(bytes(data[4:]))
                return payloads
        buffer += data
        if not self._synced:
            at = buffer.find(MAGIC)
            if at < 0:
                if len(buffer) > MAX_PREAMBLE:
                    raise ProtocolError(
                        "the sandbox wrote to the protocol stream before the worker started: "
                        f"{bytes(buffer[:200])!r}"
                    )
                return payloads
            del buffer[: at + len(MAGIC)]
            self._synced = True
        while len(buffer) >= 4:
            (size,) = HEADER.unpack_from(buffer)
            if size > self._max_frame:
                raise ProtocolError(
                    f"the sandbox announced a frame of {size} bytes, over the "
                    f"{self._max_frame}-byte limit"
                )
            end = 4 + size
            if len(buffer) < end:
                if size >= BIG_FRAME:  # assemble it in place from here on
                    big = bytearray(size)
                    with memoryview(buffer) as view:
                        big[: len(buffer) - 4] = view[4:]
                    self._big, self._filled = big, len(buffer) - 4
                    buffer.clear()
                    self._need = 0
                else:
                    self._need = size
                break
            with memoryview(buffer) as view:
                payload = view[4:end]
                payloads.append(bytearray(payload) if size >= BIG_FRAME else bytes(payload))
                payload.release()
            del buffer[:end]
            self._need = 0
        return payloads


PACKED_STEP = 0xC1  # the first byte of a packed step reply (msgpack never uses it)
_PACKED = struct.Struct("<BBBxdI")  # marker, flags, reward kind, pad, reward, info length
_FRAMED_PACKED = struct.Struct("<IBBBxdI")  # the frame header, then _PACKED
_INT_REWARD = struct.Struct("<q")
_BOOLS = ((False, True), (np.False_, np.True_))
_FLAGS = [  # flags -> (terminated, truncated)
    (_BOOLS[flags >> 2 & 1][flags & 1], _BOOLS[flags >> 3 & 1][flags >> 1 & 1])
    for flags in range(16)
]
_NUMPY_REWARDS = {2: np.float64, 3: np.float32}
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def step_packer(encoder: Encoder) -> Any:
    """A function returning a step's results as a whole frame holding a packed step reply,
    or ``None`` if they do not fit the packed form (then send the OK list). Uses
    ``encoder``'s array headers."""
    framed, int_reward = _FRAMED_PACKED.pack, _INT_REWARD.pack
    array_header, pack_info, reset = encoder.array_header, encoder.pack_fast, encoder.reset
    ndarray, np_bool, f64, f32 = np.ndarray, np.bool_, np.float64, np.float32
    # The last observation's dtype, shape and array header, and the payload size they make.
    last_dtype: Any = None
    last_shape: Any = None
    last_header = b""
    last_size = 0

    def pack(obs: Any, reward: Any, terminated: Any, truncated: Any, info: Any) -> bytes | None:
        nonlocal last_dtype, last_shape, last_header, last_size
        if type(obs) is not ndarray or type(info) is not dict:
            return None
        if obs.dtype is not last_dtype or obs.shape != last_shape:
            header = array_header(obs)
            if header is None:
                return None
            last_dtype, last_shape, last_header = obs.dtype, obs.shape, header
            last_size = _PACKED.size + len(header) + obs.nbytes
        kind = type(terminated)
        if kind is bool:
            flags = 1 if terminated else 0
        elif kind is np_bool:
            flags = 5 if terminated else 4
        else:
            return None
        kind = type(truncated)
        if kind is bool:
            flags |= 2 if truncated else 0
        elif kind is np_bool:
            flags |= 10 if truncated else 8
        else:
            return None
        if info:
            try:
                data = pack_info(info)
            except Exception:  # not packable as is: the OK list's full encoder handles it
                reset()
                return None
        else:
            data = b""
        size = len(data)
        kind = type(reward)
        if kind is float:
            head = framed(last_size + size, PACKED_STEP, flags, 0, reward, size)
        elif kind is f64:
            head = framed(last_size + size, PACKED_STEP, flags, 2, reward, size)
        elif kind is f32:
            head = framed(last_size + size, PACKED_STEP, flags, 3, reward, size)
        elif kind is int and _INT_MIN <= reward <= _INT_MAX:
            head = framed(last_size + size, PACKED_STEP, flags, 1, 0.0, size)
            head = head[:8] + int_reward(reward) + head[16:]
        else:
            return None
        return head + data + last_header + obs.tobytes()  # type: ignore[no-any-return]

    return pack


def _unpack_step(payload: bytes | bytearray) -> list[Any]:
    _, flags, kind, reward, size = _PACKED.unpack_from(payload)
    start = 16 + size
    info = unpack(payload[16:start]) if size else {}
    if type(info) is not dict:
        raise ValueError("bad packed step reply")
    if kind:
        if kind == 1:
            (reward,) = _INT_REWARD.unpack_from(payload, 4)
        else:
            reward = _NUMPY_REWARDS[kind](reward)  # an unknown kind: KeyError
    terminated, truncated = _FLAGS[flags]  # unknown flags: IndexError
    return [OK, array_at(payload, start), reward, terminated, truncated, info]


_EXT_AT = {0xC8: (">H", 3), 0xC9: (">I", 5)}  # ext 16/32: length format, type byte offset


def _unpack_in_place(payload: bytes | bytearray) -> list[Any] | None:
    """A large ``[kind, array, *rest]`` message with the array read straight from the
    payload (msgpack would hand its extension hook a copy of it, to be copied again), or
    ``None`` if the message is not of that form."""
    head = payload[0]
    if not 0x92 <= head <= 0x9F or payload[1] >= 0x80:  # a short list; a small int kind
        return None
    form = _EXT_AT.get(payload[2])
    if form is None or payload[2 + form[1]] != ND:
        return None
    (length,) = struct.unpack_from(form[0], payload, 3)
    start = 2 + form[1] + 1
    end = start + length
    array = array_at(payload, start, end)
    rest = unpack(bytes([0x90 | (head & 0x0F) - 2]) + memoryview(payload)[end:])
    return [payload[1], array, *rest]


def _why(exc: Exception) -> str:
    if type(exc).__name__ == "StackError":  # msgpack's, which says nothing itself
        return "lists and dicts nested deeper than msgpack's limit of 1024 levels"
    return repr(exc)


def decode_message(payload: bytes | bytearray) -> list[Any]:
    """Decode one payload into a message list, or raise ``ProtocolError``."""
    try:
        if payload[0] == PACKED_STEP:
            return _unpack_step(payload)
        message = None
        if len(payload) >= BIG_FRAME:
            message = _unpack_in_place(payload)
        if message is None:
            message = unpack(payload)
    except Exception as exc:
        raise ProtocolError(f"malformed message from the sandbox: {_why(exc)}") from None
    if type(message) is not list or not message or type(message[0]) is not int:
        raise ProtocolError(f"malformed message from the sandbox: {message!r:.200}")
    return message


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
