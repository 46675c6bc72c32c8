"""Helpers the process-level tests share: waiting for a process, running the CLI, closing
an env while another thread steps it."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RLMESH = str(Path(sys.executable).parent / "rlmesh")


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` ends within ``timeout`` (a pidfd wait, no polling loop)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(int(timeout * 1000)))
    finally:
        os.close(fd)


def rlmesh(*args: str, code: int = 0, no_traceback: bool = False) -> str:
    """Run the installed ``rlmesh`` command, check its exit code (and, with ``no_traceback``,
    that it printed no Python traceback); return what it printed."""
    result = subprocess.run(
        [RLMESH, *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "RLMESH_SANDBOX_ECHO": "0"},
    )  # fmt: skip
    assert result.returncode == code, (result.stdout, result.stderr)
    assert not no_traceback or "Traceback" not in result.stderr, result.stderr
    return result.stdout + result.stderr


def close_during_a_step(env: Any, timeout: float) -> list[BaseException]:
    """Close ``env`` while another thread steps it (an env whose step never returns); what
    the step raised. Asserts that both ended within ``timeout`` s."""
    errors: list[BaseException] = []

    def stepper() -> None:
        try:
            env.step(0)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=stepper)
    thread.start()
    started = time.monotonic()
    env.close()
    thread.join(timeout)
    assert not thread.is_alive() and time.monotonic() - started < timeout
    return errors


async def aclose_during_a_step(env: Any, timeout: float) -> list[BaseException]:
    """``close_during_a_step`` for an async env: another task steps, this one closes once
    every task is blocked; the ``SandboxClosedError`` the step raised, if any."""
    import anyio

    from rlmesh import SandboxClosedError

    seen: list[BaseException] = []

    async def stepper() -> None:
        try:
            await env.step(0)
        except SandboxClosedError as exc:
            seen.append(exc)

    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as group:
            group.start_soon(stepper)
            await anyio.wait_all_tasks_blocked()
            await env.aclose()
    return seen
