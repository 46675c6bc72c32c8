"""rlmesh: run a Gymnasium environment with its own dependencies, in its own process.

The sandboxed environments live in ``rlmesh.numpy`` (``SandboxEnv``, ``AsyncSandboxEnv``).
This package module stays light (version and errors only) because the sandbox worker imports
it too, and the worker must not pull in host-side dependencies.
"""

from ._errors import (
    ProtocolError,
    RemoteEnvError,
    SandboxBuildError,
    SandboxClosedError,
    SandboxCrashedError,
    SandboxError,
    SandboxStartupError,
    SandboxTimeoutError,
)
from ._version import __version__

__all__ = [
    "ProtocolError",
    "RemoteEnvError",
    "SandboxBuildError",
    "SandboxClosedError",
    "SandboxCrashedError",
    "SandboxError",
    "SandboxStartupError",
    "SandboxTimeoutError",
    "__version__",
]
