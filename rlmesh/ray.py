"""Sandboxes on a Ray cluster: ``backend=RayBackend(...)`` for any face (the ``ray`` extra).

Importing this module does not import Ray; starting a sandbox does. See ``docs/ray.md``.
"""

from __future__ import annotations

from ._backends.ray_backend import RayBackend

__all__ = ["RayBackend"]

RayBackend.__module__ = "rlmesh.ray"
