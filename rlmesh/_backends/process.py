"""The sandbox child process: start it, tell how it died, stop it.

The child gets two dedicated pipes for the protocol (passed as fds, so nothing the env prints
can reach them) and one pipe for its merged stdout and stderr, which an ``OutputPump``
(``output.py``) drains, echoes and keeps the tail of.

The child runs in its own session (process group): a Ctrl-C at the terminal is the host's to
handle, and stopping the sandbox also takes down processes the env started, detached ones
included (``_wire.tree``).

A process forked from the host (``multiprocessing``'s fork context, a vector-env helper)
inherits the host's ends of the pipes. At fork, the child points them at ``/dev/null`` (so a
lingering copy cannot hide the host's death from the worker, and the numbers are not reused
under a stale env) and its copies of the handles never signal or wait for the parent's
children: only the process that started a sandbox can stop it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._config import DEFAULT_TIMEOUTS, Timeouts
from .._errors import SandboxCrashedError
from .._wire.tree import kill_descendants
from .output import OutputPump

__all__ = ["ChildProcess", "raise_fd_limit", "spawn", "spawn_worker"]

PIPE_SIZE = 1 << 20  # a 1 MiB pipe carries a typical image observation in one write
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
ECHO_ENV = "RLMESH_SANDBOX_ECHO"  # "0" keeps the child's output out of the host's stderr
FD_LIMIT_GOAL = 1 << 16  # the soft RLIMIT_NOFILE the first sandbox raises the host's to
FDS_PER_SANDBOX = 9  # the most a sandbox start holds at once (pipes, locks, spawn)
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)

# What -I gives, but with PYTHONHASHSEED honoured (-I ignores every PYTHON* variable, and the
# env we pass holds no other): -s drops the user site, and the cwd leaves sys.path at once.
_BOOT = (
    "import sys\n"
    "if sys.path and sys.path[0] == '': del sys.path[0]\n"
    "from rlmesh._worker.main import main\n"
    "sys.exit(main(sys.argv[1:]))"
)

_fd_limit_raised = False


def raise_fd_limit() -> None:
    """Raise the soft ``RLIMIT_NOFILE`` towards the hard limit (up to ``FD_LIMIT_GOAL``), once.

    Each sandbox holds three fds in the host, so the common soft limit of 1024 caps a process
    at a few hundred sandboxes; the hard limit is usually far higher. Never lowers it.
    """
    global _fd_limit_raised
    if _fd_limit_raised:
        return
    _fd_limit_raised = True
    import resource

    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        goal = FD_LIMIT_GOAL if hard == resource.RLIM_INFINITY else min(hard, FD_LIMIT_GOAL)
        if soft != resource.RLIM_INFINITY and soft < goal:
            resource.setrlimit(resource.RLIMIT_NOFILE, (goal, hard))


def out_of_fds_hint() -> str:
    """What to do when the host ran out of file descriptors (for the startup error)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = -1
    return (
        f"this process ran out of file descriptors ({open_now} open, limit {soft}, hard limit "
        f"{hard}); each sandbox needs {FDS_PER_SANDBOX} while it starts and 3 while it runs. "
        "Close sandboxes you no longer use, or raise the limit before starting Python "
        "('ulimit -n 65536' in the shell, LimitNOFILE= for a systemd service, or a higher "
        "hard limit in /etc/security/limits.conf)"
    )


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


class ChildProcess:
    """A started worker process and the host's ends of its pipes.

    Attributes:
        label: The env source, for messages.
        pid: The child's pid.
        to_child: The fd the host writes requests to.
        from_child: The fd the host reads replies from.
    """

    link = None  # the core reads and writes the fds

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        to_child: int,
        from_child: int,
        pump: OutputPump,
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
        self._host_pid = os.getpid()  # only this process may signal, wait for or stop it
        _live.add(self)

    def _inherited(self) -> bool:
        """Whether this handle is a copy in a process forked from the one that started it."""
        return os.getpid() != self._host_pid

    def _after_fork(self) -> None:
        """In a forked child: let go of the parent's sandbox without touching it."""
        if not self._closed_fds:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            for fd in (self.to_child, self.from_child):  # reads see EOF, writes go nowhere
                with contextlib.suppress(OSError):
                    os.dup2(null, fd, inheritable=False)
            os.close(null)
        if self._pump.fd >= 0:  # no pump thread runs here; the parent's drains the pipe
            with contextlib.suppress(OSError):
                os.close(self._pump.fd)
            self._pump.fd = -1
        self._lock = threading.Lock()

    @property
    def returncode(self) -> int | None:
        if self._inherited():
            return None
        return self._popen.poll()

    def output_tail(self) -> str:
        """The last lines the child printed (stdout and stderr, merged)."""
        return self._pump.tail()

    def peer_fd_path(self, fd: int) -> str | None:
        """``/proc/<pid>/fd/<fd>``, or ``None`` where that pid is not the worker's (bwrap)."""
        return None if self._private_pids else f"/proc/{self.pid}/fd/{int(fd)}"

    def whom(self) -> str:
        """How messages name the worker."""
        return f"pid {self.pid}"

    def _why(self, code: int | None) -> str:
        """How a crash report tells the exit status."""
        return describe_exit(code)

    def crashed_error(self, what: str, *, wait: float | None = None) -> SandboxCrashedError:
        """Build the error for a child that stopped answering because it died (or hung up).

        Waits up to ``wait`` seconds for the exit status, killing the child if it is still
        running (it closed its pipe, so it is of no further use), and for the last output.
        """
        if self._inherited():
            return SandboxCrashedError(
                f"the sandbox for {self.label!r} (pid {self.pid}) belongs to process "
                f"{self._host_pid}, and this process ({os.getpid()}) is a fork of it: a forked "
                "process cannot use its parent's sandboxes; create the env in this process "
                "(for example inside the function a multiprocessing worker runs)",
                source=self.label,
                pid=self.pid,
            )
        try:
            code: int | None = self._popen.wait(self.timeouts.crash_wait if wait is None else wait)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        self._pump.join(self.timeouts.output_wait)
        return SandboxCrashedError(
            f"the sandbox for {self.label!r} ({self.whom()}) died during {what}: {self._why(code)}",
            source=self.label,
            pid=self.pid,
            exit_code=code,
            stderr_tail=self.output_tail(),
        )

    def kill(self) -> None:
        """SIGKILL the child and everything below it (its process group, and what the env
        detached from it); never raises. A no-op in a process forked from the host."""
        if self._inherited():
            return
        if self._popen.returncode is None:  # still ours to walk: its orphans are below it
            kill_descendants(self.pid)
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._popen.kill()

    def abandon(self) -> None:
        """Kill the child and release our pipe ends (GC and broken sandboxes).

        Waits at most a second to reap it; ``stop()`` finishes the job if that was not enough.
        In a process forked from the host it only lets go of the pipes.
        """
        if self._inherited():
            self._close_fds()
            return
        self.kill()
        with self._lock:
            self._close_fds()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(self.timeouts.crash_wait)  # SIGKILL is quick: reap, spare a zombie

    def stop(self, grace: float | None = None) -> int | None:
        """Stop the child: EOF first, then SIGTERM, then SIGKILL. Idempotent and bounded.

        Returns the exit status. Processes the env started are killed too (the worker kills
        them as it exits; what it leaves, the group, goes after it). In a process forked from
        the host it only lets go of the pipes.
        """
        if self._inherited():
            self._close_fds()
            return None
        timeouts = self.timeouts
        with self._lock:
            self._close_fds()
            code: int | None
            try:
                code = self._popen.wait(timeouts.stop_grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                kill_descendants(self.pid)  # while it lives, detached ones are below it
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


_live: weakref.WeakSet[ChildProcess] = weakref.WeakSet()  # this process's started children


def _after_fork_in_child() -> None:
    for child in list(_live):
        child._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _child_environment(env: dict[str, str] | None) -> dict[str, str]:
    """``env`` (default: ours) without any ``PYTHON*`` variable but ``PYTHONHASHSEED``, which
    passes when this interpreter honoured it: hash-order-dependent envs then behave as here."""
    base = dict(os.environ if env is None else env)
    clean = {name: value for name, value in base.items() if not name.startswith("PYTHON")}
    seed = base.get("PYTHONHASHSEED")
    if seed is not None and not sys.flags.ignore_environment:
        clean["PYTHONHASHSEED"] = seed
    return clean


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
    protocol_fd: int | None = None,
) -> ChildProcess:
    """Start the worker (``python -s -c <boot> --fds R W``) with dedicated protocol pipes.

    The worker sees no ``PYTHONPATH``, user site or cwd on ``sys.path`` (what ``-I`` gives)
    but does see ``PYTHONHASHSEED``. ``keep_fds`` are inherited by the child as they are (the
    venv's in-use lock); ``worker_args`` go to the worker (limits); ``wrapper`` runs it
    (bubblewrap). Raises ``OSError`` (``EMFILE``) when this process is out of fds, with
    every fd it opened closed again. ``protocol_fd``: a connected socket the worker speaks the
    protocol on, both ways, instead of pipes of its own (the Ray backend's tcp data plane);
    the caller keeps and closes its copy, and the handle's ``to_child``/``from_child`` are -1.
    """

    def argv(child_read: int, child_write: int) -> list[str]:
        return [*wrapper, str(python), "-s", *extra_args, "-c", _BOOT,
                "--fds", str(child_read), str(child_write), *worker_args]  # fmt: skip

    return spawn(argv, label=label, env=_child_environment(env), cwd=cwd, keep_fds=keep_fds,
                 timeouts=timeouts, private_pids=bool(wrapper),
                 protocol_fd=protocol_fd)  # fmt: skip


def spawn(
    argv: Callable[[int, int], list[str]],
    *,
    label: str,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    keep_fds: Sequence[int] = (),
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    private_pids: bool = False,
    stdio: bool = False,
    handle: Callable[..., ChildProcess] | None = None,
    protocol_fd: int | None = None,
) -> ChildProcess:
    """Start ``argv(child_read, child_write)`` with the protocol pipes: passed as those fds,
    or with ``stdio`` as its stdin and stdout (a container engine's CLI forwards only stdio).

    Its stdout and stderr (stderr alone with ``stdio``) go to an ``OutputPump``. ``handle``
    makes the ``ChildProcess`` (a subclass for backends that end their workers otherwise).
    ``protocol_fd`` (not with ``stdio``): a socket passed as both protocol fds, not pipes.
    """
    raise_fd_limit()
    opened: list[int] = []
    try:
        for _ in range(3 if protocol_fd is None else 1):
            opened += os.pipe2(os.O_CLOEXEC)
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    if protocol_fd is None:
        host_read, child_write, child_read, host_write, out_read, out_write = opened
        _grow_pipe(host_read)
        _grow_pipe(host_write)
    else:
        out_read, out_write = opened
        host_read = host_write = -1
        child_read = child_write = protocol_fd
    try:
        popen = subprocess.Popen(
            argv(child_read, child_write),
            stdin=child_read if stdio else subprocess.DEVNULL,
            stdout=child_write if stdio else out_write,
            stderr=out_write,
            pass_fds=keep_fds if stdio else (child_read, child_write, *keep_fds),
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    for fd in (out_write,) if protocol_fd is not None else (child_read, child_write, out_write):
        os.close(fd)
    echo = os.environ.get(ECHO_ENV, "1") != "0"
    pump = OutputPump(out_read, f"[{label} pid {popen.pid}] ", echo)
    make = handle or ChildProcess
    child = make(popen, host_write, host_read, pump, label, private_pids=private_pids,
                 timeouts=timeouts)  # fmt: skip
    try:
        pump.start()
    except BaseException:  # no thread to be had: do not leave the child behind
        child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeouts.kill_wait)
        child._close_fds()
        os.close(out_read)
        raise
    return child
