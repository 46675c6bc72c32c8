"""One process-wide blocking portal: how sync code runs the async startup and shutdown.

The portal's event loop lives in a daemon thread (not a thread pool worker, which the
interpreter would wait for at exit). Only lifecycle calls cross it; the sync face's per-step
path uses blocking pipe I/O directly, because one portal hop costs several sandboxed steps.
It works from plain scripts, from many threads, and from threads that already run an event
loop (a notebook), since the calling thread only blocks on a future.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .._config import DEFAULT_TIMEOUTS

__all__ = ["portal_call"]

T = TypeVar("T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None


def _serve(ready: threading.Event, box: list[BlockingPortal]) -> None:
    async def main() -> None:
        async with BlockingPortal() as portal:
            box.append(portal)
            ready.set()
            await portal.sleep_until_stopped()

    anyio.run(main)


def _get_portal() -> BlockingPortal:
    global _portal
    with _lock:
        if _portal is None:
            ready = threading.Event()
            box: list[BlockingPortal] = []
            thread = threading.Thread(
                target=_serve, args=(ready, box), name="rlmesh-portal", daemon=True
            )
            thread.start()
            if not ready.wait(DEFAULT_TIMEOUTS.portal_start):
                raise RuntimeError("rlmesh could not start its event-loop thread")
            _portal = box[0]
        return _portal


def portal_call(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``await func(*args)`` on the shared portal's loop and return its result."""
    return _get_portal().call(func, *args)
