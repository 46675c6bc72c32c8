"""Where a sandbox runs. ``backend_for`` picks the backend from the options.

- ``venv``: a uv virtualenv on this host and a child process in it (optionally under
  bubblewrap). The default.
- ``container``: a container of ``base_image`` (podman or docker) with a sandbox environment
  built on the host and mounted read-only.

Every backend starts the same worker (``rlmesh._worker``) with the same child-side files
(``payload``), and hands the core a ``WorkerHandle``.
"""

from __future__ import annotations

from .._config import Options
from .base import Backend, WorkerHandle

__all__ = ["Backend", "WorkerHandle", "backend_for"]


def backend_for(options: Options) -> Backend:
    """The backend the options ask for."""
    if options.base_image is not None:
        from .container import ContainerBackend

        return ContainerBackend()
    for name in ("cpus", "gpus"):
        if options[name] is not None:
            raise ValueError(
                f"{name}={options[name]!r} applies to container sandboxes: pass base_image=... "
                f"as well, or leave {name} unset"
            )
    from .venv import VenvBackend

    return VenvBackend()
