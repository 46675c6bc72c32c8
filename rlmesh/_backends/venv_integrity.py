"""Whether what is in the venv cache can be trusted: who may write a path, and whether a
venv's files are as its build left them. No uv, no locks (those are ``venv_cache``'s).

A build records a manifest of the venv's files in its completion marker (``manifest``): the
size and whole-second mtime of each file (whole seconds, so a copy that keeps times, such as
``cp -a`` or an image layer, still matches), or a link's target. ``damage`` checks a venv
against it at every start: one ``lstat`` a file. Owners must be you or root (in a user
namespace, the unmapped owner that root's files show there counts as root), and nothing may
be writable by group or others.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "damage", "manifest", "read_marker", "unsafe_reason"]

MARKER = "rlmesh-sandbox.json"
_STARTUP_HOOKS = ("sitecustomize", "usercustomize")  # run by python at every start


@functools.lru_cache(maxsize=1)
def _unmapped_uid() -> int | None:
    """The uid that stands for "not mapped here" (root's files included) inside a user
    namespace (a rootless container, bwrap); ``None`` in the initial namespace."""
    try:
        if Path("/proc/self/uid_map").read_text().split() == ["0", "0", "4294967295"]:
            return None
        return int(Path("/proc/sys/kernel/overflowuid").read_text())
    except (OSError, ValueError):
        return None


def _trusted_owner(uid: int) -> bool:
    return uid in (os.geteuid(), 0, _unmapped_uid())


def unsafe_reason(path: Path, *, follow: bool = False, sticky_ok: bool = False) -> str | None:
    """Why a user other than you (or root) could change what is at ``path``; ``None`` if none
    can (or it does not exist). A symbolic link is refused unless ``follow``; ``sticky_ok``
    (for the parents of the cache) allows a sticky directory such as ``/tmp``. In a user
    namespace, the unmapped owner that root's files show there counts as root."""
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            if not follow:
                return f"it is a symbolic link (to {os.readlink(path)})"
            info = os.stat(path)
    except FileNotFoundError:
        return None
    if not _trusted_owner(info.st_uid):
        return f"it belongs to uid {info.st_uid}, neither you (uid {os.geteuid()}) nor root"
    if info.st_mode & 0o022 and not (sticky_ok and info.st_mode & stat.S_ISVTX):
        return f"users other than its owner may write to it (mode {stat.filemode(info.st_mode)})"
    return None


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``root`` (links not followed): its path relative to ``root``."""
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(root / relative if relative else root) as entries:
            for entry in entries:
                name = f"{relative}/{entry.name}" if relative else entry.name
                info = entry.stat(follow_symlinks=False)
                yield name, info
                if stat.S_ISDIR(info.st_mode):
                    pending.append(name)


def _fingerprint(path: str | Path, info: os.stat_result) -> list[Any]:
    """What the manifest keeps of a file: size and whole-second mtime (so a copy that keeps
    times, such as ``cp -a`` or an image layer, still matches), or a link's target."""
    if stat.S_ISLNK(info.st_mode):
        return ["link", os.readlink(path)]
    return [info.st_size, int(info.st_mtime)]


def manifest(venv: Path) -> dict[str, list[Any]]:
    """Record a freshly built venv's files (and make them writable by their owner only)."""
    files = {}
    for name, info in _walk(venv):
        if info.st_mode & 0o022 and not stat.S_ISLNK(info.st_mode):
            os.chmod(venv / name, stat.S_IMODE(info.st_mode) & ~0o022)
        if not stat.S_ISDIR(info.st_mode):
            files[name] = _fingerprint(venv / name, info)
    return files


def read_marker(venv: Path) -> tuple[dict[str, Any], str | None]:
    """A venv's completion marker (``{}`` if unreadable) and what is wrong with it, if anything."""
    try:
        marker = json.loads((venv / MARKER).read_text())
    except FileNotFoundError:
        return {}, "it has no completion marker"
    except (OSError, ValueError) as exc:
        return {}, f"its completion marker cannot be read ({exc})"
    if not isinstance(marker, dict):
        return {}, "its completion marker is not a JSON object"
    if not isinstance(marker.get("files"), dict):
        return marker, "its completion marker has no manifest of its files"
    return marker, None


def damage(venv: Path) -> str | None:
    """What changed in a finished venv since its build, or ``None`` if nothing did.

    Checks every file of the manifest (size, mtime, owner, mode) and that no file appeared at
    the top of site-packages, where a ``.pth`` or ``sitecustomize`` would run at every start.
    Files added deeper (bytecode compiled on first import, an env's own caches) are allowed.
    """
    marker, problem = read_marker(venv)
    if problem:
        return problem
    files: dict[str, Any] = marker["files"]
    base = f"{venv}/"  # string joins: this loop runs over every file at every start
    for name, recorded in files.items():
        path = base + str(name)
        try:
            info = os.lstat(path)
            now = _fingerprint(path, info)
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as exc:
            return f"{name} cannot be checked ({exc.strerror})"
        if now != recorded:
            return f"{name} changed since the build"
        writable = info.st_mode & 0o022 and not stat.S_ISLNK(info.st_mode)
        if writable or not _trusted_owner(info.st_uid):
            return f"{name} may be written by another user"
    for site in venv.glob("lib/python*/site-packages"):
        with os.scandir(site) as entries:
            for entry in entries:
                name = str((site / entry.name).relative_to(venv))
                hook = entry.name.split(".")[0] in _STARTUP_HOOKS
                if name not in files and (hook or not entry.is_dir(follow_symlinks=False)):
                    return f"{name} appeared after the build"
    return None
