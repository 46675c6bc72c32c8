"""The guard: a small process that runs one command and acts when the host goes away.

Run by path with the host's interpreter (``python -I guard.py MODE FD ...``), standard library
only. ``FD`` is the read end of a pipe whose write end only the host holds; when every write
end has closed (the host died, or gave up), the guard acts at once, whatever the command is
doing:

``build FD COMMAND...``
    Runs a build command (uv, the import check) in the guard's own session; on hang-up it
    kills that whole process group (the command and all it started). Exits with the
    command's status.
``docker FD NAME CLI RUN-ARGUMENTS...``
    Runs ``CLI RUN-ARGUMENTS`` (a ``docker run`` without ``--rm``); on hang-up it removes the
    container ``NAME``. When the CLI ends it reads the container's exit status from the
    engine (podman 4.3's Docker API makes ``docker run --rm`` exit 0 whatever happened),
    removes the container and exits with that status (137 when the OOM killer struck).
    SIGTERM goes to the CLI (the same process group), which passes it on.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

PATH = os.path.abspath(__file__)
ENGINE_WAIT = 60  # seconds for `inspect` and `rm` of a container


def _on_hangup(fd: int, act: Callable[[], None]) -> None:
    def watch() -> None:
        poller = select.poll()
        poller.register(fd, 0)  # no events asked: poll reports only hang-up and errors
        while True:
            try:
                if poller.poll():
                    break
            except InterruptedError:
                continue
        act()

    threading.Thread(target=watch, daemon=True).start()


def _build(fd: int, command: list[str]) -> int:
    _on_hangup(fd, lambda: os.killpg(0, signal.SIGKILL))
    return subprocess.call(command)


def _docker(fd: int, name: str, cli: str, run: list[str]) -> int:
    def remove() -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([cli, "rm", "--force", name], timeout=ENGINE_WAIT,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip

    _on_hangup(fd, remove)
    signal.signal(signal.SIGTERM, lambda *_: None)  # a handler, unlike SIG_IGN, is not inherited
    code = subprocess.call([cli, *run])
    try:
        state = subprocess.run(
            [cli, "inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", name],
            capture_output=True, text=True, timeout=ENGINE_WAIT,
        ).stdout.split()  # fmt: skip
        code = 137 if state[1] == "true" else int(state[0])
    except (OSError, subprocess.TimeoutExpired, IndexError, ValueError):
        pass  # the CLI's own status, then
    remove()
    return code


def main(argv: list[str]) -> int:
    mode, fd = argv[0], int(argv[1])
    if mode == "build":
        return _build(fd, argv[2:])
    if mode == "docker":
        return _docker(fd, argv[2], argv[3], argv[4:])
    raise SystemExit(f"unknown guard mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
