"""The safe value codec: Python and numpy values <-> bytes, with no code execution on decode.

Everything the child sends to the host goes through this codec, so decoding must never run
code named by the bytes (no pickle). The format is msgpack (a well-kept C codec, much faster
than hand-written packing in Python) with a few extension types for what msgpack lacks:

=====  ==============  ========================================================
code   Python type     payload
=====  ==============  ========================================================
1      numpy.ndarray   u16 header length, u16 descr length, descr, u8 ndim,
                       u64 shape..., then the data (C order)
2      numpy scalar    u16 descr length, dtype descr, data (one item)
3      tuple           a msgpack array
4      int > 64 bits   decimal ASCII
5      set             a msgpack array
6      frozenset       a msgpack array
7      complex         two little-endian float64
8      GraphInstance   a msgpack array of (nodes, edges, edge_links)
9      anything else   (child to host only) a msgpack array (type name, repr): RemoteObject
10     object ndarray  a msgpack array (shape, flat list of its elements, each safe)
=====  ==============  ========================================================

Types are preserved exactly: dtypes, tuple vs list, ``np.int64`` vs ``int``, ``np.float32``
scalars. Decoded arrays are writable copies owned by the caller.

Nesting is bounded. Every extension type that holds values (tuple, set, GraphInstance, ...)
is a msgpack document of its own, so decoding one nested in another recurses on the C stack,
about 40 KB a level: a reply a few hundred levels deep would crash the host. ``MAX_DEPTH``
levels of them are accepted; deeper input is a ``ValueError`` (the host reports it as a
``ProtocolError``). The child's encoder sends what lies deeper as a ``RemoteObject``; the
host's refuses it with ``NestingError``.

Only the standard library, numpy and msgpack are imported here: the sandbox worker uses it.
"""

from __future__ import annotations

import functools
import json
import struct
import threading
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

__all__ = [
    "MAX_DEPTH",
    "Decoder",
    "Encoder",
    "NestingError",
    "RemoteObject",
    "UnsafeValueError",
    "array_at",
    "decode",
    "encode",
    "unpack",
]

ND, SCALAR, TUPLE, BIGINT, SET, FROZENSET, COMPLEX, GRAPH, OPAQUE, OBJARRAY = range(1, 11)

#: Extension values (tuples, sets, graphs, object arrays) nested in each other, at most.
#: Plain lists and dicts do not count: msgpack walks those without recursing.
MAX_DEPTH = 32

_ExtType = msgpack.ExtType
_tuple_new = tuple.__new__


def _ext(code: int, data: bytes) -> Any:
    """An ExtType without its Python-level argument checks (3x cheaper; ours are valid)."""
    return _tuple_new(_ExtType, (code, data))


_ndarray = np.ndarray
_generic = np.generic
_frombuffer = np.frombuffer
_U16 = struct.Struct("<H")


class UnsafeValueError(TypeError):
    """A value has no safe encoding (and the encoder was told not to make it opaque)."""


class NestingError(ValueError):
    """A value nests tuples, sets or other extension types deeper than ``MAX_DEPTH``."""


def _too_deep(what: str) -> str:
    return (
        f"{what} nests tuples, sets, graphs or object arrays more than {MAX_DEPTH} levels "
        "deep, which cannot cross the sandbox; flatten it (lists and dicts do not count)"
    )


@dataclass(frozen=True)
class RemoteObject:
    """A value from the sandbox that has no safe encoding, kept as its type name and repr.

    The host never rebuilds arbitrary objects from sandbox bytes; an ``info`` entry holding,
    say, a custom class instance arrives as a ``RemoteObject`` instead.
    """

    type_name: str
    repr: str


def _dtype_descr(dtype: np.dtype[Any]) -> bytes:
    if dtype.fields is None and dtype.subdtype is None:
        if dtype.kind == "O":
            raise UnsafeValueError("numpy arrays of dtype=object cannot cross the sandbox safely")
        text: str = dtype.str
        return text.encode()
    if dtype.hasobject:
        raise UnsafeValueError("numpy arrays holding Python objects cannot cross the sandbox")
    descr: Any = np.lib.format.dtype_to_descr(dtype)
    return b"!" + json.dumps(descr).encode()


def _as_descr_tuples(value: Any) -> Any:
    if isinstance(value, list):
        if value and all(isinstance(item, list) for item in value):
            return [tuple(_as_descr_tuples(v) for v in item) for item in value]
        return tuple(_as_descr_tuples(v) for v in value)
    return value


def _parse_descr(raw: bytes) -> np.dtype[Any]:
    if raw[:1] == b"!":
        dtype: np.dtype[Any] = np.dtype(_as_descr_tuples(json.loads(raw[1:])))
    else:
        dtype = np.dtype(raw.decode())
    if dtype.hasobject:
        raise ValueError("object dtypes are not allowed")
    return dtype


class Encoder:
    """Packs values into bytes. Not thread-safe: give each channel its own.

    Args:
        opaque: Encode values with no safe form as ``RemoteObject`` (child side) instead of
            raising ``UnsafeValueError`` (host side).
    """

    def __init__(self, *, opaque: bool = False) -> None:
        self._opaque = opaque
        self._depth = 0  # extension values being packed, one inside the other
        # (id(dtype), shape) -> (dtype, header): ids are cheap to hash, the dtype check
        # guards against a reused id.
        self._headers: dict[tuple[int, tuple[int, ...]], tuple[Any, bytes]] = {}
        self._packer = msgpack.Packer(default=self._default, strict_types=True, use_bin_type=True)
        #: The raw packer's ``pack``: fastest, but raises ``UnsafeValueError`` or
        #: ``OverflowError`` where ``encode`` would handle the value.
        self.pack_fast = self._packer.pack
        #: Clears the packer's buffer after ``pack_fast`` raised.
        self.reset = self._packer.reset

    def array(self, value: Any) -> Any:
        """``value`` as its extension type if it is a plain array of a dtype and shape seen
        before (the step hot path, which saves msgpack a ``default`` round trip); else
        ``value`` itself."""
        if type(value) is _ndarray:
            head = self.array_header(value)
            if head is not None:
                return _ext(ND, head + value.tobytes())
        return value

    def array_header(self, value: np.ndarray[Any, Any]) -> bytes | None:
        """The ND extension header of a plain array if this encoder has packed one of its
        dtype and shape before, else ``None``. Header and ``value.tobytes()`` make the
        payload that ``array_at`` reads."""
        dtype = value.dtype
        cached = self._headers.get((id(dtype), value.shape))
        if cached is not None and cached[0] is dtype:
            return cached[1]
        return None

    def encode(self, value: Any) -> bytes:
        """Return the bytes of ``value``."""
        try:
            return self._packer.pack(value)  # type: ignore[no-any-return]
        except OverflowError:
            self._packer.reset()
            return self._packer.pack(_widen_ints(value))  # type: ignore[no-any-return]
        except BaseException:
            self._packer.reset()
            raise

    def _nested(self, code: int, obj: Any, items: Any) -> Any:
        """The extension value ``code`` of ``obj``, whose values are ``items``."""
        if self._depth >= MAX_DEPTH:
            if self._opaque:  # the child: what lies deeper travels as its type and repr
                return self._opaque_value(obj)
            raise NestingError(_too_deep(f"a {_type_name(obj)}"))
        values = list(items)
        self._depth += 1
        try:
            packed = msgpack.packb(
                values, default=self._default, strict_types=True, use_bin_type=True
            )
        except OverflowError:
            packed = msgpack.packb(
                _widen_ints(values), default=self._default, strict_types=True, use_bin_type=True
            )
        finally:
            self._depth -= 1
        return _ext(code, packed)

    def _opaque_value(self, obj: Any) -> Any:
        text = msgpack.packb([_type_name(obj), _safe_repr(obj)], use_bin_type=True)
        return _ext(OPAQUE, text)

    def _default(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is _ndarray:
            dtype = obj.dtype
            cached = self._headers.get((id(dtype), obj.shape))
            if cached is None or cached[0] is not dtype:
                if dtype.kind == "O":  # elements travel one by one, each through this codec
                    return self._nested(OBJARRAY, obj, (list(obj.shape), list(obj.ravel())))
                if dtype.hasobject and self._opaque:
                    return self._opaque_value(obj)
                cached = (dtype, _nd_header(obj))
                if len(self._headers) < 256:
                    self._headers[(id(dtype), obj.shape)] = cached
            return _ext(ND, cached[1] + obj.tobytes())
        if isinstance(obj, _generic):
            descr = _dtype_descr(obj.dtype)
            return _ext(SCALAR, _U16.pack(len(descr)) + descr + obj.tobytes())
        if isinstance(obj, tuple):
            if kind.__name__ == "GraphInstance" and getattr(kind, "_fields", None) == (
                "nodes",
                "edges",
                "edge_links",
            ):
                return self._nested(GRAPH, obj, obj)
            return self._nested(TUPLE, obj, obj)
        if isinstance(obj, bool):
            return bool(obj)
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return float(obj)
        if isinstance(obj, str):
            return str(obj)
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return bytes(obj)
        if isinstance(obj, dict):
            return dict(obj)
        if isinstance(obj, list):
            return list(obj)
        if isinstance(obj, _ndarray):  # an ndarray subclass: keep the data, drop the subclass
            return self._default(np.asarray(obj))
        if isinstance(obj, frozenset):
            return self._nested(FROZENSET, obj, obj)
        if isinstance(obj, set):
            return self._nested(SET, obj, obj)
        if isinstance(obj, complex):
            return _ext(COMPLEX, struct.pack("<2d", obj.real, obj.imag))
        if self._opaque:
            return self._opaque_value(obj)
        raise UnsafeValueError(
            f"a value of type {_type_name(obj)} cannot cross the sandbox safely; use numpy "
            "arrays, numbers, str, bytes, None and dict/list/tuple of them"
        )


def _nd_header(array: np.ndarray[Any, Any]) -> bytes:
    """u16 header length, u16 descr length, descr, u8 ndim, u64 shape... (little-endian)."""
    descr = _dtype_descr(array.dtype)
    body = (
        _U16.pack(len(descr))
        + descr
        + bytes([array.ndim])
        + struct.pack(f"<{array.ndim}Q", *array.shape)
    )
    return _U16.pack(len(body) + 2) + body


def _type_name(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _safe_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the sandbox
        text = f"<unrepresentable {_type_name(obj)}: {exc!r}>"
    return text[:1000]


def _widen_ints(value: Any) -> Any:
    """Replace ints outside msgpack's 64-bit range, so they travel as BIGINT (slow path)."""
    if type(value) is int:
        if -(2**63) <= value < 2**64:
            return value
        return _ext(BIGINT, str(value).encode())
    if type(value) is list:
        return [_widen_ints(v) for v in value]
    if type(value) is dict:
        return {_widen_ints(k): _widen_ints(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(_widen_ints(v) for v in value)
    return value


class _Depth(threading.local):
    """Extension values being decoded, one inside the other, in this thread."""

    level = 0


_depth = _Depth()


def _nested_list(data: bytes) -> list[Any]:
    depth = _depth
    if depth.level >= MAX_DEPTH:
        raise NestingError(_too_deep("the message"))
    depth.level += 1
    try:
        value = msgpack.unpackb(data, ext_hook=_ext_hook, strict_map_key=False, raw=False)
    finally:
        depth.level -= 1
    if type(value) is not list:
        raise ValueError("extension payload is not an array")
    return value


# header bytes -> (dtype, shape, item count, byte size, is 1-D)
_nd_cache: dict[bytes, tuple[np.dtype[Any], tuple[int, ...], int, int, bool]] = {}


def _parse_nd_header(head: bytes) -> tuple[np.dtype[Any], tuple[int, ...], int, int, bool]:
    (n,) = _U16.unpack_from(head, 2)
    dtype = _parse_descr(head[4 : 4 + n])
    ndim = head[4 + n]
    if len(head) != 5 + n + 8 * ndim:
        raise ValueError("bad array header")
    shape = struct.unpack_from(f"<{ndim}Q", head, 5 + n)
    count = 1
    for dim in shape:
        count *= dim
    parsed = (dtype, shape, count, count * dtype.itemsize, ndim == 1)
    if len(_nd_cache) < 1024:
        _nd_cache[head] = parsed
    return parsed


# The last header read and its parse: a step loop sees the same one again and again.
_last_nd: tuple[bytes, tuple[np.dtype[Any], tuple[int, ...], int, int, bool]] = (
    b"\x00\x00",  # a placeholder no payload passes: its size (-1) never matches
    (np.dtype("u1"), (0,), 0, -1, True),
)


#: Arrays from this size decoded from a ``bytearray`` payload (which the frame reader hands
#: over for the caller to own) are views of it when aligned: no copy of a large observation.
VIEW_MIN = 1 << 20


def array_at(data: bytes | bytearray, start: int, end: int | None = None) -> np.ndarray[Any, Any]:
    """The array whose ND extension payload fills ``data`` from ``start`` to ``end`` (its
    end by default); ``ValueError`` if the payload is malformed.

    The array is the caller's and writable: a copy, or for a large one in a ``bytearray``
    (a payload the caller owns, from the frame reader) a view of it.
    """
    global _last_nd
    head, parsed = _last_nd
    if data.startswith(head, start):  # its first two bytes are its length: all of it matched
        size = len(head)
    else:
        if len(data) < start + 2:
            raise ValueError("truncated array header")
        size = data[start] | data[start + 1] << 8
        if size < 5:
            raise ValueError("bad array header")
        head = bytes(data[start : start + size])
        cached = _nd_cache.get(head)
        parsed = _parse_nd_header(head) if cached is None else cached
        _last_nd = (head, parsed)
    dtype, shape, count, nbytes, flat = parsed
    if (len(data) if end is None else end) - start - size != nbytes:
        raise ValueError("array payload size does not match its shape")
    if count == 0:
        return np.zeros(shape, dtype)
    offset = start + size
    array: np.ndarray[Any, Any] = _frombuffer(data, dtype, count, offset)
    if not flat:
        array = array.reshape(shape)
    if nbytes >= VIEW_MIN and type(data) is bytearray and offset % dtype.alignment == 0:
        return array
    return array.copy()  # type: ignore[no-any-return]


def _ext_hook(code: int, data: bytes) -> Any:
    if code == ND:
        return array_at(data, 0)
    if code == SCALAR:
        (n,) = _U16.unpack_from(data)
        dtype = _parse_descr(data[2 : 2 + n])
        if len(data) - 2 - n != dtype.itemsize:
            raise ValueError("scalar payload size does not match its dtype")
        return _frombuffer(data, dtype, count=1, offset=2 + n)[0]
    if code == TUPLE:
        return tuple(_nested_list(data))
    if code == BIGINT:
        return int(data.decode("ascii"))
    if code == SET:
        return set(_nested_list(data))
    if code == FROZENSET:
        return frozenset(_nested_list(data))
    if code == COMPLEX:
        real, imag = struct.unpack("<2d", data)
        return complex(real, imag)
    if code == GRAPH:
        from gymnasium.spaces import GraphInstance

        nodes, edges, links = _nested_list(data)
        return GraphInstance(nodes, edges, links)
    if code == OBJARRAY:
        shape, items = _nested_list(data)
        array = np.empty(len(items), dtype=object)
        for index, item in enumerate(items):  # one by one: equal-shape arrays must not merge
            array[index] = item
        return array.reshape(shape)
    if code == OPAQUE:  # two strings: no extension types inside, and no nesting to count
        parts = msgpack.unpackb(data, raw=False)
        if type(parts) is not list or len(parts) != 2:
            raise ValueError("bad RemoteObject payload")
        return RemoteObject(str(parts[0]), str(parts[1]))
    raise ValueError(f"unknown extension type {code}")


#: ``unpack(data)``: the value encoded in ``data`` (a C-level partial: no Python frame).
unpack = functools.partial(msgpack.unpackb, ext_hook=_ext_hook, strict_map_key=False, raw=False)


class Decoder:
    """Unpacks bytes made by ``Encoder``; raises ``ValueError`` (or a subclass) on bad input."""

    __slots__ = ()

    def decode(self, data: bytes | memoryview) -> Any:
        """Return the value encoded in ``data``."""
        return unpack(data)


def encode(value: Any) -> bytes:
    """Encode one value (host-side strictness). Convenience for tests and tools."""
    return Encoder().encode(value)


def decode(data: bytes | memoryview) -> Any:
    """Decode one value made by ``encode``."""
    return Decoder().decode(data)
