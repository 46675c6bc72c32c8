"""The sandbox process's entry point: get the protocol streams, guard them, serve.

Two ways to get the protocol streams:

- ``--fds R W``: dedicated pipe fds passed by the host (the venv backend). The child's own
  stdout and stderr are separate pipes that env code may flood or print to freely.
- ``--stdio``: stdin/stdout carry the protocol (for backends that forward only stdio, such as
  containers). The worker moves them to private fds at once and points fd 1 at stderr, so
  env code that prints cannot reach the protocol stream.

Also here: the resource limits, the host-death watcher (a forked process), the fork guard
that keeps the protocol fds out of processes the env starts, and the subreaper that keeps
every process the env starts (detached ones too) below the worker, so that it can end them
all.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import sys
import threading
from collections.abc import Callable
from typing import Any

from .._wire.spin import Spinner
from .._wire.tree import become_subreaper, kill_descendants
from .serve import Worker

__all__ = ["main"]


def _fd_reader(fd: int) -> Callable[[int], bytes]:
    """Reads with a short adaptive spin first (see ``_spin``), then a blocking wait."""
    os.set_blocking(fd, False)
    spin = Spinner(fd).read
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def read(size: int) -> bytes:
        data = spin(size)
        if data is not None:
            return data
        while True:
            poller.poll()
            try:
                return os.read(fd, size)
            except (BlockingIOError, InterruptedError):
                continue

    return read


def _fd_writer(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        sent = os.write(fd, data)
        if sent != len(data):  # a pipe takes up to its buffer size at once
            view = memoryview(data)[sent:]
            while view:
                view = view[os.write(fd, view) :]

    return write


def _close_quietly(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _wait_for_hangup(*fds: int) -> int:
    """Block until one of ``fds`` reports hang-up (or an error); that fd."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, 0)  # no events asked: poll reports only hang-up and errors
    while True:
        try:
            ready = poller.poll()
        except InterruptedError:
            continue
        if ready:
            return int(ready[0][0])


def _end_sandbox(worker: int, spare: int | None = None) -> None:
    """SIGKILL what the env started below ``worker`` (detached ones too: the worker is a
    subreaper) but ``spare``, then the worker's process group, the caller's own."""
    kill_descendants(worker, spare=spare)
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGKILL)


def _watch_host(rfd: int, wfd: int) -> int:
    """Start the watcher that ends this sandbox when the host goes away; returns an fd the
    worker must keep (and close in processes it forks), or -1.

    With pipes, the watcher is a forked process: an env stuck in C code that holds the GIL
    (a regular expression backtracking for hours, say) would starve a thread, and the sandbox
    would outlive its host. It keeps the read end of the request pipe and the read end of a
    pipe whose write end only the worker holds. The host's end closing (the host closed the
    sandbox, or died, even by SIGKILL) makes it end the sandbox; the worker's end closing
    (the worker ended) makes it leave at once, so the host's next write fails as it should.
    Call it before any thread starts.

    With a socket (``rfd == wfd``: the Ray backend's tcp plane) a watcher process would hold
    the connection open after the worker died, hiding its death from the host; a thread
    watches instead, as the GIL allows. The socket's peer is the driver, so the thread also
    watches the output pipe (fd 2) that the host actor reads: the actor dying, even by
    SIGKILL, closes its end, and the sandbox ends with its host as it does on pipes.
    """
    worker = os.getpid()
    if rfd == wfd:
        watched = [rfd, 2] if stat.S_ISFIFO(os.fstat(2).st_mode) else [rfd]

        def watch() -> None:
            _wait_for_hangup(*watched)  # a pipe's write end reports an error without a reader
            _end_sandbox(worker)

        threading.Thread(target=watch, name="rlmesh-host-watch", daemon=True).start()
        return -1
    alive_read, alive_write = os.pipe()
    if os.fork() != 0:
        os.close(alive_read)
        return alive_write
    try:  # the watcher: nothing of the worker's but the two read ends
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in (0, 1, 2, rfd, alive_read):
                _close_quietly(int(name))
        if _wait_for_hangup(rfd, alive_read) == rfd:
            _end_sandbox(worker, spare=os.getpid())  # this watcher too, last
    finally:
        os._exit(0)


def _set_limits(memory: int | None, cpu_seconds: int | None) -> None:
    import resource

    if memory is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if cpu_seconds is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))


def _parse(args: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rlmesh._worker")
    streams = parser.add_mutually_exclusive_group(required=True)
    streams.add_argument("--fds", nargs=2, type=int, metavar=("READ_FD", "WRITE_FD"))
    streams.add_argument("--stdio", action="store_true")
    parser.add_argument("--max-memory", type=int, default=None, help="bytes (RLIMIT_AS)")
    parser.add_argument("--max-cpu-seconds", type=int, default=None, help="RLIMIT_CPU")
    return parser.parse_args(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the sandbox process."""
    options = _parse(sys.argv[1:] if argv is None else argv)
    if options.stdio:
        rfd, wfd = os.dup(0), os.dup(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
    else:
        rfd, wfd = options.fds
    _set_limits(options.max_memory, options.max_cpu_seconds)
    become_subreaper()  # orphans of the env's processes stay below us, not under init
    alive = _watch_host(rfd, wfd)
    os.set_inheritable(rfd, False)
    os.set_inheritable(wfd, False)
    # A child the env forks must not hold our protocol pipes open: the host detects our death
    # by end-of-file, which a lingering copy of the write end would delay forever.
    os.register_at_fork(after_in_child=lambda: _close_quietly(rfd, wfd, alive))
    # The host drives us; a Ctrl-C at the terminal is the host's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    worker = Worker(_fd_reader(rfd), _fd_writer(wfd))
    with contextlib.suppress(BrokenPipeError):  # the host went away mid-reply
        worker.serve()
    kill_descendants(os.getpid())  # what the env started, detached or not, ends with us
    if not worker.closed_by_host:  # the host is gone: take what the env started with us
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)
    return 0
