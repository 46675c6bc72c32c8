"""The sandbox child process: start it, keep the tail of its output, tell how it died, stop it.

The child gets two dedicated pipes for the protocol (passed as fds, so nothing the env prints
can reach them) and one pipe for its merged stdout and stderr. A daemon thread drains that
pipe, echoes it to the host's stderr with a ``[source pid N]`` prefix, and keeps the last
``TAIL_BYTES`` for error messages, so a chatty env can neither block on a full pipe nor grow
host memory.

The child runs in its own session (process group): a Ctrl-C at the terminal is the host's to
handle, and stopping the sandbox also takes down processes the env started.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._config import DEFAULT_TIMEOUTS, Timeouts
from .._errors import SandboxCrashedError

__all__ = ["ChildProcess", "spawn_worker"]

TAIL_BYTES = 16 * 1024
PIPE_SIZE = 1 << 20  # a 1 MiB pipe carries a typical image observation in one write
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
ECHO_ENV = "RLMESH_SANDBOX_ECHO"  # "0" keeps the child's output out of the host's stderr


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size; fine if smaller
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)


def describe_exit(code: int | None) -> str:
    """Human words for a return code: 'exit code 3', 'signal SIGSEGV', 'still running'."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class _OutputPump(threading.Thread):
    """Drains the child's stdout+stderr pipe; keeps a bounded tail; optionally echoes."""

    def __init__(self, fd: int, prefix: str, echo: bool) -> None:
        super().__init__(name=f"rlmesh-output {prefix}", daemon=True)
        self._fd = fd
        self._prefix = prefix.encode()
        self._echo = echo
        self._tail = bytearray()
        self._lock = threading.Lock()

    def run(self) -> None:
        at_line_start = True
        try:
            while True:
                try:
                    data = os.read(self._fd, 65536)
                except InterruptedError:
                    continue
                if not data:
                    break
                with self._lock:
                    self._tail += data
                    if len(self._tail) > TAIL_BYTES:
                        del self._tail[: len(self._tail) - TAIL_BYTES]
                if self._echo:
                    at_line_start = self._forward(data, at_line_start)
        except OSError:
            pass
        finally:
            os.close(self._fd)

    def _forward(self, data: bytes, at_line_start: bool) -> bool:
        lines = data.splitlines(keepends=True)
        out = bytearray()
        for line in lines:
            if at_line_start:
                out += self._prefix
            out += line
            at_line_start = line.endswith((b"\n", b"\r"))
        stream = sys.stderr
        with contextlib.suppress(Exception):  # a closed or odd host stderr must not kill us
            stream.write(out.decode("utf-8", "replace"))
            stream.flush()
        return at_line_start

    def tail(self) -> str:
        with self._lock:
            data = bytes(self._tail)
        text = data.decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-40:])


class ChildProcess:
    """A started worker process and the host's ends of its pipes.

    Attributes:
        label: The env source, for messages.
        pid: The child's pid.
        to_child: The fd the host writes requests to.
        from_child: The fd the host reads replies from.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        to_child: int,
        from_child: int,
        pump: _OutputPump,
        label: str,
        *,
        private_pids: bool = False,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        self.timeouts = timeouts
        self.details: dict[str, Any] = {}  # filled in by the backend that started it
        self._popen = popen
        self._private_pids = private_pids  # in its own PID namespace (bwrap)
        self._pump = pump
        self.to_child = to_child
        self.from_child = from_child
        self.label = label
        self.pid = popen.pid
        self._closed_fds = False
        self._lock = threading.Lock()

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def output_tail(self) -> str:
        """The last lines the child printed (stdout and stderr, merged)."""
        return self._pump.tail()

    def peer_fd_path(self, fd: int) -> str | None:
        """``/proc/<pid>/fd/<fd>``, or ``None`` where that pid is not the worker's (bwrap)."""
        return None if self._private_pids else f"/proc/{self.pid}/fd/{int(fd)}"

    def crashed_error(self, what: str, *, wait: float | None = None) -> SandboxCrashedError:
        """Build the error for a child that stopped answering because it died (or hung up).

        Waits up to ``wait`` seconds for the exit status, killing the child if it is still
        running (it closed its pipe, so it is of no further use), and for the last output.
        """
        try:
            code: int | None = self._popen.wait(self.timeouts.crash_wait if wait is None else wait)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        self._pump.join(self.timeouts.output_wait)
        return SandboxCrashedError(
            f"the sandbox for {self.label!r} (pid {self.pid}) died during {what}: "
            f"{describe_exit(code)}",
            source=self.label,
            pid=self.pid,
            exit_code=code,
            stderr_tail=self.output_tail(),
        )

    def kill(self) -> None:
        """SIGKILL the child's whole process group (it and what it started); never raises."""
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._popen.kill()

    def abandon(self) -> None:
        """Kill the child and release our pipe ends (GC and broken sandboxes).

        Waits at most a second to reap it; ``stop()`` finishes the job if that was not enough.
        """
        self.kill()
        with self._lock:
            self._close_fds()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(self.timeouts.crash_wait)  # SIGKILL is quick: reap, spare a zombie

    def stop(self, grace: float | None = None) -> int | None:
        """Stop the child: EOF first, then SIGTERM, then SIGKILL. Idempotent and bounded.

        Returns the exit status. Processes the env started in the child's process group are
        killed too.
        """
        timeouts = self.timeouts
        with self._lock:
            self._close_fds()
            code: int | None
            try:
                code = self._popen.wait(timeouts.stop_grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(self.pid, signal.SIGTERM)
                try:
                    code = self._popen.wait(timeouts.term_grace)
                except subprocess.TimeoutExpired:
                    self.kill()
                    try:
                        code = self._popen.wait(timeouts.kill_wait)
                    except subprocess.TimeoutExpired:
                        code = None
            with contextlib.suppress(OSError):  # leftovers the env started
                os.killpg(self.pid, signal.SIGKILL)
            self._pump.join(timeouts.drain_wait)
            return code

    def _close_fds(self) -> None:
        if not self._closed_fds:
            self._closed_fds = True
            for fd in (self.to_child, self.from_child):
                with contextlib.suppress(OSError):
                    os.close(fd)


def spawn_worker(
    python: Path | str,
    *,
    label: str,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    extra_args: Sequence[str] = (),
    keep_fds: Sequence[int] = (),
    worker_args: Sequence[str] = (),
    wrapper: Sequence[str] = (),
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
) -> ChildProcess:
    """Start ``python -I -m rlmesh._worker`` with dedicated protocol pipes.

    ``keep_fds`` are inherited by the child as they are (the venv's in-use lock);
    ``worker_args`` go to the worker (limits); ``wrapper`` runs it (bubblewrap).
    """
    host_read, child_write = os.pipe2(os.O_CLOEXEC)
    child_read, host_write = os.pipe2(os.O_CLOEXEC)
    out_read, out_write = os.pipe2(os.O_CLOEXEC)
    _grow_pipe(host_read)
    _grow_pipe(host_write)
    argv = [
        *wrapper,
        str(python),
        "-I",  # no PYTHONPATH, user site or cwd on sys.path: only the venv's packages
        *extra_args,
        "-m",
        "rlmesh._worker",
        "--fds",
        str(child_read),
        str(child_write),
        *worker_args,
    ]
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out_write,
            stderr=out_write,
            pass_fds=(child_read, child_write, *keep_fds),
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    except BaseException:
        for fd in (host_read, child_write, child_read, host_write, out_read, out_write):
            os.close(fd)
        raise
    for fd in (child_read, child_write, out_write):
        os.close(fd)
    echo = os.environ.get(ECHO_ENV, "1") != "0"
    pump = _OutputPump(out_read, f"[{label} pid {popen.pid}] ", echo)
    pump.start()
    return ChildProcess(
        popen, host_write, host_read, pump, label, private_pids=bool(wrapper), timeouts=timeouts
    )
