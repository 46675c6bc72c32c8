"""The venv backend: a sandbox virtualenv built with uv (content-addressed) and a child in it.

A sandbox venv lives at ``<cache>/venvs/<key>`` (layout and locks: ``_cache``). The key hashes
everything that changes what gets installed: the interpreter (real path and version), uv's
version, the normalised requirement set (with the content hash of local wheels and project
directories: regular files only, each read once per process, and files over ``LARGE_FILE``
keyed by size and mtime), the rlmesh that goes in, and the protocol version. Construction
kwargs, ``render_mode`` and ``env`` are not part of it.

A build runs under the key's exclusive lock, in a temporary directory beside the final one,
and is published with one atomic rename after a completion marker is written, so a build
killed at any moment leaves nothing a later run mistakes for a finished venv. The marker
holds a manifest of the venv's files; every start checks it (``_integrity.damage``) and rebuilds
a venv that changed since its build, or refuses one that a running sandbox still uses.

Packages are *copied* from uv's cache (``--link-mode=copy``), never hard-linked: code in one
sandbox that writes into its own site-packages cannot change uv's cache or another sandbox.
Bytecode is compiled for what the worker imports as the last build step (a check that the venv
works, too); anything else compiles on first import.

The rlmesh that runs in the sandbox is, by default, a copy of the host's own package files
(so the two can never disagree on the protocol); ``rlmesh_package`` installs a wheel or a
published release instead, always without its host-side dependencies.

``RLMESH_OFFLINE=1`` builds from uv's cache alone; without it, a build that fails for want of
the network is retried offline once.

Every command of a build (uv, and the check that the venv imports) runs under a small guard
process in a session of its own: a cancelled build (``startup_timeout``, Ctrl-C) kills that
whole process group, uv's build backends and compilers included, and the guard kills it
when the host dies (it watches a pipe whose other end only the host holds). A build that
died anyway leaves a ``.tmp-*`` directory; the next build, of any key, removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .._config import Options, Resolved
from .._errors import SandboxBuildError
from .._wire.protocol import PROTOCOL_VERSION
from . import guard, payload
from . import venv_cache as _cache
from . import venv_integrity as _integrity
from .bwrap import bwrap_command, bwrap_environment
from .payload import dist_version, requirements_file, sandbox_requirements
from .process import ChildProcess, raise_fd_limit, spawn_worker
from .python import find_interpreter
from .venv_cache import installed_versions

__all__ = ["Venv", "VenvBackend", "ensure_venv", "key_inputs", "venv_key"]

log = logging.getLogger("rlmesh.build")

OFFLINE_ENV = "RLMESH_OFFLINE"
LAYOUT = 3  # bump when the venv layout changes in a way old venvs cannot serve
HEARTBEAT = 2.0  # seconds between "still building" messages
_NETWORK_HINTS = (
    "failed to fetch",
    "error sending request",
    "dns error",
    "connection refused",
    "network is unreachable",
    "timed out",
    "could not connect",
)
LARGE_FILE = 16 << 20  # a local file this big is keyed by its size and mtime, not read
_DIGESTS_KEPT = 65536  # content hashes memoised by stat fingerprint (then forgotten at once)
_digests: dict[tuple[int, ...], str] = {}
_SKIP_DIRS = {"__pycache__", ".git", "build", "dist", ".nox", ".venv", ".tox"}


@dataclass(frozen=True)
class Venv:
    """A finished sandbox virtualenv, held in use through ``in_use_fd`` (close it when done)."""

    path: Path
    key: str
    in_use_fd: int

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes", "on")


def _normalise(item: str) -> str:
    try:
        req = Requirement(item)
    except InvalidRequirement:
        return item  # a local path
    req.name = canonicalize_name(req.name)
    return str(req)


def _stat_key(info: os.stat_result) -> tuple[int, ...]:
    # ctime moves on every change of content and cannot be set back, unlike mtime
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _hash_file(path: Path) -> str:
    """Content hash of a regular file (``SandboxBuildError`` for anything else).

    Memoised by the file's stat fingerprint, so an unchanged file is read once per process;
    a file over ``LARGE_FILE`` bytes is keyed by its size and mtime alone, never read.
    """
    try:
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode) and info.st_size > LARGE_FILE:
            return f"size {info.st_size} mtime {info.st_mtime_ns}"
        known = _digests.get(_stat_key(info))
        if known is not None:
            return known
        # O_NONBLOCK: if the file was swapped for a FIFO, opening it must not wait
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxBuildError(f"cannot read the local package file {path}: {exc}") from None
    with open(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SandboxBuildError(f"the local package file {path} is not a regular file")
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if len(_digests) >= _DIGESTS_KEPT:
        _digests.clear()
    _digests[_stat_key(info)] = digest.hexdigest()
    return digest.hexdigest()


def _hash_tree(root: Path) -> str:
    """Hash of a local project directory: its regular files (build outputs and caches left
    out). FIFOs, sockets and devices, and links to them, are skipped: they are not package
    content, and reading one could block forever or never end."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                regular = stat.S_ISREG(path.stat().st_mode)
            except OSError:  # a dangling link
                regular = False
            if regular:
                digest.update(str(path.relative_to(root)).encode() + b"\0")
                digest.update(_hash_file(path).encode())
    return digest.hexdigest()


def local_dist_dir() -> Path:
    """Where ``rlmesh_package="local"`` looks for wheels: the ``dist/`` of the checkout that
    holds the imported rlmesh (an editable install), else that of the current directory."""
    checkout = payload.PACKAGE_DIR.parent
    return (checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()) / "dist"


def local_wheel() -> Path:
    """The newest ``rlmesh-*.whl`` in ``local_dist_dir()``, or ``SandboxBuildError``."""
    dist = local_dist_dir()
    wheels = [wheel for wheel in dist.glob("rlmesh-*.whl") if wheel.is_file()]
    if not wheels:
        raise SandboxBuildError(
            f"rlmesh_package='local' found no rlmesh-*.whl in {dist}; build one with "
            "'uv build --wheel' in the rlmesh checkout, or pass the wheel's path"
        )
    return max(wheels, key=lambda wheel: wheel.stat().st_mtime)


def _rlmesh_item(options: Options) -> dict[str, str]:
    """How rlmesh goes into the sandbox, with what identifies it for the cache key."""
    choice = options.rlmesh_package
    if choice is None:
        return {"mode": "copy", "hash": payload.own_child_hash()}
    if choice == "local":
        choice = str(local_wheel())
    path = Path(choice)
    if path.is_file():
        return {"mode": "install", "target": str(path), "hash": _hash_file(path)}
    return {"mode": "install", "target": choice}


def key_inputs(options: Options, resolved: Resolved) -> dict[str, Any]:
    """Everything the cache key covers, as plain data (also stored in the venv's marker)."""
    python = find_interpreter(options.python)
    return {
        "python": python.path,
        "python_version": python.version,
        **content_inputs(options, resolved),
    }


def content_inputs(options: Options, resolved: Resolved) -> dict[str, Any]:
    """What any backend's cache key covers of what goes in: the requirements (local ones by
    content), uv's version, the rlmesh that goes in, the protocol and the layout."""
    reqs = sorted(_normalise(item) for item in sandbox_requirements(options, resolved))
    local = {}
    for item in reqs:
        path = Path(item)
        if path.is_file():
            local[item] = _hash_file(path)
        elif path.is_dir():
            local[item] = _hash_tree(path)
    return {
        "layout": LAYOUT,
        "protocol": PROTOCOL_VERSION,
        "uv": dist_version("uv"),
        "requirements": reqs,
        "local": local,
        "rlmesh": _rlmesh_item(options),
    }


def venv_key(inputs: dict[str, Any]) -> str:
    """The cache key of a set of key inputs."""
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def uv_binary() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())


# Where pip and requests users keep a CA bundle (a TLS-intercepting proxy's); uv reads only
# SSL_CERT_FILE (or the system store with UV_NATIVE_TLS), so the first of these is passed on.
CA_BUNDLE_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def _uv_env() -> dict[str, str]:
    env = dict(os.environ)
    env["UV_PYTHON_DOWNLOADS"] = "never"  # the sandbox uses the host's interpreter, always
    env.pop("VIRTUAL_ENV", None)
    if not env.get("SSL_CERT_FILE"):
        for name in CA_BUNDLE_VARIABLES:
            bundle = env.get(name, "")
            if bundle and os.path.isfile(bundle):
                env["SSL_CERT_FILE"] = bundle
                break
    return env


class _Progress:
    """Says what a build is doing: on a terminal to stderr, otherwise through ``logging``."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        stream = sys.stderr
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def say(self, text: str) -> None:
        if self.tty:
            print(f"rlmesh: {self.label}: {text}", file=sys.stderr, flush=True)
        log.info("%s: %s", self.label, text)

    async def heartbeat(self, step: str) -> None:
        while True:
            await anyio.sleep(HEARTBEAT)
            self.say(f"still {step} ({time.monotonic() - self.started:.0f} s)")


KILL_WAIT = 5.0  # for a killed build command's exit


async def _run(cmd: list[str], progress: _Progress, step: str) -> tuple[int, str]:
    """Run a build command under the guard; its exit status and the last lines it printed."""
    log.debug("%s: %s", progress.label, " ".join(cmd))
    watched, held = os.pipe2(os.O_CLOEXEC)
    try:
        process = await anyio.open_process(
            [sys.executable, "-I", guard.PATH, "build", str(watched), *cmd],
            stdin=subprocess.DEVNULL,
            env=_uv_env(),
            start_new_session=True,
            pass_fds=(watched,),
        )
    except BaseException:
        os.close(held)
        raise
    finally:
        os.close(watched)
    output: dict[str, bytes] = {}

    async def drain(stream: Any, name: str) -> None:
        chunks = [chunk async for chunk in stream]
        output[name] = b"".join(chunks)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(progress.heartbeat, step)
            async with anyio.create_task_group() as streams:
                streams.start_soon(drain, process.stdout, "out")
                streams.start_soon(drain, process.stderr, "err")
                code = await process.wait()
                with contextlib.suppress(OSError):  # leftovers of the command's group
                    os.killpg(process.pid, signal.SIGKILL)
            group.cancel_scope.cancel()
    except BaseException:  # cancelled (startup_timeout, Ctrl-C) or failed: end it all now
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    finally:
        os.close(held)
        with anyio.CancelScope(shield=True), anyio.move_on_after(KILL_WAIT):
            await process.aclose()
    text = output.get("err", b"").decode("utf-8", "replace")
    text += output.get("out", b"").decode("utf-8", "replace")
    return code, "\n".join(text.strip().splitlines()[-30:])


_CAUSE = re.compile(r"(?:^|\s)(?:error|cause|caused by):\s*(.+)", re.IGNORECASE)


def build_cause(tail: str) -> str:
    """The line of uv's (or a build backend's) output that says what went wrong: the last
    ``error:`` or ``cause:`` (a compiler's error, a missing ``swig``, an unknown package)."""
    tree = " \u2502\u2570\u2500\u25b6\u00d7"  # uv's tree-drawing characters
    lines = [line.strip(tree) for line in tail.splitlines() if line.strip()]
    causes = [m.group(1).strip() for line in lines if (m := _CAUSE.search(line))]
    return causes[-1] if causes else ""


def _failed(label: str, step: str, code: int, tail: str, hint: str) -> SandboxBuildError:
    cause = build_cause(tail)
    if "build backend" in tail.lower() or "failed to build" in tail.lower():
        hint += (" (a package is built on the host: a compiler or tool it needs, such as swig, "
                 "must be installed there)")  # fmt: skip
    return SandboxBuildError(
        f"building the sandbox for {label!r} failed while {step} (exit status {code})"
        + (f": {cause}" if cause else "")
        + f"; {hint}",
        source=label,
        output_tail=tail,
    )


async def _install(progress: _Progress, args: list[str], step: str) -> None:
    """``uv pip install``, offline if asked, or offline again if the network failed."""
    base = [uv_binary(), "pip", "install", "--quiet", "--link-mode=copy", *args]
    if offline():
        code, tail = await _run([*base, "--offline"], progress, step)
        if code:
            raise _failed(
                progress.label, step, code, tail,
                f"{OFFLINE_ENV} is set, so only uv's cache was used and it lacks what uv names "
                "below; run once with network access (or 'rlmesh sandbox prepare' where there "
                "is one) to fill the cache",
            )  # fmt: skip
        return
    code, tail = await _run(base, progress, step)
    if code and any(hint in tail.lower() for hint in _NETWORK_HINTS):
        progress.say("the package index is unreachable; trying again from uv's cache alone")
        code, tail = await _run([*base, "--offline"], progress, f"{step} (offline)")
        if code:
            raise _failed(
                progress.label, step, code, tail,
                "the package index could not be reached and uv's cache lacks what uv names "
                "below; connect to the network once to fill the cache",
            )  # fmt: skip
    elif code:
        raise _failed(progress.label, step, code, tail, "check the package names and versions")


Builder = Callable[[Path, "_Progress"], Awaitable[None]]


async def ensure_venv(options: Options, resolved: Resolved, label: str) -> Venv:
    """Return the sandbox venv for these options (in use until ``in_use_fd`` is closed).

    Builds it once if it is not cached; concurrent callers, in this process or others, wait
    for that one build and reuse it. A cached venv whose files changed since its build is
    rebuilt (or refused while in use, or in a read-only cache); a cache another user could
    write is refused.
    """
    inputs = await anyio.to_thread.run_sync(key_inputs, options, resolved)
    reqs = sandbox_requirements(options, resolved)
    return await ensure_built(
        inputs, label, lambda tmp, progress: _build(reqs, inputs, tmp, progress)
    )


async def ensure_built(inputs: dict[str, Any], label: str, build: Builder) -> Venv:
    """The cached environment for ``inputs`` (its key), built by ``build(tmp, progress)``
    into a fresh directory if missing or damaged; ``ensure_venv``'s machinery, for every
    kind of environment the cache holds (venvs, container mounts)."""
    key = venv_key(inputs)
    final = _cache.venvs_dir() / key
    _cache.check_trusted(final)
    try:
        fd = _cache.open_in_use(final)
    except BlockingIOError:
        fd = None  # pruned or probed right now: look again under the build lock
    if fd is not None and await _damage(final, fd) is None:
        return Venv(final, key, fd)
    lock = await _acquire_build_lock(key)  # None: the cache is read-only
    try:
        fd = await _wait_in_use(final)
        if fd is not None:
            problem = await _damage(final, fd)
            if problem is None:
                return Venv(final, key, fd)
            _discard_damaged(final, problem, label, read_only=lock is None)
        elif lock is None:
            raise SandboxBuildError(
                f"the sandbox cache {final.parent} cannot be written here (read-only, or not "
                f"yours) and holds no venv for {label!r} (key {key}): build it where the cache "
                f"is writable ('rlmesh sandbox prepare' with the same options), or point "
                f"{_cache.CACHE_ENV} at a directory you can write",
                source=label,
            )
        await _build_and_publish(build, label, inputs, key, final)
        fd = await _wait_in_use(final)
        if fd is None:
            raise SandboxBuildError(f"the sandbox venv {final} vanished right after its build")
    finally:
        if lock is not None:
            os.close(lock)
    return Venv(final, key, fd)


async def _damage(final: Path, fd: int) -> str | None:
    """``_integrity.damage(final)``; closes the in-use ``fd`` unless the venv is sound."""
    try:
        problem = await anyio.to_thread.run_sync(_integrity.damage, final)
    except BaseException:  # cancelled (startup_timeout) or failed: the venv is not in use
        os.close(fd)
        raise
    if problem is not None:
        os.close(fd)
    return problem


def _discard_damaged(final: Path, problem: str, label: str, *, read_only: bool) -> None:
    what = f"the sandbox venv {final} changed since it was built ({problem})"
    if read_only:
        raise SandboxBuildError(
            f"{what}, and the cache cannot be written here, so it cannot be rebuilt: rebuild "
            f"it where the cache is writable ('rlmesh sandbox prepare'; copy a cache with "
            f"'cp -a', which keeps file times), or point {_cache.CACHE_ENV} elsewhere",
            source=label,
        )
    if not _cache.discard(final):
        raise SandboxBuildError(
            f"{what}; a running sandbox uses it, so it is not rebuilt under that sandbox: close "
            f"the sandboxes that use it ('rlmesh cache list' shows it in use) and start again, "
            f"which rebuilds it",
            source=label,
        )
    _Progress(label).say(f"{what}: removed it, rebuilding")


async def _acquire_build_lock(key: str) -> int | None:
    """The build lock of ``key`` (waiting for another build), or ``None`` for a read-only
    cache."""
    delay = 0.01
    while True:
        try:
            fd = _cache.try_build_lock(key)
        except OSError as exc:
            if _cache.read_only(exc):
                return None
            raise
        if fd is not None:
            return fd
        await anyio.sleep(delay)  # another build of this key runs (bounded by startup_timeout)
        delay = min(delay * 2, 0.2)


async def _wait_in_use(final: Path) -> int | None:
    """``open_in_use``, waiting out a brief exclusive hold (a listing's probe)."""
    delay = 0.01
    while True:
        try:
            return _cache.open_in_use(final)
        except BlockingIOError:
            await anyio.sleep(delay)  # bounded by startup_timeout
            delay = min(delay * 2, 0.2)


async def _build_and_publish(
    build: Builder, label: str, inputs: dict[str, Any], key: str, final: Path
) -> None:
    root = final.parent
    for stale in root.glob(f".tmp-{key}-*"):  # dead builds of this key: we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    await anyio.to_thread.run_sync(_cache.remove_dead_builds)  # and of other keys
    if final.exists() and not _cache.is_complete(final):  # a foreign leftover, never in use
        shutil.rmtree(final, ignore_errors=True)
    tmp = root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    progress = _Progress(label)
    progress.say(f"building sandbox venv (key {key})")
    try:
        await build(tmp, progress)
        files = await anyio.to_thread.run_sync(_integrity.manifest, tmp)
        marker = {
            "key": key, "source": label, "created": time.time(), "inputs": inputs, "files": files,
        }  # fmt: skip
        (tmp / _cache.MARKER).write_text(json.dumps(marker))
        os.rename(tmp, final)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, tmp, True)
        raise
    progress.say(f"built sandbox venv in {time.monotonic() - progress.started:.1f} s")


async def _build(reqs: list[str], inputs: dict[str, Any], tmp: Path, progress: _Progress) -> None:
    step = "creating the virtualenv"
    cmd = [uv_binary(), "venv", "--quiet", "--relocatable", "--python", inputs["python"], str(tmp)]
    code, tail = await _run(cmd, progress, step)
    if code:
        raise _failed(progress.label, step, code, tail, "check that the host interpreter works")
    item = inputs["rlmesh"]
    if item["mode"] == "copy":
        minor = ".".join(inputs["python_version"].split()[0].split(".")[:2])
        payload.copy_child(tmp / "lib" / f"python{minor}" / "site-packages")
    python = str(tmp / "bin" / "python")
    progress.say(f"installing {' '.join(reqs)}")
    args = [arg for item in reqs for arg in (["-r", item] if requirements_file(item) else [item])]
    await _install(progress, ["--python", python, *args], f"installing {' '.join(reqs)}")
    if item["mode"] == "install":
        target = item["target"]
        await _install(progress, ["--no-deps", "--python", python, target],
                       f"installing rlmesh from {target}")  # fmt: skip
    step = "checking the worker imports (and compiling their bytecode)"
    progress.say(step)
    check = "import rlmesh._worker, numpy, gymnasium, msgpack, cloudpickle"
    code, tail = await _run([python, "-I", "-c", check], progress, step)
    if code:
        raise _failed(progress.label, step, code, tail[-3000:],
                      "the installed packages do not import together")  # fmt: skip


def _child_env(venv_path: str, options: Options) -> dict[str, str]:
    """The sandbox's environment: the host's (a plain child) or a minimal one (bwrap, where
    the host's secrets must stay out), then the venv, then the ``env`` option."""
    env = bwrap_environment() if options.isolation == "bwrap" else dict(os.environ)
    env["VIRTUAL_ENV"] = venv_path
    env["PATH"] = os.pathsep.join([os.path.join(venv_path, "bin"), env.get("PATH", "")])
    env.pop("PYTHONHOME", None)
    env.update(options.env)
    return env


class VenvBackend:
    """A uv virtualenv on this host (content-addressed, cached) and a child process in it."""

    name = "venv"

    async def start(
        self, options: Options, resolved: Resolved, label: str, *, protocol_fd: int | None = None
    ) -> ChildProcess:
        """``Backend.start``; ``protocol_fd``: a socket for the worker's protocol instead of
        pipes (``spawn_worker``)."""
        raise_fd_limit()  # before the build and its locks open any
        bwrap = options.isolation == "bwrap"
        if bwrap:
            bwrap_command()  # checked before the build: a missing bwrap fails fast
        worker_args: list[str] = []
        if options.max_memory is not None:
            worker_args += ["--max-memory", str(options.max_memory)]
        if options.max_cpu_seconds is not None:
            worker_args += ["--max-cpu-seconds", str(options.max_cpu_seconds)]
        venv = await ensure_venv(options, resolved, label)
        wrapper: list[str] = []
        if bwrap:
            keep = [str(venv.path), find_interpreter(options.python).prefix, *resolved.mounts]
            wrapper = bwrap_command(keep, network=options.network)
        details = {"backend": self.name, "venv_key": venv.key,
                   "packages": installed_versions(venv.path)}  # fmt: skip
        try:  # the child inherits the venv's in-use lock, so no prune removes it meanwhile
            child = await anyio.to_thread.run_sync(
                lambda: spawn_worker(
                    venv.python,
                    label=label,
                    env=_child_env(str(venv.path), options),
                    keep_fds=(venv.in_use_fd,),
                    worker_args=worker_args,
                    wrapper=wrapper,
                    timeouts=options.timeouts,
                    protocol_fd=protocol_fd,
                )
            )
        finally:
            os.close(venv.in_use_fd)
        child.details.update(details)
        return child
