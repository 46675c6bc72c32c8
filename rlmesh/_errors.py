"""Every exception rlmesh raises, in one place.

The tree::

    SandboxError                    base of everything a sandbox raises
    ├── SandboxBuildError           the virtualenv could not be built (uv's output tail attached)
    ├── SandboxStartupError         the child did not become ready (bad import, version skew, ...)
    ├── SandboxCrashedError         the child died (exit code or signal, stderr tail attached)
    ├── SandboxTimeoutError         a startup or call exceeded its time limit (also TimeoutError)
    ├── SandboxClosedError          the sandbox was used after close() or after it broke
    ├── ProtocolError               a malformed or unexpected frame from the child
    └── RemoteEnvError              the environment itself raised; the sandbox stays usable

Bad options and sources raise the built-in ``ValueError`` / ``TypeError`` before any process
starts, and actions outside the action space raise ``ValueError`` before they are sent.

This module imports nothing beyond the standard library: the sandbox worker uses it too.
"""

from __future__ import annotations

__all__ = [
    "ProtocolError",
    "RemoteEnvError",
    "SandboxBuildError",
    "SandboxClosedError",
    "SandboxCrashedError",
    "SandboxError",
    "SandboxStartupError",
    "SandboxTimeoutError",
]


def _with_tail(message: str, tail: str) -> str:
    tail = tail.rstrip()
    if not tail:
        return message
    indented = "\n".join("    " + line for line in tail.splitlines())
    return f"{message}\n  last output of the sandbox:\n{indented}"


class SandboxError(Exception):
    """Base class of every error raised by a sandbox."""


class SandboxBuildError(SandboxError):
    """The sandbox's virtualenv could not be built.

    Attributes:
        source: The environment source being built.
        output_tail: The last lines uv printed.
    """

    def __init__(self, message: str, *, source: str = "", output_tail: str = "") -> None:
        super().__init__(_with_tail(message, output_tail))
        self.source = source
        self.output_tail = output_tail


class SandboxStartupError(SandboxError):
    """The sandbox process started but did not become ready.

    Raised for a failing ``imports`` entry, an environment that cannot be made, or a worker
    whose protocol version differs from the host's.

    Attributes:
        source: The environment source.
        pid: The child's process id, when it had one.
        stderr_tail: The last lines the child printed.
    """

    def __init__(
        self, message: str, *, source: str = "", pid: int | None = None, stderr_tail: str = ""
    ) -> None:
        super().__init__(_with_tail(message, stderr_tail))
        self.source = source
        self.pid = pid
        self.stderr_tail = stderr_tail


class SandboxCrashedError(SandboxError):
    """The sandbox process died.

    Attributes:
        source: The environment source.
        pid: The child's process id.
        exit_code: The exit status; negative for a signal (``-11`` is SIGSEGV), ``None`` if the
            process could not be reaped.
        stderr_tail: The last lines the child printed.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "",
        pid: int | None = None,
        exit_code: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(_with_tail(message, stderr_tail))
        self.source = source
        self.pid = pid
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


class SandboxTimeoutError(SandboxError, TimeoutError):
    """A startup or a call took longer than its timeout; the sandbox was stopped."""


class SandboxClosedError(SandboxError):
    """The sandbox was used after ``close()``, or after an earlier failure broke it."""


class ProtocolError(SandboxError):
    """The child sent bytes that are not a valid frame or message.

    Never raised for an error of the environment itself: those are ``RemoteEnvError``.
    """


_MISSING_TYPES = frozenset(
    {
        "builtins.ModuleNotFoundError",
        "builtins.ImportError",
        "gymnasium.error.DependencyNotInstalled",
    }
)
_MISSING_HINT = (
    "\n(the sandbox holds only what `packages` names, plus gymnasium, cloudpickle and "
    "msgpack: add what is missing there; rendering a classic-control env, for one, needs "
    "'gymnasium[classic-control]')"
)
_UNREGISTERED_TYPES = frozenset(
    {"gymnasium.error.NamespaceNotFound", "gymnasium.error.NameNotFound"}
)
_UNREGISTERED_HINT = (
    "\n(ids are registered when their package is imported: add the module that registers it "
    "to `imports` (imports=['ale_py'], say), and its package to `packages`)"
)
_GL_WORDS = ("gladloadgl", "glfw", "opengl", "egl", "osmesa", "mujoco_gl")
_GL_HINT = (
    "\n(rendering found no OpenGL context: without a display, choose MuJoCo's headless "
    "backend for the sandbox, env={'MUJOCO_GL': 'egl'} (or 'osmesa'), and install what it needs)"
)


def remote_hint(remote_type: str, remote_message: str) -> str:
    """What to do about an exception the sandbox raised, where rlmesh can tell ('' if not)."""
    if remote_type in _MISSING_TYPES:
        return _MISSING_HINT
    if remote_type in _UNREGISTERED_TYPES:
        return _UNREGISTERED_HINT
    if any(word in remote_message.lower() for word in _GL_WORDS):
        return _GL_HINT
    return ""


class RemoteEnvError(SandboxError):
    """The environment raised an exception inside the sandbox.

    The child is still alive and the sandbox stays usable (for example, reset and go on).

    Attributes:
        remote_type: The qualified name of the exception type raised in the sandbox.
        remote_message: ``str()`` of that exception.
        remote_traceback: The formatted traceback text from the sandbox.
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str) -> None:
        text = f"{remote_type}: {remote_message}" if remote_message else remote_type
        hint = remote_hint(remote_type, remote_message)
        super().__init__(
            f"the environment raised {text}{hint}\n\nRemote traceback (in the sandbox):\n"
            f"{remote_traceback.rstrip()}"
        )
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
