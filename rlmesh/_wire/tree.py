"""The process tree below a sandbox: find and kill every descendant, detached ones included.

A process the env detaches (a double fork and ``setsid``) leaves the worker's process group,
so killing the group misses it. The worker therefore makes itself a child subreaper
(``PR_SET_CHILD_SUBREAPER``): an orphan below it is re-parented to the worker instead of
init, so while the worker lives every process the env started is its descendant, whatever
its session. ``kill_descendants`` walks ``/proc/<pid>/task/<tid>/children`` (or, where the
kernel lacks those files, every ``/proc/<pid>/stat``) and SIGKILLs what it finds, walking
again until a walk finds nothing new: a process may fork while we walk, and the children of
one we kill move up to the worker.

Standard library only: the worker uses it too (at exit and when the host dies), and the host
uses it before it kills a worker that is still alive.
"""

from __future__ import annotations

import contextlib
import os
import signal

__all__ = ["become_subreaper", "descendants", "kill_descendants"]

_PR_SET_CHILD_SUBREAPER = 36
MAX_ROUNDS = 64  # walks per kill: a fork bomb is not stopped by walking anyway (use limits)


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; whether that worked."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _children_files(pid: int) -> list[int] | None:
    """Direct children from ``/proc/<pid>/task/*/children``; ``None`` where that is missing."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found += [int(item) for item in handle.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None  # the kernel has no children files (CONFIG_PROC_CHILDREN)
        except (OSError, ValueError):
            continue
    return found


def _parents() -> dict[int, list[int]]:
    """Every process's children, from ``/proc/<pid>/stat`` (the slow way)."""
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
            parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(parent, []).append(int(name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first), as far as ``/proc`` shows it."""
    found: list[int] = []
    slow: dict[int, list[int]] | None = None
    stack = [pid]
    seen = {pid}
    while stack:
        parent = stack.pop()
        children = None if slow is not None else _children_files(parent)
        if children is None:
            if slow is None:
                slow = _parents()
            children = slow.get(parent, [])
        for child in children:
            if child not in seen:
                seen.add(child)
                found.append(child)
                stack.append(child)
    return found


def kill_descendants(pid: int, spare: int | None = None) -> int:
    """SIGKILL every process below ``pid`` (but ``spare``) until a walk finds no new one; how
    many it hit.

    Call it while ``pid`` is alive and a subreaper (the worker): its orphans then stay below
    it. Never raises.
    """
    killed: set[int] = set() if spare is None else {spare}
    for _ in range(MAX_ROUNDS):
        try:
            fresh = [child for child in descendants(pid) if child not in killed]
        except OSError:
            break
        if not fresh:
            break
        for child in fresh:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        killed.update(fresh)
    return len(killed - {spare})
