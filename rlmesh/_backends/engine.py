"""Container engines (the ``podman`` and ``docker`` CLIs): find one, ask about images, reap.

Everything here runs an engine's command line with a bound on its wait; nothing talks to a
daemon's API directly, so a ``docker`` CLI pointed at podman's socket (``DOCKER_HOST``) works
like a Docker daemon.

``find_engine`` picks the engine: ``$RLMESH_CONTAINER_ENGINE`` (``podman``, ``docker`` or the
path of either CLI), else the first of podman and docker that answers. An engine that answers
nothing is an error naming what was tried, raised before anything is built.

Every sandbox container carries labels naming its owner (host name, boot id, pid and the pid's
start time); ``reap`` removes the containers whose owner is gone (a host killed before it could
remove them).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .._errors import SandboxBuildError

__all__ = [
    "ENGINE_ENV",
    "Engine",
    "ImagePython",
    "find_engine",
    "image_id",
    "owner_labels",
    "probe_python",
    "reap",
]

ENGINE_ENV = "RLMESH_CONTAINER_ENGINE"
ENGINES = ("podman", "docker")
ANSWER_WAIT = 10.0  # seconds for an engine to answer `version`
INSPECT_WAIT = 30.0  # seconds for `image inspect`, `ps`, `rm`
LABEL = "io.rlmesh.sandbox"  # every sandbox container has it; the owner labels below too
_PROBE = (
    "import json, platform, sys\n"
    "libc, libc_version = platform.libc_ver()\n"
    "print(json.dumps({'version': '%d.%d.%d' % sys.version_info[:3], 'executable': "
    "sys.executable, 'machine': platform.machine(), 'libc': libc, 'libc_version': "
    "libc_version, 'implementation': sys.implementation.name}))"
)


@dataclass(frozen=True)
class Engine:
    """A container engine's CLI that answered.

    Attributes:
        name: ``"podman"`` or ``"docker"`` (what the CLI is, whatever daemon it talks to).
        path: The CLI's path.
        version: What ``version`` said of the engine (the server's, for docker).
    """

    name: str
    path: str
    version: str

    def command(self, *args: str) -> list[str]:
        return [self.path, *args]

    def run(self, *args: str, timeout: float = INSPECT_WAIT) -> subprocess.CompletedProcess[str]:
        """Run an engine command; ``SandboxBuildError`` if it does not end in ``timeout``."""
        try:
            return subprocess.run(
                self.command(*args),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise SandboxBuildError(
                f"'{self.name} {' '.join(args[:2])}' did not answer within {timeout:g} s; is "
                f"the {self.name} engine working ('{self.name} info')?"
            ) from None


def _ask(name: str, path: str) -> tuple[Engine | None, str]:
    """Ask the CLI at ``path`` for its engine's version: the engine, or why not."""
    what = "{{.Server.Version}}" if name == "docker" else "{{.Client.Version}}"
    try:
        out = subprocess.run(
            [path, "version", "--format", what],
            capture_output=True,
            text=True,
            timeout=ANSWER_WAIT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return None, f"{name} ({path}) did not answer within {ANSWER_WAIT:g} s"
    except OSError as exc:
        return None, f"{name} ({path}): {exc.strerror}"
    version = out.stdout.strip()
    if out.returncode or not version:
        last = (out.stderr.strip().splitlines() or ["no answer"])[-1]
        return None, f"{name} ({path}): {last}"
    return Engine(name, path, version), ""


@functools.lru_cache(maxsize=4)
def _find(choice: str) -> Engine:
    if choice:
        path = shutil.which(choice) or choice
        kind = Path(choice).name
        name = "docker" if "docker" in kind else "podman" if "podman" in kind else ""
        if not name:
            raise SandboxBuildError(
                f"{ENGINE_ENV}={choice!r} names neither podman nor docker; set it to 'podman', "
                "'docker' or the path of one of their command-line tools"
            )
        engine, why = _ask(name, path)
        if engine is None:
            raise SandboxBuildError(
                f"the container engine {ENGINE_ENV} chose did not answer: {why}; start it (for "
                f"docker: the daemon, or DOCKER_HOST), or unset {ENGINE_ENV} to try podman and "
                "docker in turn"
            )
        return engine
    tried = []
    for name in ENGINES:
        found = shutil.which(name)
        if found is None:
            tried.append(f"{name} (not found on PATH)")
            continue
        answered, why = _ask(name, found)
        if answered is not None:
            return answered
        tried.append(why)
    raise SandboxBuildError(
        "base_image needs a container engine, and none answered: tried "
        + "; ".join(tried)
        + f". Install podman or Docker (and start Docker's daemon), set {ENGINE_ENV} to the "
        "command-line tool to use, or leave base_image unset to run the env in a uv "
        "virtualenv on this host"
    )


def find_engine() -> Engine:
    """The container engine to use (``SandboxBuildError`` naming what was tried if none)."""
    return _find(os.environ.get(ENGINE_ENV, "").strip())


def image_id(engine: Engine, image: str, *, pull: bool = True) -> str:
    """The id of ``image`` (pulled first if the engine lacks it and ``pull``)."""
    out = engine.run("image", "inspect", "--format", "{{.Id}}", image)
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip().splitlines()[0]
    if pull:
        pulled = engine.run("pull", "--quiet", image, timeout=600.0)
        if pulled.returncode == 0:
            return image_id(engine, image, pull=False)
        why = (pulled.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise SandboxBuildError(
            f"the base image {image!r} is not in {engine.name}'s store and pulling it failed: "
            f"{why}; check the name, or load the image ('{engine.name} load', "
            f"'{engine.name} import') and try again"
        )
    raise SandboxBuildError(f"the base image {image!r} is not in {engine.name}'s store")


@dataclass(frozen=True)
class ImagePython:
    """The Python of a base image, as a probe inside it found it."""

    executable: str
    version: str
    machine: str
    libc: str
    libc_version: str

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    def uv_platform(self, image: str) -> str:
        """uv's ``--python-platform`` for wheels that run in the image."""
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(self.machine, self.machine)
        if arch not in ("x86_64", "aarch64"):
            raise SandboxBuildError(
                f"the base image {image!r} runs on {self.machine}; rlmesh builds container "
                "sandboxes for x86_64 and aarch64 images only"
            )
        if self.libc != "glibc":
            return f"{arch}-unknown-linux-musl"
        try:
            major, minor = (int(part) for part in self.libc_version.split(".")[:2])
        except ValueError:
            major, minor = 2, 17
        if (major, minor) < (2, 17):
            raise SandboxBuildError(
                f"the base image {image!r} has glibc {self.libc_version}, older than the "
                "oldest wheels uv installs for (manylinux 2.17); use a newer base image"
            )
        return f"{arch}-manylinux_2_{min(max(minor, 17), 40)}"


def _probe_cache(image: str) -> Path:
    from .venv_cache import cache_dir

    return cache_dir() / "images" / (image.replace(":", "-").replace("/", "-") + ".json")


def probe_python(engine: Engine, image: str, ident: str) -> ImagePython:
    """The Python in the image with id ``ident`` (asked once per image id, then on disk)."""
    cached = _probe_cache(ident)
    with contextlib.suppress(OSError, ValueError, TypeError):
        return ImagePython(**json.loads(cached.read_text()))
    tried = []
    for python in ("python3", "python"):
        out = engine.run("run", "--rm", "--network", "none", "--entrypoint", python, ident,
                         "-c", _PROBE, timeout=120.0)  # fmt: skip
        if out.returncode == 0:
            try:
                found = json.loads(out.stdout.strip().splitlines()[-1])
                if found.pop("implementation") != "cpython":
                    tried.append(f"{python} is not CPython")
                    continue
                result = ImagePython(**found)
            except (ValueError, IndexError, TypeError, KeyError):
                tried.append(f"{python} answered {out.stdout[-200:]!r}")
                continue
            if tuple(int(p) for p in result.minor.split(".")) < (3, 8):
                raise SandboxBuildError(
                    f"the base image {image!r} has Python {result.version}; the sandbox worker "
                    "needs Python 3.8 or newer in the image"
                )
            with contextlib.suppress(OSError):
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps(result.__dict__))
                os.replace(tmp, cached)
            return result
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        tried.append(f"{python}: {last}")
    raise SandboxBuildError(
        f"the base image {image!r} has no Python the sandbox can run: rlmesh runs the env with "
        f"the image's own python3 (3.8 or newer), and found none ({'; '.join(tried)}). Use an "
        "image with Python (such as python:3.12-slim), or install python3 in yours"
    )


# -- owners and the reaper ---------------------------------------------------------------------


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The start time of ``pid`` (clock ticks after boot), to tell a reused pid; "" if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def owner_labels() -> dict[str, str]:
    """The labels that name this process as a container's owner."""
    return {
        LABEL: "1",
        f"{LABEL}.host": socket.gethostname(),
        f"{LABEL}.boot": _boot_id(),
        f"{LABEL}.pid": str(os.getpid()),
        f"{LABEL}.started": _start_time(os.getpid()),
    }


def _owner_gone(labels: dict[str, str]) -> bool:
    if labels.get(f"{LABEL}.host") != socket.gethostname():
        return False  # another machine's (a shared engine): not ours to judge
    if labels.get(f"{LABEL}.boot") != _boot_id():
        return True  # this machine rebooted since: its owner is gone
    try:
        pid = int(labels.get(f"{LABEL}.pid", ""))
    except ValueError:
        return False
    started = _start_time(pid)
    return not started or started != labels.get(f"{LABEL}.started")


def reap(engine: Engine) -> list[str]:
    """Remove the sandbox containers whose owning process is gone; returns their names."""
    out = engine.run("ps", "--all", "--filter", f"label={LABEL}", "--format", "{{.Names}}")
    if out.returncode:
        return []
    names = out.stdout.split()
    if not names:
        return []
    inspected = engine.run("inspect", "--format", "{{.Name}} {{json .Config.Labels}}", *names)
    dead = []
    for line in inspected.stdout.splitlines():
        name, _, blob = line.partition(" ")
        with contextlib.suppress(ValueError):
            labels = json.loads(blob)
            if isinstance(labels, dict) and _owner_gone(labels):
                dead.append(name.lstrip("/"))
    for name in dead:  # one by one: one that vanished meanwhile must not keep the rest
        engine.run("rm", "--force", name)
    return dead


_reaped: set[str] = set()
_reap_lock = threading.Lock()


def reap_once_in_background(engine: Engine) -> None:
    """``reap`` once per engine and process, in a daemon thread (it never delays a start)."""
    with _reap_lock:
        if engine.path in _reaped:
            return
        _reaped.add(engine.path)

    def run() -> None:
        with contextlib.suppress(Exception):  # best effort: the next process tries again
            reap(engine)

    threading.Thread(target=run, name="rlmesh-reaper", daemon=True).start()
