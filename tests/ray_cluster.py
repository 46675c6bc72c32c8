"""The test session's one local Ray cluster: how it is started (``start_ray``), shared by
the ``ray_session`` fixture (conftest) and the tests that restart it. Imports Ray lazily:
only the Ray tests (marker ``ray``) use it."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

RAY_INIT = {
    "num_cpus": 2,
    "include_dashboard": False,
    "_node_ip_address": "127.0.0.1",  # Ray 2.60 still listens on all interfaces (docs/ray.md)
    "log_to_driver": False,
}

_RAY_TMP: list[str] = []  # the session's Ray temp dir, made when the cluster first starts


def start_ray() -> None:
    import ray

    if not _RAY_TMP:
        _RAY_TMP.append(tempfile.mkdtemp(prefix="rlr-", dir="/tmp"))  # short: socket paths
    ray.init(**RAY_INIT, _temp_dir=_RAY_TMP[0])


def ray_session_cluster() -> Iterator[Any]:
    """Body of the ``ray_session`` fixture: one cluster for the session (about 7 s to start
    here), shut down and its temp dir removed at the end."""
    import ray

    begun = time.monotonic()
    start_ray()
    print(f"ray.init took {time.monotonic() - begun:.1f} s")
    yield ray
    ray.shutdown()
    shutil.rmtree(_RAY_TMP[0], ignore_errors=True)  # Ray's session logs and sockets
