"""The cache directory of sandbox venvs: layout, locks, listing and pruning. No uv here.

Layout under ``cache_dir()``::

    venvs/<key>/                    a finished venv (it has MARKER)
    venvs/<key>/rlmesh-sandbox.json the completion marker: key, source, requirements, inputs
    venvs/<key>/.rlmesh-in-use      shared-locked by every live sandbox of this venv
    venvs/<key>/.rlmesh-last-used   touched at every use
    venvs/.<key>.lock               exclusive while the venv is built or pruned
    venvs/.tmp-<key>-<rand>/        a build in progress (or the leftover of a dead one)
    venvs/.trash-<key>-<rand>/      a venv being deleted

Every sandbox process holds a shared ``flock`` on its venv's in-use file (the host takes it
before the venv is used and hands the fd to the child), so ``prune`` can tell, without
trusting pids, which venvs are in use: it takes the exclusive lock or leaves the venv alone.
Locks held by dead processes vanish with them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CacheEntry",
    "build_lock",
    "cache_dir",
    "list_entries",
    "open_in_use",
    "prune",
    "remove_dead_builds",
    "venvs_dir",
]

CACHE_ENV = "RLMESH_CACHE_DIR"
MARKER = "rlmesh-sandbox.json"
IN_USE = ".rlmesh-in-use"
LAST_USED = ".rlmesh-last-used"


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


def _lock_path(key: str) -> Path:
    return venvs_dir() / f".{key}.lock"


def try_build_lock(key: str) -> int | None:
    """The exclusive build lock of ``key`` as an open fd, or ``None`` if someone holds it."""
    path = _lock_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def open_in_use(venv: Path) -> int | None:
    """Take a shared in-use lock on a finished venv; ``None`` if it is gone or being pruned.

    The caller keeps the fd open for as long as the venv is in use (the sandbox child
    inherits it). A venv renamed away by ``prune`` between our checks is detected by
    comparing inodes.
    """
    path = venv / IN_USE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        same = os.path.samestat(os.fstat(fd), os.stat(path))
    except (BlockingIOError, FileNotFoundError):
        same = False
    if not same or not is_complete(venv):
        os.close(fd)
        return None
    with contextlib.suppress(OSError):
        (venv / LAST_USED).touch()
    return fd


@dataclass(frozen=True)
class CacheEntry:
    """One cached sandbox venv, as ``rlmesh cache list`` shows it."""

    key: str
    path: Path
    source: str
    requirements: tuple[str, ...]
    size: int
    created: float
    last_used: float
    in_use: bool


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _in_use(path: Path) -> bool:
    try:
        fd = os.open(path / IN_USE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _entry(path: Path) -> CacheEntry | None:
    try:
        marker: dict[str, Any] = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    created = float(marker.get("created", 0.0))
    try:
        last_used = (path / LAST_USED).stat().st_mtime
    except OSError:
        last_used = created
    inputs = marker.get("inputs", {})
    return CacheEntry(
        key=path.name,
        path=path,
        source=str(marker.get("source", "?")),
        requirements=tuple(inputs.get("requirements", ())),
        size=_size(path),
        created=created,
        last_used=last_used,
        in_use=_in_use(path),
    )


def list_entries() -> list[CacheEntry]:
    """Every finished venv in the cache, most recently used first."""
    root = venvs_dir()
    if not root.is_dir():
        return []
    entries = [e for p in root.iterdir() if not p.name.startswith(".") if (e := _entry(p))]
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


def _delete(path: Path, key: str) -> None:
    trash = path.parent / f".trash-{key}-{uuid.uuid4().hex[:8]}"
    os.rename(path, trash)  # gone from the cache in one step; the slow delete comes after
    shutil.rmtree(trash, ignore_errors=True)


def prune(*, older_than: float | None = None, everything: bool = False) -> list[str]:
    """Remove unused venvs; returns the removed keys. Never removes a venv in use.

    Args:
        older_than: Remove venvs not used for this many seconds.
        everything: Remove every venv not in use.
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
        if name.startswith(".") or not path.is_dir():
            continue
        entry = _entry(path)
        if entry is None:
            continue
        wanted = everything or (older_than is not None and now - entry.last_used > older_than)
        if not wanted:
            continue
        with build_lock(name) as taken:
            if not taken:
                continue  # being built or pruned right now
            fd = os.open(path / IN_USE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a sandbox runs from it
            try:
                _delete(path, name)
                removed.append(name)
            finally:
                os.close(fd)
    return removed
