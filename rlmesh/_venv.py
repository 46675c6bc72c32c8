"""The venv backend: build (or reuse) a sandbox virtualenv with uv, content-addressed.

A sandbox venv lives at ``<cache>/venvs/<key>``. The key hashes everything that changes what
gets installed: the interpreter (real path and version), uv's version, the requirement set,
the rlmesh that goes in, and the protocol version. Construction kwargs and ``render_mode``
are not part of it.

A build happens under a per-key file lock, in a temporary directory beside the final one,
and is published with one atomic rename after a completion marker is written, so a build
killed at any moment leaves nothing a later run mistakes for a finished venv; leftovers of
dead builds are removed by the next build of the same key.

The rlmesh that runs in the sandbox is, by default, a copy of the host's own package files
(so the two can never disagree on the protocol); ``rlmesh_package`` installs a wheel or a
published release instead, always without its host-side dependencies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
from packaging.utils import canonicalize_name

from ._errors import SandboxBuildError
from ._protocol import PROTOCOL_VERSION
from ._spec import SandboxSpec

__all__ = ["Venv", "cache_dir", "ensure_venv", "sandbox_requirements"]

log = logging.getLogger("rlmesh.build")

CACHE_ENV = "RLMESH_CACHE_DIR"
MARKER = "rlmesh-sandbox.json"
LAYOUT = 1  # bump when the venv layout changes in a way old venvs cannot serve
_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Venv:
    """A finished sandbox virtualenv."""

    path: Path
    key: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def cache_dir() -> Path:
    """The rlmesh cache root: ``$RLMESH_CACHE_DIR``, else ``$XDG_CACHE_HOME/rlmesh``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlmesh"


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def sandbox_requirements(spec: SandboxSpec) -> list[str]:
    """The requirements installed into the sandbox: the user's, plus what the worker needs.

    Where ``packages`` names no gymnasium, the sandbox gets exactly the host's version, so a
    sandboxed run matches an in-process one. cloudpickle follows the host's version because
    the host pickles what the child unpickles.
    """
    named = spec.requirement_names()
    reqs = list(spec.packages)
    for name, default in (
        ("gymnasium", f"gymnasium=={_dist_version('gymnasium')}"),
        ("cloudpickle", f"cloudpickle=={_dist_version('cloudpickle')}"),
        ("msgpack", "msgpack>=1.0"),
    ):
        if canonicalize_name(name) not in named:
            reqs.append(default)
    return reqs


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_files() -> list[Path]:
    return sorted(
        p
        for p in _PACKAGE_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".typed")
    )


def _rlmesh_item(spec: SandboxSpec) -> dict[str, str]:
    """How rlmesh goes into the sandbox, with what identifies it for the cache key."""
    choice = spec.rlmesh_package
    if choice is None:
        digest = hashlib.sha256()
        for path in _package_files():
            digest.update(str(path.relative_to(_PACKAGE_DIR)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
        return {"mode": "copy", "hash": digest.hexdigest()}
    if choice == "local":
        dist = _PACKAGE_DIR.parent / "dist"
        wheels = sorted(dist.glob("rlmesh-*.whl"), key=lambda p: p.stat().st_mtime)
        if not wheels:
            raise SandboxBuildError(
                f"rlmesh_package='local' needs a wheel in {dist}; build one with "
                "'uv build --wheel' in the rlmesh checkout"
            )
        choice = str(wheels[-1])
    path = Path(choice)
    if path.is_file():
        return {"mode": "install", "target": str(path), "hash": _hash_file(path)}
    return {"mode": "install", "target": choice}


def _key_inputs(spec: SandboxSpec) -> dict[str, Any]:
    reqs = sandbox_requirements(spec)
    files = {}
    for item in reqs:
        path = Path(item)
        if path.is_file():
            files[item] = _hash_file(path)
    return {
        "layout": LAYOUT,
        "protocol": PROTOCOL_VERSION,
        "python": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        "python_version": sys.version,
        "uv": _dist_version("uv"),
        "requirements": sorted(reqs),
        "files": files,
        "rlmesh": _rlmesh_item(spec),
    }


def venv_key(inputs: dict[str, Any]) -> str:
    """The cache key of a set of key inputs."""
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _uv() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())


def _uv_env() -> dict[str, str]:
    env = dict(os.environ)
    env["UV_PYTHON_DOWNLOADS"] = "never"  # the sandbox uses the host's interpreter, always
    env.pop("VIRTUAL_ENV", None)
    return env


async def _run_uv(args: list[str], spec: SandboxSpec, step: str) -> None:
    cmd = [_uv(), *args]
    log.debug("%s: %s", spec.label, " ".join(cmd))
    result = await anyio.run_process(cmd, env=_uv_env(), check=False)
    if result.returncode != 0:
        text = (result.stderr or b"").decode("utf-8", "replace")
        text += (result.stdout or b"").decode("utf-8", "replace")
        tail = "\n".join(text.strip().splitlines()[-30:])
        raise SandboxBuildError(
            f"building the sandbox for {spec.label!r} failed while {step} "
            f"(uv exited with {result.returncode}); check the package names and versions",
            source=spec.label,
            output_tail=tail,
        )


@contextlib.asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await anyio.sleep(delay)  # another build of this key runs; it is bounded
                delay = min(delay * 2, 0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def _copy_rlmesh(venv: Path) -> None:
    target = _site_packages(venv) / "rlmesh"
    for path in _package_files():
        dest = target / path.relative_to(_PACKAGE_DIR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)


def _complete(path: Path) -> bool:
    return (path / MARKER).is_file()


async def ensure_venv(spec: SandboxSpec) -> Venv:
    """Return the sandbox venv for ``spec``, building it once if it is not cached."""
    inputs = _key_inputs(spec)
    key = venv_key(inputs)
    root = cache_dir() / "venvs"
    final = root / key
    if _complete(final):
        return Venv(final, key)
    async with _file_lock(root / f".{key}.lock"):
        if _complete(final):
            return Venv(final, key)
        for stale in root.glob(f".tmp-{key}-*"):  # dead builds of this key: we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # not complete, yet not ours: a foreign leftover; move it aside
            shutil.rmtree(final, ignore_errors=True)
        tmp = root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        log.info("building sandbox venv for %s (key %s)", spec.label, key)
        try:
            await _build(spec, inputs, tmp)
            (tmp / MARKER).write_text(
                json.dumps(
                    {"key": key, "source": spec.label, "created": time.time(), "inputs": inputs},
                    indent=2,
                )
            )
            os.rename(tmp, final)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, tmp, True)
            raise
        log.info("built sandbox venv for %s in %.1f s", spec.label, time.monotonic() - started)
    return Venv(final, key)


async def _build(spec: SandboxSpec, inputs: dict[str, Any], tmp: Path) -> None:
    python = inputs["python"]
    await _run_uv(
        ["venv", "--quiet", "--relocatable", "--python", python, str(tmp)],
        spec,
        "creating the virtualenv",
    )
    item = inputs["rlmesh"]
    if item["mode"] == "copy":
        _copy_rlmesh(tmp)
    reqs = sandbox_requirements(spec)
    venv_python = str(tmp / "bin" / "python")
    log.info("%s: installing %s", spec.label, " ".join(reqs))
    await _run_uv(
        ["pip", "install", "--quiet", "--compile-bytecode", "--python", venv_python, *reqs],
        spec,
        f"installing {' '.join(reqs)}",
    )
    if item["mode"] == "install":
        await _run_uv(
            [
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--compile-bytecode",
                "--python",
                venv_python,
                item["target"],
            ],
            spec,
            f"installing rlmesh from {item['target']}",
        )
