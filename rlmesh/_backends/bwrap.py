"""The bubblewrap prefix of ``isolation="bwrap"`` and the minimal environment that goes with it.

bwrap alone, as root, keeps every capability and skips the user namespace, and by default
shows the host's whole filesystem read-only: home directories, ``/run``, every unix socket
(connectable even on a read-only mount), and on a root host ``/etc/shadow``. The prefix built
here takes all of that away; ``bwrap_environment`` keeps the host's secrets out of the
sandbox's environment. The venv and the interpreter are bound back where they live under a
hidden directory.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from .._errors import SandboxStartupError
from .._wire.spin import SPIN_ENV

__all__ = ["KEPT_ENVIRONMENT", "bwrap_command", "bwrap_environment"]

# What a bwrap sandbox keeps of the host's environment (anything else, secrets included,
# stays out; the ``env`` option adds more): locale, time zone, terminal, thread counts, and
# the variables rlmesh's own worker reads.
KEPT_ENVIRONMENT = (
    "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LC_NUMERIC", "LC_TIME", "TZ",
    "TERM", "PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    SPIN_ENV,
)  # fmt: skip
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def bwrap_environment() -> dict[str, str]:
    """The minimal environment of a bwrap sandbox: ``KEPT_ENVIRONMENT`` from the host, a
    system ``PATH``, and ``/tmp`` (the only writable place) as ``HOME`` and ``TMPDIR``."""
    env = {name: os.environ[name] for name in KEPT_ENVIRONMENT if name in os.environ}
    env.update(PATH=SYSTEM_PATH, HOME="/tmp", TMPDIR="/tmp")
    return env


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _hidden_dirs() -> list[str]:
    """Directories a bwrap sandbox sees empty and read-only: every home directory (yours,
    ``/root``, ``/home``) and ``/run`` (where daemons keep their sockets)."""
    home = os.environ.get("HOME", "")
    candidates = ["/home", "/root", "/run", "/var/run"]
    if home.count("/") >= 2 or home in ("/home", "/root"):  # never "/" or "/opt" as a home
        candidates.append(home)
    hidden: list[str] = []
    for path in candidates:
        real = os.path.realpath(path)
        if not os.path.isdir(real) or real == "/" or _within(real, "/tmp"):
            continue
        if not any(_within(real, h) for h in hidden):
            hidden = [h for h in hidden if not _within(h, real)] + [real]
    return sorted(hidden)


def _listening_sockets() -> list[str]:
    """Paths of the host's bound unix sockets (``/proc/net/unix``) that exist here."""
    try:
        lines = Path("/proc/net/unix").read_text(errors="replace").splitlines()[1:]
    except OSError:
        return []
    found = set()
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[7].startswith("/"):
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(fields[7]).st_mode):
                    found.add(fields[7])
    return sorted(found)


@functools.lru_cache(maxsize=1)
def _root_only_paths() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Directories and files under ``/etc`` that other users may not read (shadow, sudoers,
    private keys): what a sandbox of a root host would otherwise read as their owner."""
    dirs: list[str] = []
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk("/etc"):
        for name in list(dirnames):
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                mode = os.lstat(path).st_mode
                if stat.S_ISDIR(mode) and mode & 0o005 != 0o005:
                    dirs.append(path)
                    dirnames.remove(name)
        for name in filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                mode = os.lstat(path).st_mode
                if stat.S_ISREG(mode) and not mode & 0o004:
                    files.append(path)
    return tuple(dirs), tuple(files)


def _user_namespace_possible() -> bool:
    try:
        return int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
    except (OSError, ValueError):
        return False


def bwrap_command(
    keep: Sequence[str] = (), cwd: str = "/tmp", *, network: bool = False
) -> list[str]:
    """The bubblewrap prefix of ``isolation="bwrap"``.

    The sandbox gets no network, its own PID, IPC, UTS (and, where possible, user)
    namespaces, no capabilities, and dies with the host. It sees the whole filesystem
    read-only, except: a fresh writable ``/tmp``; home directories and ``/run`` empty (and
    read-only); every unix socket the host listens on (``/proc/net/unix``) replaced by an
    unconnectable file; and, on a root host, the files and directories of ``/etc`` that only
    root may read covered (by ``/dev/null``, unreadable there, and empty directories).
    ``keep`` are paths (the venv, the interpreter) bound read-only again on top of
    what is hidden, in case they live there; ``network`` shares the host's network. Pair it
    with ``bwrap_environment()``.
    """
    binary = shutil.which("bwrap")
    if binary is None:
        raise SandboxStartupError(
            "isolation='bwrap' needs bubblewrap (the 'bwrap' command), which is not installed: "
            "install it (Debian and Ubuntu: apt-get install bubblewrap) or leave isolation unset"
        )
    root = os.geteuid() == 0
    # As root, bwrap keeps every capability and skips the user namespace unless told:
    # without these, the env could remount / read-write and write to the host.
    user = ["--unshare-user"] if root and _user_namespace_possible() else []
    keep = [os.path.realpath(path) for path in keep]
    hidden = _hidden_dirs()
    covered = ["/tmp", *hidden]
    args = [
        binary, "--die-with-parent", "--unshare-all", *(["--share-net"] if network else []),
        *user, "--cap-drop", "ALL",
        "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
    ]  # fmt: skip
    emptied = list(hidden)  # empty tmpfs mounts, made read-only at the end
    if root:
        dirs, files = _root_only_paths()
        emptied += dirs
        args += [arg for path in files for arg in ("--ro-bind", "/dev/null", path)]
    args += [arg for path in emptied for arg in ("--tmpfs", path)]
    for path in _listening_sockets():
        if not any(_within(path, c) for c in covered):
            args += ["--ro-bind", "/dev/null", path]
    args += [arg for path in keep if any(_within(path, c) for c in covered)
             for arg in ("--ro-bind", path, path)]  # fmt: skip
    args += [arg for path in emptied for arg in ("--remount-ro", path)]
    return [*args, "--chdir", cwd, "--"]
