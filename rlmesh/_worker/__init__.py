"""The sandbox child: ``python -m rlmesh._worker`` serves one environment.

Imports ``rlmesh._wire``, ``rlmesh._errors`` and ``rlmesh._version`` only (and, in the child,
numpy, gymnasium, msgpack and cloudpickle), so copying rlmesh's child-side files into a
sandbox brings none of the host-side dependencies. ``tests/test_architecture.py`` enforces it.
"""

from .main import main
from .serve import Worker

__all__ = ["Worker", "main"]
