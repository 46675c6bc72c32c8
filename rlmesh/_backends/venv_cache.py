"""The cache directory of sandbox venvs: layout, locks, trust, listing and pruning. No uv here.

Layout under ``cache_dir()``::

    venvs/<key>/                    a finished venv (it has MARKER)
    venvs/<key>/rlmesh-sandbox.json the completion marker: key, source, inputs, and the
                                    manifest of the venv's files (size and mtime of each)
    venvs/<key>/.rlmesh-in-use      shared-locked by every live sandbox of this venv
    venvs/<key>/.rlmesh-last-used   touched at every use
    venvs/.<key>.lock               exclusive while the venv is built, pruned or probed
    venvs/.tmp-<key>-<rand>/        a build in progress (or the leftover of a dead one)
    venvs/.trash-<key>-<rand>/      a venv being deleted

Every sandbox process holds a shared ``flock`` on its venv's in-use file (the host takes it
before the venv is used and hands the fd to the child), so ``prune`` can tell, without
trusting pids, which venvs are in use: it takes the exclusive lock or leaves the venv alone.
Locks held by dead processes vanish with them. Whoever takes the exclusive in-use lock holds
the build lock first, so a start that finds a venv busy waits for the build lock and never
mistakes a listing's probe for a venv that is gone.

Trust: a venv's python runs as whoever starts the sandbox, so the cache directories and the
venv must be writable by nobody else (``check_trusted``), and the venv's files must be as the
build left them (``venv_integrity.damage``). A cache that is read-only (a prepared node
image) is used as it is: locks and last-use touches give way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from .._errors import SandboxBuildError
from .._version import __version__
from .venv_integrity import MARKER, damage, read_marker, unsafe_reason

__all__ = [
    "MARKER",
    "CacheEntry",
    "build_lock",
    "cache_dir",
    "check_trusted",
    "discard",
    "list_entries",
    "make_dirs",
    "open_in_use",
    "probe_in_use",
    "prune",
    "read_only",
    "remove_dead_builds",
    "venvs_dir",
]

CACHE_ENV = "RLMESH_CACHE_DIR"
IN_USE = ".rlmesh-in-use"
LAST_USED = ".rlmesh-last-used"
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)  # what a read-only cache answers


def cache_dir() -> Path:
    """``$RLMESH_CACHE_DIR``, else ``$XDG_CACHE_HOME/rlmesh``, else ``~/.cache/rlmesh``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlmesh"


def venvs_dir() -> Path:
    return cache_dir() / "venvs"


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def read_only(exc: OSError) -> bool:
    """Whether ``exc`` says the cache cannot be written (mounted read-only, or not ours)."""
    return exc.errno in _READ_ONLY


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents writable by their owner only, whatever the
    umask (``Path.mkdir(parents=True)`` would leave a group-writable parent under umask 002)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o755)


# -- trust ------------------------------------------------------------------------------------


def _refuse(path: Path, reason: str, fix: str) -> SandboxBuildError:
    return SandboxBuildError(
        f"refusing the sandbox cache at {path}: {reason}, so another user could change the "
        f"code a sandbox runs as you. {fix}"
    )


def check_trusted(venv: Path | None = None) -> None:
    """Raise ``SandboxBuildError`` if another user could write the cache (its directories and
    their parents) or the venv ``venv`` (a directory, not a link, owned by you or root)."""
    root = cache_dir()
    own = f"or use a cache of your own: {CACHE_ENV}=<a directory only you can write>"
    real = Path(os.path.realpath(root))
    for parent in reversed(real.parents):  # as ssh checks the parents of authorized_keys
        reason = unsafe_reason(parent, follow=True, sticky_ok=True)
        if reason:
            raise _refuse(parent, reason, f"Make it yours and not writable by others, {own}")
    for directory in (root, root / "venvs"):
        reason = unsafe_reason(directory, follow=True)
        if reason:
            raise _refuse(
                directory, reason, f"If it is yours: chmod go-w {directory}; otherwise, {own}"
            )
    if venv is not None:
        reason = unsafe_reason(venv)
        if reason:
            raise _refuse(
                venv, reason,
                f"Remove it (rm -rf {venv}, as its owner or root) and the next sandbox builds "
                f"its own, {own}",
            )  # fmt: skip


# -- locks ------------------------------------------------------------------------------------


def _lock_path(key: str) -> Path:
    return venvs_dir() / f".{key}.lock"


def try_build_lock(key: str) -> int | None:
    """The exclusive build lock of ``key`` as an open fd, or ``None`` if someone holds it.

    Raises ``OSError`` where the cache cannot be written (see ``read_only``).
    """
    path = _lock_path(key)
    make_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def build_lock(key: str) -> Iterator[bool]:
    """Try to take the build lock of ``key`` without waiting; yields whether it was taken."""
    fd = try_build_lock(key)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def _open_lock_file(path: Path) -> int:
    """The in-use file, created if need be; read-only where the cache is (flock works)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if not read_only(exc):
            raise
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def open_in_use(venv: Path) -> int | None:
    """Take a shared in-use lock on a finished venv; ``None`` if it is gone or incomplete.

    Raises ``BlockingIOError`` while someone holds it exclusively: a prune about to remove it
    or a listing's probe; both hold the build lock, so a caller that takes the build lock and
    tries again sees which. The caller keeps the fd open for as long as the venv is in use
    (the sandbox child inherits it). A venv renamed away by ``prune`` between our checks is
    detected by comparing inodes.
    """
    path = venv / IN_USE
    try:
        fd = _open_lock_file(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        same = os.path.samestat(os.fstat(fd), os.stat(path))
    except BlockingIOError:
        os.close(fd)
        raise
    except FileNotFoundError:
        same = False
    if not same or not is_complete(venv):
        os.close(fd)
        return None
    with contextlib.suppress(OSError):  # a read-only cache keeps its old last-use time
        (venv / LAST_USED).touch()
    return fd


def discard(venv: Path) -> bool:
    """Remove a venv unless a sandbox uses it (the caller holds its build lock)."""
    fd = _open_lock_file(venv / IN_USE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        _delete(venv, venv.name)
    finally:
        os.close(fd)
    return True


def _delete(path: Path, key: str) -> None:
    trash = path.parent / f".trash-{key}-{uuid.uuid4().hex[:8]}"
    os.rename(path, trash)  # gone from the cache in one step; the slow delete comes after
    if trash.is_symlink():
        trash.unlink()
    else:
        shutil.rmtree(trash, ignore_errors=True)


# -- listing and pruning ----------------------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    """One cached sandbox venv, as ``rlmesh cache list`` shows it.

    ``problem`` says what is wrong with it at a glance (an unreadable marker, a link, another
    user's venv); ``damage()`` checks its files too.
    """

    key: str
    path: Path
    source: str
    requirements: tuple[str, ...]
    size: int
    created: float
    last_used: float
    in_use: bool
    problem: str | None = None


def installed_versions(venv: Path) -> dict[str, str]:
    """name -> version of every distribution installed in ``venv`` (its dist-info folders),
    plus the rlmesh copied into it."""
    versions: dict[str, str] = {}
    for info in sorted(venv.glob("lib/python*/site-packages/*.dist-info")):
        name, _, version = info.name.removesuffix(".dist-info").rpartition("-")
        versions[canonicalize_name(name)] = version
    if "rlmesh" not in versions and any(venv.glob("lib/python*/site-packages/rlmesh")):
        versions["rlmesh"] = f"{__version__} (copied from the host)"
    return versions


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@contextlib.contextmanager
def probe_in_use(venv: Path) -> Iterator[bool]:
    """Whether a sandbox uses the venv, found by a brief exclusive lock on its in-use file
    (held until the block ends). The probe holds the build lock meanwhile, so a sandbox
    starting then waits for it instead of taking the venv for gone."""
    try:
        lock = try_build_lock(venv.name)
    except OSError:  # a read-only cache: starts there wait out a busy venv anyway
        lock = -1
    if lock is None:
        yield True  # being built, pruned or opened right now
        return
    try:
        try:
            fd = _open_lock_file(venv / IN_USE)
        except OSError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                busy = False
            except BlockingIOError:
                busy = True
            yield busy
        finally:
            os.close(fd)
    finally:
        if lock >= 0:
            os.close(lock)


def _in_use(venv: Path) -> bool:
    with probe_in_use(venv) as busy:
        return busy


def _number(value: Any, default: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else default


def _entry(path: Path) -> CacheEntry:
    problem = unsafe_reason(path)
    marker, marker_problem = read_marker(path)
    problem = problem or marker_problem
    try:
        mtime = path.lstat().st_mtime
    except OSError:
        mtime = 0.0
    created = _number(marker.get("created"), mtime)
    try:
        last_used = (path / LAST_USED).stat().st_mtime
    except OSError:
        last_used = created
    inputs = marker.get("inputs")
    requirements = inputs.get("requirements") if isinstance(inputs, dict) else None
    if not isinstance(requirements, list):
        requirements = []
    return CacheEntry(
        key=path.name,
        path=path,
        source=str(marker.get("source", "?")),
        requirements=tuple(str(item) for item in requirements),
        size=0 if problem and path.is_symlink() else _size(path),
        created=created,
        last_used=last_used,
        in_use=False if path.is_symlink() else _in_use(path),
        problem=problem,
    )


def list_entries() -> list[CacheEntry]:
    """Every venv in the cache, most recently used first (damaged ones too, with a problem)."""
    root = venvs_dir()
    if not root.is_dir():
        return []
    entries = [
        _entry(path)
        for path in root.iterdir()
        if not path.name.startswith(".") and (path.is_dir() or path.is_symlink())
    ]
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def remove_dead_builds() -> list[Path]:
    """Remove what dead builds left (``.tmp-*``, ``.trash-*``); a running build is left alone
    (it holds its key's build lock). Returns what was removed."""
    root = venvs_dir()
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for path in sorted(root.iterdir()):
        name = path.name
        if name.startswith(".trash-"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif name.startswith(".tmp-"):
            key = name[len(".tmp-") :].rsplit("-", 1)[0]
            with build_lock(key) as taken:
                if taken:  # no build of this key is running: a dead one left this
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
    return removed


def prune(
    *, older_than: float | None = None, everything: bool = False, damaged: bool = False
) -> list[str]:
    """Remove unused venvs; returns the removed keys. Never removes a venv in use.

    Args:
        older_than: Remove venvs not used for this many seconds.
        everything: Remove every venv not in use (damaged ones included).
        damaged: Remove the venvs that ``damage()`` or a listing finds wrong.
    Also removes leftovers of dead builds and deletes, whatever the options.
    """
    root = venvs_dir()
    if not root.is_dir():
        return []
    now = time.time()
    removed = []
    remove_dead_builds()
    for path in sorted(root.iterdir()):
        name = path.name
        if name.startswith(".") or not (path.is_dir() or path.is_symlink()):
            continue
        entry = _entry(path)
        wanted = everything or (older_than is not None and now - entry.last_used > older_than)
        if not wanted and damaged:
            wanted = entry.problem is not None or damage(path) is not None
        if not wanted:
            continue
        with build_lock(name) as taken:
            if taken and (path.is_symlink() or discard(path)):  # else: built, pruned or used
                if path.is_symlink():
                    path.unlink()
                removed.append(name)
    return removed
