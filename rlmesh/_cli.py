"""The ``rlmesh`` command (also ``python -m rlmesh``): prepare sandboxes, manage and verify the
cache.

Exit codes: 0 success, 1 the operation failed (a sandbox error, a doctor check failed),
2 bad usage (an unknown option, a malformed source or duration).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import _config
from ._backends import venv_cache as _cache
from ._backends import venv_integrity
from ._errors import SandboxError
from ._version import __version__

__all__ = ["main"]

PREPARE_TIMEOUT = 600.0  # a first build may download a lot
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 12h or 7d")
    return float(match[1]) * _UNITS[match[2] or "s"]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _ago(then: float) -> str:
    seconds = max(0.0, time.time() - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _prepare(args: argparse.Namespace) -> int:
    from ._env import SandboxEnv

    started = time.monotonic()
    with SandboxEnv(args.source, **_config.cli_options(args)) as env:
        env.reset(seed=0)
        versions = env.sandbox_versions
        info = env.sandbox
    where = _cache.venvs_dir() / str(info.venv_key)
    if info.container:
        where = Path(f"{info.container['image']} ({info.container['engine']}), environment {where}")
    print(
        f"ready: {info.resolved_source} in {where} (python {versions['python']}, gymnasium "
        f"{versions['gymnasium']}, numpy {versions['numpy']}; {time.monotonic() - started:.1f} s)"
    )
    return 0


def _lock(args: argparse.Namespace) -> int:
    from ._env import SandboxEnv

    with SandboxEnv(args.source, **_config.cli_options(args)) as env:
        info = env.sandbox
    print(f"# the packages of the sandbox for {info.resolved_source} (venv {info.venv_key});")
    print("# pass this file's path in packages=[...] to build the same sandbox again")
    for name, version in sorted(info.packages.items()):
        if name != "rlmesh":  # rlmesh goes in by rlmesh_package, not by packages
            print(f"{name}=={version}")
    return 0


def _cache_path(args: argparse.Namespace) -> int:
    print(_cache.cache_dir())
    return 0


def _cache_list(args: argparse.Namespace) -> int:
    entries = _cache.list_entries()
    if args.json:
        rows = [
            {
                "key": e.key, "source": e.source, "requirements": list(e.requirements),
                "size": e.size, "created": e.created, "last_used": e.last_used,
                "in_use": e.in_use, "path": str(e.path), "problem": e.problem,
                "installed": _cache.installed_versions(e.path) if e.problem is None else {},
            }
            for e in entries
        ]  # fmt: skip
        print(json.dumps(rows, indent=2))
        return 0
    if not entries:
        print(f"no sandbox venvs in {_cache.venvs_dir()}")
        return 0
    print(f"{'KEY':24}  {'SOURCE':24}  {'SIZE':>9}  {'LAST USED':>9}  IN USE  PACKAGES")
    for e in entries:
        packages = " ".join(e.requirements)
        if e.problem:
            packages = f"DAMAGED: {e.problem} {packages}".rstrip()
        print(
            f"{e.key:24}  {e.source[:24]:24}  {_size(e.size):>9}  {_ago(e.last_used):>9}  "
            f"{'yes' if e.in_use else 'no':6}  {packages}"
        )
    return 0


def _cache_prune(args: argparse.Namespace) -> int:
    if not args.all and args.older_than is None and not args.damaged:
        print("nothing selected: pass --all, --damaged or --older-than DURATION (e.g. 7d); "
              "leftovers of dead builds are removed either way", file=sys.stderr)  # fmt: skip
    try:
        removed = _cache.prune(
            older_than=args.older_than, everything=args.all, damaged=args.damaged
        )
    except OSError as exc:
        if not _cache.read_only(exc):
            raise
        print(f"rlmesh: error: the cache {_cache.venvs_dir()} cannot be written here "
              f"({exc.strerror}): prune it where it is writable", file=sys.stderr)  # fmt: skip
        return 1
    for key in removed:
        print(f"removed {key}")
    for name in _reap_containers():
        print(f"removed container {name} (its host process is gone)")
    kept = [e for e in _cache.list_entries() if e.in_use]
    for entry in kept:
        print(f"kept {entry.key} (in use)")
    print(f"{len(removed)} removed")
    return 0


def _reap_containers() -> list[str]:
    """Remove sandbox containers whose host died (where a container engine answers)."""
    from ._backends.engine import find_engine, reap

    try:
        return reap(find_engine())
    except SandboxError:
        return []  # no engine: no containers


def _damaged() -> tuple[int, list[tuple[_cache.CacheEntry, str]]]:
    """How many venvs there are, and those whose files changed since their build."""
    entries = _cache.list_entries()
    found = [(e, why) for e in entries if (why := e.problem or venv_integrity.damage(e.path))]
    return len(entries), found


def _cache_verify(args: argparse.Namespace) -> int:
    count, damaged = _damaged()
    for entry, problem in damaged:
        print(f"DAMAGED {entry.key} ({entry.source}): {problem}")
    print(f"{count} venvs checked, {len(damaged)} damaged")
    if damaged:
        print("a damaged venv is rebuilt by the next sandbox that needs it, once none uses it; "
              "'rlmesh cache prune --damaged' removes the unused ones now")  # fmt: skip
    return 1 if damaged else 0


def _check(ok: bool, what: str, detail: str) -> bool:
    print(f"[{'ok' if ok else 'FAIL'}] {what}: {detail}")
    return ok


def _engine() -> str:
    from ._backends.engine import find_engine

    try:
        engine = find_engine()
    except SandboxError as exc:
        return f"none ({exc})"
    return f"{engine.name} {engine.version} at {engine.path}"


def _check_image(image: str) -> bool:
    """Whether the default base image has a Python the sandbox can run."""
    from ._backends.container import check_image_has_python

    what = f"base image ({_config.BASE_IMAGE_ENV})"
    try:
        python = check_image_has_python(image)
    except SandboxError as exc:
        return _check(False, what, str(exc))
    return _check(True, what, f"{image}: Python {python.version} ({python.machine}, "
                              f"{python.libc} {python.libc_version})")  # fmt: skip


def _doctor(args: argparse.Namespace) -> int:
    from ._backends.venv import offline, uv_binary

    good = True
    print(f"rlmesh {__version__}")
    good &= _check(True, "python", f"{sys.version.split()[0]} at {sys.executable}")
    try:
        uv = uv_binary()
        out = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=30)
        good &= _check(out.returncode == 0, "uv", f"{out.stdout.strip()} at {uv}")
    except Exception as exc:  # a missing or broken uv binary
        good &= _check(False, "uv", repr(exc))
    root = _cache.cache_dir()
    try:
        _cache.make_dirs(root)
        writable = os.access(root, os.W_OK)
    except OSError:
        writable = False
    entries = _cache.list_entries()
    size = sum(e.size for e in entries)
    usable = writable or bool(entries)  # a read-only cache of finished venvs is usable
    mode = "" if writable else ", read-only"
    good &= _check(usable, "cache", f"{root} ({len(entries)} venvs, {_size(size)}{mode})")
    try:
        _cache.check_trusted()
        good &= _check(True, "cache trust", "no other user can write it")
    except SandboxError as exc:
        good &= _check(False, "cache trust", str(exc))
    count, damaged = _damaged()
    detail = "; ".join(f"{e.key} ({problem})" for e, problem in damaged)
    good &= _check(not damaged, "cache venvs",
                   f"{len(damaged)} of {count} damaged: {detail}; 'rlmesh cache verify' lists "
                   "them" if damaged else f"all {count} as built")  # fmt: skip
    print(f"[info] offline mode: {'on' if offline() else 'off'} (RLMESH_OFFLINE)")
    print("[ok] backend venv: uv virtualenvs with the host interpreter")
    print(f"[info] backend container: engine {_engine()} (for base_image=...)")
    image = os.environ.get(_config.BASE_IMAGE_ENV)
    if image:
        good &= _check_image(image)
    bwrap = shutil.which("bwrap")
    print(f"[info] bubblewrap: {bwrap or 'not installed'}")
    return 0 if good else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlmesh", description="Sandboxed Gymnasium environments: prepare and manage them."
    )
    parser.add_argument("--version", action="version", version=f"rlmesh {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sandbox = commands.add_parser("sandbox", help="work with sandboxes")
    sandbox_commands = sandbox.add_subparsers(dest="sandbox_command", required=True)
    prepare = sandbox_commands.add_parser(
        "prepare", help="build a sandbox ahead of time and check that its env starts"
    )
    prepare.add_argument(
        "source", help="a Gymnasium id such as CartPole-v1, or hf://org/repo@<sha>[:suite/task]"
    )
    _config.add_cli_arguments(prepare, startup_timeout=PREPARE_TIMEOUT)
    prepare.set_defaults(func=_prepare)
    lock = sandbox_commands.add_parser(
        "lock", help="print the exact versions a sandbox holds, as a requirements file"
    )
    lock.add_argument("source", help="as for prepare")
    _config.add_cli_arguments(lock, startup_timeout=PREPARE_TIMEOUT)
    lock.set_defaults(func=_lock)

    cache = commands.add_parser("cache", help="the cache of sandbox venvs")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    cache_commands.add_parser("path", help="print the cache directory").set_defaults(
        func=_cache_path
    )
    listing = cache_commands.add_parser("list", help="list cached sandbox venvs")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_cache_list)
    prune = cache_commands.add_parser(
        "prune",
        help="remove cached venvs that no sandbox uses (never one in use), and the "
        "sandbox containers of dead host processes",
    )
    prune.add_argument("--older-than", type=_duration, default=None, metavar="DURATION",
                       help="remove venvs unused for this long (90s, 30m, 12h, 7d)")  # fmt: skip
    prune.add_argument("--all", action="store_true", help="remove every venv not in use")
    prune.add_argument("--damaged", action="store_true",
                       help="remove damaged venvs (see 'cache verify') not in use")  # fmt: skip
    prune.set_defaults(func=_cache_prune)
    verify = cache_commands.add_parser(
        "verify", help="check that every venv's files are as its build left them"
    )
    verify.set_defaults(func=_cache_verify)

    doctor = commands.add_parser("doctor", help="report uv, Python, cache and backend status")
    doctor.set_defaults(func=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError) as exc:
        print(f"rlmesh: error: {exc}", file=sys.stderr)
        return 2
    except SandboxError as exc:
        print(f"rlmesh: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rlmesh cache list | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
