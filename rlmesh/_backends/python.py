"""The sandbox's interpreter: the host's own, a path, or a version found on this machine.

A version (``python="3.12"``) is looked up with ``uv python find`` (downloads off: the sandbox
must not fetch an interpreter behind your back), then among pyenv's installs
(``$PYENV_ROOT/versions/3.12.*``), whose shims uv cannot query. Whatever is found is run once
to read its real version, which must match what was asked; the answer is cached per process.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .._errors import SandboxBuildError

__all__ = ["MIN_VERSION", "Interpreter", "find_interpreter"]

MIN_VERSION = (3, 8)  # the oldest Python the worker and codec run on
_PROBE = "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.version)"


@dataclass(frozen=True)
class Interpreter:
    """A Python for the sandbox.

    Attributes:
        path: Its real path.
        version: ``sys.version`` of it.
        minor: ``"3.12"``: names its ``lib/python3.12`` folder.
        prefix: Its installation prefix (bound into a bwrap sandbox when under ``/tmp``).
    """

    path: str
    version: str
    minor: str
    prefix: str


def _host() -> Interpreter:
    path = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return Interpreter(path, sys.version, minor, os.path.realpath(sys.base_prefix))


def _probe(path: str) -> tuple[str, str]:
    try:
        out = subprocess.run([path, "-I", "-c", _PROBE], capture_output=True, text=True,
                             timeout=30, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxBuildError(f"the interpreter {path} does not run: {exc}") from None
    minor, version = out.stdout.split("\n", 1)
    return minor.strip(), version.strip()


def _uv_find(version: str) -> str | None:
    from .venv import uv_binary

    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    try:
        out = subprocess.run([uv_binary(), "python", "find", version], capture_output=True,
                             text=True, timeout=60, env=env)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    found = out.stdout.strip()
    return found if out.returncode == 0 and found else None


def _pyenv_find(version: str) -> str | None:
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    candidates = sorted(root.glob(f"{version}.*/bin/python{version}"), reverse=True)
    return str(candidates[0]) if candidates else None


@functools.lru_cache(maxsize=16)
def find_interpreter(choice: str | None) -> Interpreter:
    """The interpreter for the ``python`` option (``None``: the host's); ``SandboxBuildError``
    that says what to do when there is none."""
    if choice is None:
        return _host()
    wanted = None if os.sep in choice else choice
    path = choice if wanted is None else (_uv_find(choice) or _pyenv_find(choice))
    if path is None:
        raise SandboxBuildError(
            f"python={choice!r}: no Python {choice} was found on this machine (uv's discovery, "
            "then pyenv's installs); install one (pyenv install, your package manager, or "
            "'uv python install' where downloads are allowed) or pass the interpreter's path"
        )
    path = os.path.realpath(path)
    minor, version = _probe(path)
    if wanted is not None and minor != wanted:
        raise SandboxBuildError(
            f"python={choice!r} found {path}, which is Python {minor}; pass the path of a "
            f"Python {choice} instead"
        )
    if tuple(int(part) for part in minor.split(".")) < MIN_VERSION:
        oldest = ".".join(map(str, MIN_VERSION))
        raise SandboxBuildError(
            f"python={choice!r} is Python {minor}; the sandbox worker needs Python {oldest} or "
            "newer"
        )
    prefix = str(Path(path).parent.parent)
    return Interpreter(path, version, minor, prefix)
