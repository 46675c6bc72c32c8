"""The safe codec keeps types exactly and never runs code from the bytes it decodes."""

from __future__ import annotations

import contextlib
import pickle
from typing import Any

import numpy as np
import pytest
from gymnasium.spaces import GraphInstance
from hypothesis import given, settings
from hypothesis import strategies as st

from rlmesh import ProtocolError
from rlmesh._wire.codec import Decoder, Encoder, RemoteObject, UnsafeValueError, decode, encode
from rlmesh._wire.protocol import decode_message


def roundtrip(value: Any, *, opaque: bool = False) -> Any:
    return Decoder().decode(Encoder(opaque=opaque).encode(value))


def same(a: Any, b: Any) -> bool:
    """Equal values of exactly the same types, recursively (arrays: dtype, shape, data)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=False)
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and (a == b or (a != a and b != b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "<U7", "S3", ">i4",
    "datetime64[s]", "timedelta64[ms]",
]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3), (1, 2, 1, 2)])
def test_arrays_of_every_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    array = np.zeros(shape, dtype=dtype)
    out = roundtrip(array)
    assert same(array, out)
    assert out.flags.writeable


def test_array_views_and_structured_dtypes() -> None:
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    assert same(base.T.copy(), roundtrip(base.T))  # non-contiguous input
    assert same(base[::2, 1:3].copy(), roundtrip(base[::2, 1:3]))
    rec = np.zeros(3, dtype=[("pos", "<f4", (2,)), ("id", "<i8")])
    rec["id"] = [1, 2, 3]
    out = roundtrip(rec)
    assert out.dtype == rec.dtype and out.tobytes() == rec.tobytes()


@pytest.mark.parametrize(
    "value",
    [
        np.int64(3), np.float32(1.5), np.bool_(True), np.uint8(255), np.float64("nan"),
        np.str_("hi"), np.datetime64("2024-01-02"),
    ],
)  # fmt: skip
def test_numpy_scalars_keep_their_type(value: Any) -> None:
    assert same(value, roundtrip(value))


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, -1, 2**63 - 1, 2**64 - 1, -(2**63), 2**80, -(2**100), 1.5,
        float("inf"), "text", "", b"\x00bytes", 1 + 2j, (), (1, (2, [3, (4,)])), [(), []],
        {"a": 1, 2: "b", (1, 2): [np.int64(4)]}, {1, 2}, frozenset({"x"}), [2**90, (2**70,)],
    ],
)  # fmt: skip
def test_python_values_keep_their_type(value: Any) -> None:
    assert same(value, roundtrip(value))


def test_subclasses_travel_as_their_base() -> None:
    import enum
    from collections import OrderedDict, namedtuple

    class Color(enum.IntEnum):
        RED = 1

    point = namedtuple("point", "x y")
    assert same(roundtrip(Color.RED), 1)
    assert same(roundtrip(OrderedDict(a=1)), {"a": 1})
    assert same(roundtrip(point(1, 2)), (1, 2))
    assert same(roundtrip(bytearray(b"ab")), b"ab")
    assert same(roundtrip(np.ma.masked_array([1, 2])), np.array([1, 2]))


def test_graph_instances_survive() -> None:
    graph = GraphInstance(np.ones((2, 3)), np.zeros((1, 2)), np.array([[0, 1]]))
    out = roundtrip(graph)
    assert isinstance(out, GraphInstance)
    assert all(same(a, b) for a, b in zip(graph, out, strict=False))


def test_unsafe_values_are_refused_on_the_host_and_made_opaque_in_the_child() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    with pytest.raises(UnsafeValueError, match="Thing cannot cross"):
        encode({"x": Thing()})
    with pytest.raises(UnsafeValueError, match="Thing cannot cross"):
        encode(np.array([Thing()], dtype=object))
    out = roundtrip({"x": Thing(), "f": len}, opaque=True)
    assert out["x"] == RemoteObject(f"{__name__}.{Thing.__qualname__}", "<thing>")
    assert out["f"].type_name == "builtins.builtin_function_or_method"


def test_pickles_are_never_unpickled() -> None:
    class Evil:
        def __reduce__(self) -> Any:
            return (exec, ("raise SystemExit('pwned')",))

    payload = pickle.dumps(Evil())
    assert decode(encode(payload)) == payload  # bytes stay bytes
    with pytest.raises(ProtocolError):
        decode_message(payload)


def test_corrupt_array_payloads_are_rejected() -> None:
    good = encode(np.arange(4, dtype=np.int32))
    with pytest.raises(ProtocolError):
        decode_message(encode([101, np.arange(4, dtype=np.int32)])[:-3])
    with pytest.raises(ValueError):
        decode(good[:-3] + b"\x00")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_fuzz_only_raises_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_message(data)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text()
        | st.binary(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.tuples(children, children)
            | st.dictionaries(st.text(max_size=5), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_roundtrip_property(value: Any) -> None:
    assert same(value, roundtrip(value))


def test_object_arrays_travel_element_by_element() -> None:
    final_obs = np.empty(3, dtype=object)  # what Gymnasium's vector envs put in infos
    final_obs[0], final_obs[2] = np.zeros(4, np.float32), np.ones(4, np.float32)
    out = roundtrip({"final_obs": final_obs})["final_obs"]
    assert out.dtype == object and out.shape == (3,) and out[1] is None
    assert same(out[0], final_obs[0]) and same(out[2], final_obs[2])
    grid = np.array([[1, "a"], [(2,), None]], dtype=object)
    assert roundtrip(grid).tolist() == [[1, "a"], [(2,), None]]


def test_structured_arrays_holding_objects_are_opaque_from_the_child() -> None:
    rec = np.zeros(1, dtype=[("o", object)])
    out = roundtrip({"a": rec}, opaque=True)
    assert isinstance(out["a"], RemoteObject) and out["a"].type_name == "numpy.ndarray"
