"""One process-wide blocking portal: how sync code runs the async startup and shutdown.

The portal's event loop lives in a daemon thread (not a thread pool worker, which the
interpreter would wait for at exit). Only lifecycle calls cross it; the sync face's per-step
path uses blocking pipe I/O directly, because one portal hop costs several sandboxed steps.
It works from plain scripts, from many threads, and from threads that already run an event
loop (a notebook), since the calling thread only blocks on a future.

The portal belongs to the process that started it: a forked child has no portal thread, so
it forgets the parent's at fork and starts its own on first use (``multiprocessing``'s fork
context, Gymnasium's ``AsyncVectorEnv`` and SB3's ``SubprocVecEnv`` create envs there).

A caller interrupted while it waits (Ctrl-C) cancels the call on the portal and waits,
bounded, for its cleanup; a result that arrived anyway is handed to ``undo`` (a sandbox that
finished starting is stopped), so nothing outlives the interrupted call.
"""

from __future__ import annotations

import os
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


def _forget_portal() -> None:
    """In a forked child: the parent's portal thread does not exist here."""
    global _lock, _portal
    _lock = threading.Lock()  # another thread may have held it at the fork
    _portal = None


os.register_at_fork(after_in_child=_forget_portal)


def _serve(ready: threading.Event, box: list[BlockingPortal | BaseException]) -> None:
    async def main() -> None:
        async with BlockingPortal() as portal:
            box.append(portal)
            ready.set()
            await portal.sleep_until_stopped()

    try:
        anyio.run(main)
    except BaseException as exc:  # no loop to be had (out of fds): say so at once
        box.append(exc)
        ready.set()


def _get_portal() -> BlockingPortal:
    global _portal
    with _lock:
        if _portal is None:
            ready = threading.Event()
            box: list[BlockingPortal | BaseException] = []
            thread = threading.Thread(
                target=_serve, args=(ready, box), name="rlmesh-portal", daemon=True
            )
            thread.start()
            if not ready.wait(DEFAULT_TIMEOUTS.portal_start) or not box:
                raise RuntimeError("rlmesh could not start its event-loop thread")
            first = box[0]
            if isinstance(first, BaseException):
                raise first
            _portal = first
        return _portal


def portal_call(
    func: Callable[..., Awaitable[T]], *args: Any, undo: Callable[[T], object] | None = None
) -> T:
    """Run ``await func(*args)`` on the shared portal's loop and return its result.

    If the caller is interrupted (``KeyboardInterrupt``) while it waits, the call is
    cancelled and given ``Timeouts.cancel_wait`` to clean up; a result that arrived anyway
    goes to ``undo``. Then the interruption goes on.
    """
    done = threading.Event()
    box: list[T] = []

    async def run() -> None:
        try:
            box.append(await func(*args))
        finally:
            done.set()

    future = _get_portal().start_task_soon(run)
    try:
        future.result()
    except BaseException:
        if not done.is_set():
            future.cancel()
            done.wait(DEFAULT_TIMEOUTS.cancel_wait)
        if box and undo is not None:
            undo(box.pop())
        raise
    return box[0]
