"""The public face for numpy-based environments: sandboxed envs that return numpy arrays.

>>> from rlmesh.numpy import SandboxEnv
>>> with SandboxEnv("CartPole-v1", packages=["gymnasium==1.3.0"]) as env:  # doctest: +SKIP
...     obs, info = env.reset(seed=42)
"""

from __future__ import annotations

from ._core.lifecycle import State
from ._env import AsyncSandboxEnv, SandboxEnv
from ._vector_env import AsyncSandboxVectorEnv, SandboxVectorEnv
from ._wire.codec import RemoteObject
from ._wire.spaces import OpaqueSpace

for _public in (OpaqueSpace, RemoteObject, State):  # pickles and reprs name this module
    _public.__module__ = __name__

__all__ = [
    "AsyncSandboxEnv",
    "AsyncSandboxVectorEnv",
    "OpaqueSpace",
    "RemoteObject",
    "SandboxEnv",
    "SandboxVectorEnv",
    "State",
]
