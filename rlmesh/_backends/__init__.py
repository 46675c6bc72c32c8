"""Where a sandbox runs. ``backend_for`` picks the backend from the options.

- ``venv``: a uv virtualenv on this host and a child process in it (optionally under
  bubblewrap). The default.
- ``backend=``: a backend object the caller passes, such as ``rlmesh.ray.RayBackend``
  (``ray_backend``: sandboxes on Ray cluster nodes, each built there by ``venv``).
- containers (``base_image=``) are to come, as a further ``Backend``.

Every backend starts the same worker (``rlmesh._worker``) with the same child-side files
(``payload``), and hands the core a ``WorkerHandle``.
"""

from __future__ import annotations

from .._config import Options
from .base import Backend, WorkerHandle

__all__ = ["Backend", "WorkerHandle", "backend_for"]


def backend_for(options: Options) -> Backend:
    """The backend the options ask for; ``NotImplementedError`` for one not built yet."""
    if options.backend is not None:
        return options.backend  # type: ignore[no-any-return]
    if options.base_image is not None:
        raise NotImplementedError(
            "the Docker backend (base_image=...) is not available yet; leave base_image unset "
            "to run the environment in a uv virtualenv"
        )
    from .venv import VenvBackend

    return VenvBackend()
