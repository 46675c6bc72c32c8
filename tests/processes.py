"""Helpers the process-level tests share: waiting for a process, running the CLI."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

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
