"""Spaces travel as data and come back as the same spaces (or degrade gracefully)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

from rlmesh._wire.codec import decode, encode
from rlmesh._wire.spaces import OpaqueSpace, space_from_data, space_to_data


def travel(space: Any) -> Any:
    return space_from_data(decode(encode(space_to_data(space))))


SPACES = [
    spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32),
    spaces.Box(low=np.array([0, -np.inf]), high=np.array([1, np.inf]), dtype=np.float64),
    spaces.Box(0, 255, shape=(4, 5, 3), dtype=np.uint8),
    spaces.Discrete(5),
    spaces.Discrete(3, start=-1),
    spaces.MultiBinary(4),
    spaces.MultiBinary([2, 3]),
    spaces.MultiDiscrete([3, 4]),
    spaces.MultiDiscrete(np.array([[2, 3], [4, 5]]), start=np.array([[1, 1], [0, 0]])),
    spaces.Text(8, min_length=2, charset="abc"),
    spaces.Dict({"pos": spaces.Box(-1, 1, (2,)), "id": spaces.Discrete(3)}),
    spaces.Tuple((spaces.Discrete(32), spaces.Discrete(11), spaces.Discrete(2))),
    spaces.Sequence(spaces.Discrete(4)),
    spaces.Sequence(spaces.Box(0, 1, (2,)), stack=True),
    spaces.Graph(spaces.Box(0, 1, (3,)), spaces.Discrete(2)),
    spaces.Graph(spaces.Box(0, 1, (3,)), None),
    spaces.OneOf((spaces.Discrete(2), spaces.Box(0, 1, (2,)))),
    spaces.Dict({"nested": spaces.Tuple((spaces.Text(3), spaces.MultiBinary(2)))}),
]


@pytest.mark.parametrize("space", SPACES, ids=lambda s: type(s).__name__)
def test_standard_spaces_roundtrip(space: Any) -> None:
    out = travel(space)
    assert type(out) is type(space)
    assert out == space
    space.seed(0)
    assert out.contains(space.sample())


def test_dict_order_is_kept() -> None:
    from collections import OrderedDict

    space = spaces.Dict(OrderedDict(z=spaces.Discrete(2), a=spaces.Discrete(3)))
    assert list(travel(space).spaces) == ["z", "a"]


def test_subclass_of_a_standard_space_becomes_that_space() -> None:
    class MyBox(spaces.Box):
        pass

    out = travel(MyBox(0, 1, (2,)))
    assert type(out) is spaces.Box and out.shape == (2,)


def test_unknown_space_becomes_opaque() -> None:
    class Weird(spaces.Space[Any]):
        def __init__(self) -> None:
            super().__init__(shape=(2,), dtype=np.int64)

        def sample(self, mask: Any = None, probability: Any = None) -> Any:
            return np.zeros(2, np.int64)

        def contains(self, x: Any) -> bool:
            return True

    out = travel(Weird())
    assert isinstance(out, OpaqueSpace)
    assert out.shape == (2,) and out.dtype == np.int64
    assert "Weird" in out.name
    assert out.contains("anything")  # unwired: the sandbox checks when it is used
    with pytest.raises(NotImplementedError, match="sample it through the sandbox"):
        out.sample()
    out.remote_sample = lambda: np.ones(2, np.int64)
    out.remote_contains = lambda x: False
    assert out.sample().tolist() == [1, 1] and not out.contains(1)


def test_data_from_a_newer_gymnasium_degrades_to_opaque() -> None:
    out = space_from_data({"type": "Hyperbox", "shape": [3], "dtype": "<f4"})
    assert isinstance(out, OpaqueSpace) and out.shape == (3,)
