"""The public face for numpy-based environments: sandboxed envs that return numpy arrays.

>>> from rlmesh.numpy import SandboxEnv
>>> with SandboxEnv("CartPole-v1", packages=["gymnasium==1.3.0"]) as env:  # doctest: +SKIP
...     obs, info = env.reset(seed=42)
"""

from __future__ import annotations

from ._async_env import AsyncSandboxEnv
from ._async_vector_env import AsyncSandboxVectorEnv
from ._codec import RemoteObject
from ._sandbox import State
from ._spaces import OpaqueSpace
from ._sync_env import SandboxEnv
from ._sync_vector_env import SandboxVectorEnv

__all__ = [
    "AsyncSandboxEnv",
    "AsyncSandboxVectorEnv",
    "OpaqueSpace",
    "RemoteObject",
    "SandboxEnv",
    "SandboxVectorEnv",
    "State",
]
