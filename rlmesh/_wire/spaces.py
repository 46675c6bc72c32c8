"""Gymnasium spaces <-> plain data that the safe codec carries.

The child describes its spaces with its own gymnasium (0.29 through the newest 1.x); the host
rebuilds them with its own. A space class the host does not know degrades gracefully:

- a subclass of a standard space (a third-party ``MyBox(Box)``) travels as that standard space;
- anything else becomes an ``OpaqueSpace``: it keeps the shape and dtype, and checks and samples
  through the sandbox when the face that owns it supports that.

Only numpy and gymnasium are imported (lazily where versions differ): the worker uses it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from .codec import MAX_DEPTH

__all__ = ["OpaqueSpace", "space_from_data", "space_to_data", "stable_description"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable_description(text: str) -> str:
    """``repr()`` text of a space without memory addresses (``<Mission object at 0x7f..>``
    differs between two processes holding the same space)."""
    return _ADDRESS.sub("", text)


def _named(name: str) -> type[Any] | None:
    return getattr(spaces, name, None)


# Checked in order: subclasses before the classes they extend.
_STANDARD = (
    "Box",
    "Discrete",
    "MultiBinary",
    "MultiDiscrete",
    "Text",
    "Dict",
    "Tuple",
    "Sequence",
    "Graph",
    "OneOf",
)


def _standard_kind(space: Any) -> str | None:
    for klass in type(space).__mro__:
        if klass.__module__.startswith("gymnasium.spaces") and klass.__name__ in _STANDARD:
            return klass.__name__
    return None


def space_to_data(space: Any) -> dict[str, Any]:
    """Describe ``space`` as a dict of safe values (runs in the child)."""
    kind = _standard_kind(space)
    if kind == "Box":
        return {
            "type": "Box",
            "low": np.asarray(space.low),
            "high": np.asarray(space.high),
            "dtype": np.dtype(space.dtype).str,
        }
    if kind == "Discrete":
        return {
            "type": "Discrete",
            "n": int(space.n),
            "start": int(getattr(space, "start", 0)),
            "dtype": np.dtype(space.dtype).str,
        }
    if kind == "MultiBinary":
        n = space.n
        return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else [int(v) for v in n]}
    if kind == "MultiDiscrete":
        data: dict[str, Any] = {
            "type": "MultiDiscrete",
            "nvec": np.asarray(space.nvec),
            "dtype": np.dtype(space.dtype).str,
        }
        start = getattr(space, "start", None)
        if start is not None:
            data["start"] = np.asarray(start)
        return data
    if kind == "Text":
        chars: Any = getattr(space, "character_list", None) or getattr(space, "_char_list", ())
        return {
            "type": "Text",
            "min_length": int(space.min_length),
            "max_length": int(space.max_length),
            "charset": "".join(chars),
        }
    if kind == "Dict":
        return {
            "type": "Dict",
            "spaces": [[key, space_to_data(sub)] for key, sub in space.spaces.items()],
        }
    if kind in ("Tuple", "OneOf"):
        return {"type": kind, "spaces": [space_to_data(sub) for sub in space.spaces]}
    if kind == "Sequence":
        return {
            "type": "Sequence",
            "space": space_to_data(space.feature_space),
            "stack": bool(getattr(space, "stack", False)),
        }
    if kind == "Graph":
        edge = space.edge_space
        return {
            "type": "Graph",
            "node": space_to_data(space.node_space),
            "edge": None if edge is None else space_to_data(edge),
        }
    dtype = getattr(space, "dtype", None)
    shape = getattr(space, "shape", None)
    return {
        "type": "Opaque",
        "name": f"{type(space).__module__}.{type(space).__qualname__}",
        "repr": repr(space)[:500],
        "shape": None if shape is None else [int(d) for d in shape],
        "dtype": None if dtype is None else np.dtype(dtype).str,
    }


class OpaqueSpace(spaces.Space[Any]):
    """Stands for a sandbox space whose class the host cannot rebuild.

    ``contains`` and ``sample`` go through the sandbox when the owning env wires ``remote``
    (``SandboxEnv`` does, also for opaque spaces inside a ``Dict`` or ``Tuple``); without it,
    ``contains`` accepts anything (the sandbox still checks when the action is used) and
    ``sample`` raises with a clear message.

    Two opaque spaces are equal when they name the same class and have the same description,
    so the same env in two sandboxes has equal spaces.

    Attributes:
        name: The qualified class name of the space in the sandbox.
        description: ``repr()`` of the space in the sandbox, without memory addresses.
    """

    def __init__(
        self,
        name: str,
        description: str,
        shape: tuple[int, ...] | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(shape=shape, dtype=dtype)
        self.name = name
        self.description = stable_description(description)
        self.remote_sample: Callable[[], Any] | None = None
        self.remote_contains: Callable[[Any], bool] | None = None

    def sample(self, mask: Any = None, probability: Any = None) -> Any:
        if mask is not None or probability is not None:
            raise NotImplementedError(f"{self.name} is opaque: no sampling with a mask")
        if self.remote_sample is None:
            raise NotImplementedError(
                f"{self.name} has no host-side equivalent; sample it through the sandbox "
                "(SandboxEnv wires this up) or build actions yourself"
            )
        return self.remote_sample()

    def contains(self, x: Any) -> bool:
        if self.remote_contains is None:
            return True
        return self.remote_contains(x)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"OpaqueSpace({self.description})"

    def describes(self, space: Any) -> bool:
        """Whether ``space`` (a real space, say in this process) is the one this stands for:
        the same qualified class name and the same description."""
        kind = type(space)
        name = f"{kind.__module__}.{kind.__qualname__}"
        return (name, stable_description(repr(space)[:500])) == (self.name, self.description)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpaqueSpace) and (other.name, other.description) == (
            self.name,
            self.description,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.description))


def _discrete(n: int, start: int, dtype: str | None) -> Any:
    """A ``Discrete`` of the sandbox's dtype (gymnasium >= 1.1 has one; older ones are int64)."""
    if dtype is None or np.dtype(dtype) == np.int64:
        return spaces.Discrete(n, start=start)
    try:
        return spaces.Discrete(n, start=start, dtype=np.dtype(dtype))
    except TypeError:  # this gymnasium's Discrete has no dtype: int64 it is
        return spaces.Discrete(n, start=start)


def space_from_data(data: dict[str, Any], depth: int = 0) -> Any:
    """Rebuild a space described by ``space_to_data`` (runs on the host).

    ``ValueError`` for spaces nested more than ``MAX_DEPTH`` levels deep: the description
    comes from the sandbox, and rebuilding recurses.
    """
    if depth > MAX_DEPTH:
        raise ValueError(
            f"the sandbox describes a space nested more than {MAX_DEPTH} levels deep "
            "(Dict, Tuple, Sequence, Graph or OneOf inside each other)"
        )
    depth += 1
    kind = data["type"]
    if kind == "Box":
        low, high = data["low"], data["high"]
        return spaces.Box(low=low, high=high, shape=np.shape(low), dtype=np.dtype(data["dtype"]))
    if kind == "Discrete":
        return _discrete(int(data["n"]), int(data["start"]), data.get("dtype"))
    if kind == "MultiBinary":
        return spaces.MultiBinary(data["n"])
    if kind == "MultiDiscrete":
        kwargs: dict[str, Any] = {"dtype": np.dtype(data["dtype"])}
        if "start" in data:
            kwargs["start"] = data["start"]
        return spaces.MultiDiscrete(data["nvec"], **kwargs)
    if kind == "Text":
        return spaces.Text(
            data["max_length"], min_length=data["min_length"], charset=data["charset"]
        )
    if kind == "Dict":
        # An OrderedDict keeps the sandbox's key order (a plain dict would be sorted).
        items = ((key, space_from_data(sub, depth)) for key, sub in data["spaces"])
        return spaces.Dict(OrderedDict(items))
    if kind == "Tuple":
        return spaces.Tuple(tuple(space_from_data(sub, depth) for sub in data["spaces"]))
    if kind == "Sequence":
        return spaces.Sequence(space_from_data(data["space"], depth), stack=data["stack"])
    if kind == "Graph":
        edge = data["edge"]
        return spaces.Graph(
            space_from_data(data["node"], depth),
            None if edge is None else space_from_data(edge, depth),
        )
    if kind == "OneOf" and _named("OneOf") is not None:
        return spaces.OneOf(tuple(space_from_data(sub, depth) for sub in data["spaces"]))
    shape = data.get("shape")
    dtype = data.get("dtype")
    return OpaqueSpace(
        str(data.get("name", kind)),
        str(data.get("repr", kind)),
        shape=None if shape is None else tuple(shape),
        dtype=None if dtype is None else np.dtype(dtype),
    )
