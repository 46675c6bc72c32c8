"""Adaptive spin-then-block reads: the low-latency wait used on both ends of the pipes.

Waking a blocked process costs tens of microseconds on a VM (the idle vCPU halts and must be
woken), more than a whole sandboxed CartPole step. When the peer answers quickly, polling the
pipe for a short window catches the reply with the CPU still hot. When it does not (the env
or the learner is slow, or both processes share one CPU and spinning only delays the peer),
each missed window doubles how many waits skip spinning (up to 1024), so a slow or
oversubscribed setup quickly falls back to plain blocking waits and burns no CPU.

``RLMESH_SPIN_US`` sets the window in microseconds, from ``0`` (no spinning) to
``MAX_SPIN_US``; anything else is a ``ValueError`` that says so (an endless window would burn
a CPU and never reach the wait that bounds a call). Standard library only: the sandbox
worker uses it too.
"""

from __future__ import annotations

import math
import os
import select
import time

__all__ = ["Spinner"]

SPIN_ENV = "RLMESH_SPIN_US"
DEFAULT_SPIN_US = 100.0
MAX_SKIP = 1024


MAX_SPIN_US = 100_000.0  # 0.1 s: far beyond any useful window, still a bounded one


def _window_from_env() -> float:
    text = os.environ.get(SPIN_ENV)
    if text is None or not text.strip():
        return DEFAULT_SPIN_US / 1e6
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= MAX_SPIN_US:  # NaN fails this too
        raise ValueError(
            f"{SPIN_ENV}={text!r} is not a spin window: give microseconds from 0 (no spinning) "
            f"to {MAX_SPIN_US:g}, or unset it for the default of {DEFAULT_SPIN_US:g}"
        )
    return value / 1e6


class Spinner:
    """Polls a non-blocking fd for a bounded, adaptive window before the caller blocks."""

    __slots__ = ("_fd", "_penalty", "_poll", "_skip", "window")

    def __init__(self, fd: int, window: float | None = None) -> None:
        self.window = _window_from_env() if window is None else window
        self._skip = 0
        self._penalty = 1
        self._fd = fd
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        self._poll = poller.poll  # poll(0) enters the kernel but allocates nothing

    def read(self, size: int) -> bytes | None:
        """Data (``b''`` at EOF) if it arrives within the window; ``None`` to block instead."""
        if self.window <= 0.0:
            return None
        if self._skip:
            self._skip -= 1
            return None
        clock = time.perf_counter
        end = clock() + self.window
        poll = self._poll
        while not poll(0):
            if clock() >= end:
                self._skip = self._penalty
                self._penalty = min(self._penalty * 2, MAX_SKIP)
                return None
        try:
            data = os.read(self._fd, size)
        except (BlockingIOError, InterruptedError):
            return None
        self._penalty = 1
        return data
