"""What runs in a sandbox: sources, parsed (pure) and resolved on the host.

A source string names its scheme (``gym://``, ``hf://``; a bare id is ``gym``). Each kind of
source parses its own text, gates its options (``check``) and, on the host, ``resolve``s into
a ``Resolved``: the worker's make request, extra requirements and paths to mount, which the
backend takes *before* it computes the sandbox's cache key. The worker side of a kind is its
maker in ``rlmesh._worker.make``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .._config import Options, Resolved
from .gym import GymSource, parse_gym
from .hf import HubSource, parse_hf

__all__ = ["GymSource", "HubSource", "Source", "parse_source"]


class Source(Protocol):
    """A kind of source: ``str()`` gives it back as the user would write it."""

    def check(self, options: Options) -> None: ...

    def resolve(self, options: Options) -> Resolved: ...


_SCHEMES: dict[str, Callable[[str, str], Source]] = {"gym": parse_gym, "hf": parse_hf}


def parse_source(source: str) -> Source:
    """Parse a source string; ``ValueError`` with the accepted forms if it is malformed."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a str such as 'CartPole-v1', not {type(source).__name__}")
    text = source.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "gym", text
    parse = _SCHEMES.get(scheme)
    if parse is None:
        raise ValueError(
            f"unknown source scheme {scheme + '://'!r} in {source!r}; use a Gymnasium id "
            "('CartPole-v1' or 'gym://CartPole-v1') or an EnvHub repo ('hf://org/repo@sha')"
        )
    return parse(source, rest)
