"""Where a sandbox runs. ``backend_for`` picks the backend from the options.

- ``venv``: a uv virtualenv on this host and a child process in it (optionally under
  bubblewrap). The default.
- ``container``: a container of ``base_image`` (podman or docker) with a sandbox environment
  built on the host and mounted read-only.
- ``backend=``: a backend object the caller passes, such as ``rlmesh.ray.RayBackend``
  (``ray_backend``: sandboxes on Ray cluster nodes, each built there by ``venv``).

Every backend starts the same worker (``rlmesh._worker``) with the same child-side files
(``payload``), and hands the core a ``WorkerHandle``.
"""

from __future__ import annotations

from .._config import Options
from .base import Backend, FrameLink, WorkerHandle

__all__ = ["Backend", "FrameLink", "WorkerHandle", "backend_for"]


def backend_for(options: Options) -> Backend:
    """The backend the options ask for."""
    if options.base_image is None:
        for name in ("cpus", "gpus"):
            if options[name] is not None:
                raise ValueError(
                    f"{name}={options[name]!r} applies to container sandboxes: pass "
                    f"base_image=... as well, or leave {name} unset"
                )
    if options.backend is not None:
        if options.base_image is not None:
            raise ValueError(
                "base_image and backend= cannot be combined: a Ray host builds uv "
                "virtualenvs on its node; leave one of them unset"
            )
        return options.backend  # type: ignore[no-any-return]
    if options.base_image is not None:
        if options.python is not None:
            raise ValueError(
                f"python={options.python!r} chooses a host interpreter for a venv sandbox; with "
                "base_image the image's own Python runs the env: pick an image with the "
                "Python you want, or leave python unset"
            )
        if options.isolation is not None:
            raise ValueError(
                f"isolation={options.isolation!r} applies to venv sandboxes; a container "
                "sandbox is isolated by the engine already (no network, not root, read-only "
                "root): leave isolation unset with base_image"
            )
        from .container import ContainerBackend

        return ContainerBackend()
    from .venv import VenvBackend

    return VenvBackend()
