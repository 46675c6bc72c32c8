"""The container backend (``base_image=``): the same worker, in a container of that image.

The image brings the system (native libraries, its own Python); the Python packages come from
a *sandbox environment* that rlmesh builds on the host with uv, for the image's Python version
and platform (``uv pip install --target --python-version --python-platform``), and mounts
read-only at ``/opt/rlmesh``. Measured here, that takes 0.4-2.3 s where a derived image built
with pip takes about 21 s, and it needs no registry, no image build and no CA certificate in
any layer (uv runs on the host, with the host's certificates). The environment lives in the
venv cache (``_cache``): content-addressed by the image id, its Python and platform and what
goes in, built once under concurrency, checked for damage at every start, listed and pruned
with the venvs. Its bytecode is compiled inside the image, by a check that the worker
imports there (which also proves the wheels fit the image's Python and libc).

The worker runs with ``--stdio``: the engine's CLI forwards the protocol on stdin and stdout
(podman with ``--log-driver passthrough`` hands the container our pipes themselves, so a round
trip costs about what a pipe's does). Hardened by default: no network, no capabilities,
``no-new-privileges``, a non-root user, a read-only root with a writable ``/tmp``, an init
process, a pids limit. The container ends with the host: the worker sees its request pipe
close (the host's death closes it too) and exits, and ``--rm`` removes it. The docker CLI runs
under a small guard that reads the exit status from the engine (podman 4.3's Docker API makes
``docker run --rm`` exit 0 whatever happened) and removes the container, also when the host
dies. Containers carry owner labels; ``engine.reap`` removes those of dead hosts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio

from .._config import Options, Resolved
from . import guard, payload
from .engine import (
    Engine,
    ImagePython,
    find_engine,
    image_id,
    owner_labels,
    probe_python,
    reap_once_in_background,
)
from .payload import requirements_file, sandbox_requirements
from .process import ChildProcess, describe_exit, raise_fd_limit, spawn
from .venv import Venv, _failed, _install, _Progress, _run, content_inputs, ensure_built
from .venv_cache import installed_versions

__all__ = ["ContainerBackend", "ContainerProcess", "run_command"]

MOUNT = "/opt/rlmesh"  # where the sandbox environment appears in the container
USER = "65534:65534"  # nobody: the worker never runs as root in the container
PIDS_LIMIT = 4096
REMOVE_WAIT = 30.0  # seconds for `rm --force` of a container
OOM_EXIT = 137  # 128 + SIGKILL: what the engine reports for a worker the OOM killer ended


def _boot(site: str) -> str:
    """The worker's start in the image's Python: our site directory first (its ``.pth`` files
    processed), the image's own packages after it."""
    return (
        "import site, sys\n"
        "if sys.path and sys.path[0] == '': del sys.path[0]\n"
        f"site.addsitedir({site!r})\n"
        f"sys.path.remove({site!r}); sys.path.insert(0, {site!r})\n"
        "from rlmesh._worker.main import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )


def _site(python: ImagePython, root: str = MOUNT) -> str:
    return f"{root}/lib/python{python.minor}/site-packages"


class ContainerProcess(ChildProcess):
    """A worker in a container: the engine's CLI process (the pid named in errors) and the
    container, which ``kill`` removes through the engine."""

    def __init__(
        self,
        *args: Any,
        engine: Engine,
        container: str,
        image: str,
        memory_limit: int | None,
        held: int,
        **kwargs: Any,
    ) -> None:
        """``ChildProcess``'s arguments, and the container's: ``held`` is the write end of the
        docker guard's watched pipe (-1 for podman)."""
        super().__init__(*args, **kwargs)
        self.engine, self.container, self.image = engine, container, image
        self.memory_limit, self.held = memory_limit, held

    def peer_fd_path(self, fd: int) -> str | None:
        return None  # the worker's fds are in the container: frames go by pipe only

    def _remove(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            now = ["--time", "0"] if self.engine.name == "podman" else []  # else: SIGKILL
            subprocess.run(
                self.engine.command("rm", "--force", *now, self.container),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=REMOVE_WAIT,
            )

    def _release(self) -> None:
        if self.held >= 0:
            with contextlib.suppress(OSError):
                os.close(self.held)
            self.held = -1

    def _after_fork(self) -> None:
        super()._after_fork()
        self._release()  # a fork must not keep the docker guard from seeing the host die

    def kill(self) -> None:
        """Kill the CLI and remove the container through the engine; never raises."""
        if self._inherited():
            return
        super().kill()
        self._remove()

    def stop(self, grace: float | None = None) -> int | None:
        code = super().stop(grace)
        if not self._inherited():
            if code is None:  # the CLI had to be killed: the container may be left
                self._remove()
            self._release()
        return code

    def abandon(self) -> None:
        super().abandon()
        if not self._inherited():
            self._release()

    def whom(self) -> str:
        return f"container {self.container} of {self.image}, {self.engine.name} pid {self.pid}"

    def _why(self, code: int | None) -> str:
        why = describe_exit(code)
        if code != OOM_EXIT:
            return why
        if self.memory_limit is not None:
            return f"{why} (killed: probably out of memory, over max_memory={self.memory_limit})"
        return f"{why} (killed: by the out-of-memory killer or by a signal)"


def run_command(
    engine: Engine,
    options: Options,
    resolved: Resolved,
    *,
    image: str,
    env_dir: Path,
    python: ImagePython,
    name: str,
    labels: dict[str, str],
) -> list[str]:
    """The engine's ``run`` command line for a sandbox (hardened unless options open it)."""
    podman = engine.name == "podman"
    args = ["run", "--interactive", "--name", name]
    args += ["--rm", "--log-driver", "passthrough"] if podman else []
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    if not options.network:
        args += ["--network", "none"]
    args += [
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", USER,
        "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,mode=1777", "--init",
        "--pids-limit", str(PIDS_LIMIT), "--workdir", "/tmp", "--env", "HOME=/tmp",
        "--volume", f"{env_dir}:{MOUNT}:ro",
    ]  # fmt: skip
    for path in resolved.mounts:
        args += ["--volume", f"{path}:{path}:ro"]
    for key, value in options.env.items():
        args += ["--env", f"{key}={value}"]
    if options.max_memory is not None:
        args += ["--memory", str(options.max_memory), "--memory-swap", str(options.max_memory)]
    if options.cpus is not None:
        args += ["--cpus", f"{options.cpus:g}"]
    if options.gpus is not None:
        if podman:  # podman reaches GPUs through CDI device names
            devices = "all" if options.gpus == "all" else options.gpus
            for device in devices.split(","):
                args += ["--device", f"nvidia.com/gpu={device.strip()}"]
        else:
            args += ["--gpus", options.gpus]
    args += ["--entrypoint", python.executable, image, "-s", "-c", _boot(_site(python)), "--stdio"]
    if options.max_cpu_seconds is not None:
        args += ["--max-cpu-seconds", str(options.max_cpu_seconds)]
    return args


def container_inputs(
    options: Options, resolved: Resolved, ident: str, python: ImagePython, image: str
) -> dict[str, Any]:
    """What the cache key of a container's sandbox environment covers."""
    return {
        "kind": "container",
        "image": ident,
        "image_python": python.version,
        "platform": python.uv_platform(image),
        **content_inputs(options, resolved),
    }


async def _build(
    engine: Engine,
    ident: str,
    python: ImagePython,
    options: Options,
    resolved: Resolved,
    inputs: dict[str, Any],
    tmp: Path,
    progress: _Progress,
) -> None:
    site = Path(_site(python, str(tmp)))
    site.mkdir(parents=True)
    tmp.chmod(0o755)  # readable by the container's unprivileged user
    item = inputs["rlmesh"]
    if item["mode"] == "copy":
        payload.copy_child(site)
    reqs = sandbox_requirements(options, resolved)
    args = [arg for item in reqs for arg in (["-r", item] if requirements_file(item) else [item])]
    target = ["--target", str(site), "--python-version", python.version,
              "--python-platform", inputs["platform"], "--python", sys.executable]  # fmt: skip
    what = f"installing {' '.join(reqs)} for the image's Python {python.version}"
    progress.say(what)
    await _install(progress, [*target, *args], what)
    if item["mode"] == "install":
        await _install(progress, ["--no-deps", *target, item["target"]],
                       f"installing rlmesh from {item['target']}")  # fmt: skip
    step = "checking the worker imports in the image (and compiling their bytecode)"
    progress.say(step)
    check = (
        f"import site; site.addsitedir({_site(python)!r}); "
        "import rlmesh._worker, numpy, gymnasium, msgpack, cloudpickle"
    )
    owner = f"{os.getuid()}:{os.getgid()}"  # the files it compiles belong to the cache's owner
    cmd = engine.command(
        "run", "--rm", "--network", "none", "--cap-drop", "ALL", "--user", owner,
        "--volume", f"{tmp}:{MOUNT}:rw", "--entrypoint", python.executable, ident, "-c", check,
    )  # fmt: skip
    code, tail = await _run(cmd, progress, step)
    if code:
        raise _failed(
            progress.label, step, code, tail[-3000:],
            f"the packages installed for Python {python.version} on {inputs['platform']} do "
            "not import in the image (a package without a wheel for the image's platform, or "
            "a system library the image lacks)",
        )  # fmt: skip


async def _ensure_environment(
    engine: Engine, options: Options, resolved: Resolved, label: str
) -> tuple[Venv, str, ImagePython]:
    image = options.base_image
    # bounded engine commands, abandoned (not waited for) when startup_timeout expires
    ident = await anyio.to_thread.run_sync(image_id, engine, image, abandon_on_cancel=True)
    python = await anyio.to_thread.run_sync(
        probe_python, engine, image, ident, abandon_on_cancel=True
    )
    inputs = await anyio.to_thread.run_sync(
        container_inputs, options, resolved, ident, python, image
    )

    async def build(tmp: Path, progress: _Progress) -> None:
        await _build(engine, ident, python, options, resolved, inputs, tmp, progress)

    env = await ensure_built(inputs, f"{label} in {image}", build)
    return env, ident, python


class ContainerBackend:
    """A container of ``base_image`` with a mounted sandbox environment, run by podman or
    docker."""

    name = "container"

    async def start(self, options: Options, resolved: Resolved, label: str) -> ContainerProcess:
        raise_fd_limit()
        # no engine: fails before anything else happens
        engine = await anyio.to_thread.run_sync(find_engine, abandon_on_cancel=True)
        reap_once_in_background(engine)
        env, ident, python = await _ensure_environment(engine, options, resolved, label)
        name = f"rlmesh-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        argv = run_command(engine, options, resolved, image=ident, env_dir=env.path,
                           python=python, name=name, labels=owner_labels())  # fmt: skip
        details = {
            "backend": self.name, "venv_key": env.key, "packages": installed_versions(env.path),
            "engine": f"{engine.name} {engine.version}", "image": options.base_image,
            "image_id": ident, "image_python": python.version, "name": name,
        }  # fmt: skip
        held = -1
        keep: tuple[int, ...] = (env.in_use_fd,)
        if engine.name == "docker":
            watched, held = os.pipe2(os.O_CLOEXEC)
            keep += (watched,)
            command = [sys.executable, "-I", guard.PATH, "docker", str(watched), name,
                       engine.path, *argv]  # fmt: skip
        else:
            watched = -1
            command = engine.command(*argv)

        make = functools.partial(ContainerProcess, engine=engine, container=name,
                                 image=options.base_image, memory_limit=options.max_memory,
                                 held=held)  # fmt: skip
        try:  # the CLI inherits the environment's in-use lock: no prune removes it meanwhile
            child = await anyio.to_thread.run_sync(
                lambda: spawn(
                    lambda _r, _w: command,
                    label=label,
                    keep_fds=keep,
                    timeouts=options.timeouts,
                    private_pids=True,
                    stdio=True,
                    handle=make,
                )
            )
        except BaseException:
            if held >= 0:
                os.close(held)
            raise
        finally:
            os.close(env.in_use_fd)
            if watched >= 0:
                os.close(watched)
        assert isinstance(child, ContainerProcess)
        child.details.update(details)
        return child


def check_image_has_python(image: str) -> ImagePython:
    """The Python of ``image`` (for ``rlmesh doctor``); ``SandboxBuildError`` if it has none."""
    engine = find_engine()
    return probe_python(engine, image, image_id(engine, image))
