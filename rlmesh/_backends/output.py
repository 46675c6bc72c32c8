"""The child's output on the host: drained, kept (a bounded tail), echoed, never obeyed.

An ``OutputPump`` (a daemon thread per sandbox) drains the pipe of the child's merged stdout
and stderr, keeps its last ``TAIL_BYTES`` for error messages and echoes it to the host's
stderr with a ``[source pid N]`` prefix, so a chatty env can neither block on a full pipe
nor grow host memory.

The echo never blocks: it writes through a private non-blocking handle on the host's stderr,
drops what does not fit (a full pipe nobody reads) and says how much it dropped once it can
write again. The echo and the tail show the env's output as text only: control characters
and escape sequences (a clipboard write, a cleared screen) appear as visible ``\\x1b``
escapes, not as commands to the user's terminal (``sanitise``).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import select
import stat
import sys
import threading

__all__ = ["TAIL_BYTES", "OutputPump", "sanitise"]

TAIL_BYTES = 16 * 1024

# Shown as escapes, never sent to the terminal: C0 controls but tab and newline, DEL, C1
# controls (8-bit CSI and OSC), and the bidirectional overrides that reorder what is shown.
_CONTROLS: dict[int, str] = {
    code: f"\\x{code:02x}"
    for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
    if code not in (0x09, 0x0A)
}
_CONTROLS.update(
    {code: f"\\u{code:04x}" for code in (0x200E, 0x200F, *range(0x202A, 0x202F),
                                           *range(0x2066, 0x206A))}
)  # fmt: skip


def sanitise(text: str) -> str:
    """The env's output as plain text: a carriage return starts a new line, and every other
    control character (an escape sequence's ESC included) becomes a visible ``\\xNN``."""
    return text.replace("\r\n", "\n").replace("\r", "\n").translate(_CONTROLS)


class _Echo:
    """Writes to the host's stderr and never blocks; one per process, shared by all pumps.

    A Python-level ``sys.stderr`` without a file descriptor (a notebook, a test's capture)
    gets the text as it is. Otherwise the bytes go to the descriptor behind it through a
    private handle: for a pipe or terminal, a second open of it with ``O_NONBLOCK`` (the flag
    then touches nobody else's handle); a regular file takes writes at once; anything else
    (a socket) gets only what ``poll`` says fits. What does not fit is dropped and counted;
    the next write that fits first says how much was lost.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[int, ...] | None = None
        self._fd = -1  # where bytes go
        self._own = False  # whether _fd is our private handle (ours to close)
        self._mode = "file"  # "nonblock", "file" or "poll"
        self.dropped = 0

    def write(self, text: str) -> None:
        stream = sys.stderr
        try:
            fd = stream.fileno()
        except Exception:  # no descriptor: a Python-level stream, which never blocks on a pipe
            with contextlib.suppress(Exception):
                stream.write(text)
                stream.flush()
            return
        data = text.encode("utf-8", "replace")
        with self._lock:
            if not self._retarget(fd):
                return
            if self.dropped:
                note = (
                    f"[rlmesh: {self.dropped} bytes of sandbox output were dropped: nothing "
                    "read this process's stderr]\n"
                ).encode()
                if self._put(note) == 0:
                    self.dropped += len(data)
                    return
                self.dropped = 0
            self.dropped += len(data) - self._put(data)

    def _retarget(self, fd: int) -> bool:
        try:
            info = os.fstat(fd)
        except OSError:
            return False
        key = (fd, info.st_dev, info.st_ino, info.st_rdev)
        if key == self._key:
            return True
        self._close()
        self._key, self._fd, self._mode = key, fd, "poll"
        if stat.S_ISREG(info.st_mode):
            self._mode = "file"
        elif stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode):
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_APPEND | os.O_CLOEXEC
            with contextlib.suppress(OSError):  # a socket cannot be opened again: poll it
                self._fd = os.open(f"/proc/self/fd/{fd}", flags)
                self._own, self._mode = True, "nonblock"
        return True

    def _put(self, data: bytes) -> int:
        """Write what fits now; how many bytes were taken (all of them on an error)."""
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                if self._mode == "poll":
                    poller = select.poll()
                    poller.register(self._fd, select.POLLOUT)
                    if not poller.poll(0):
                        break
                    sent += os.write(self._fd, view[sent : sent + select.PIPE_BUF])
                else:
                    sent += os.write(self._fd, view[sent:])
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # a closed or broken stderr: nothing to tell anyone
            return len(data)
        return sent

    def _close(self) -> None:
        if self._own:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._own, self._key = -1, False, None


_echo = _Echo()


class OutputPump(threading.Thread):
    """Drains the child's stdout+stderr pipe; keeps a bounded tail; optionally echoes."""

    def __init__(self, fd: int, prefix: str, echo: bool) -> None:
        super().__init__(name=f"rlmesh-output {prefix}", daemon=True)
        self.fd = fd  # -1 once closed
        self._prefix = prefix
        self._echo = echo
        self._tail = bytearray()
        self._lock = threading.Lock()

    def run(self) -> None:
        at_line_start = True
        decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        try:
            while True:
                try:
                    data = os.read(self.fd, 65536)
                except InterruptedError:
                    continue
                if not data:
                    break
                with self._lock:
                    self._tail += data
                    if len(self._tail) > TAIL_BYTES:
                        del self._tail[: len(self._tail) - TAIL_BYTES]
                if self._echo:
                    at_line_start = self._forward(decode(data), at_line_start)
        except OSError:
            pass
        finally:
            fd, self.fd = self.fd, -1  # a fork meanwhile must not close a reused number
            os.close(fd)

    def _forward(self, text: str, at_line_start: bool) -> bool:
        out = []
        for line in sanitise(text).splitlines(keepends=True):
            if at_line_start:
                out.append(self._prefix)
            out.append(line)
            at_line_start = line.endswith("\n")
        if out:
            with contextlib.suppress(Exception):  # a closed or odd host stderr must not kill us
                _echo.write("".join(out))
        return at_line_start

    def tail(self) -> str:
        with self._lock:
            data = bytes(self._tail)
        text = sanitise(data.decode("utf-8", "replace"))
        return "\n".join(text.splitlines()[-40:])


def _after_fork_in_child() -> None:
    global _echo
    _echo = _Echo()  # its lock may have been held by a pump thread that does not exist here


os.register_at_fork(after_in_child=_after_fork_in_child)
