"""Hardening of isolation and of the venv cache (issue 11): real bubblewrap, real uv venvs,
real child processes, and the cache as another user or a read-only mount would leave it.

Code that must run inside a sandbox runs in a probe env (a small local package written
below): ``reset(options={"code": ..., "args": ...})`` executes the code and returns its
``result`` dict as the info. docs/reliability.md ("Hardening: cache and isolation") points at
these tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlmesh._backends import venv
from rlmesh.numpy import SandboxEnv

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None and os.environ.get("CI") != "true",
    reason="bubblewrap is not installed here (CI installs it, so there this test runs)",
)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to act as another user)")

PROBE_ID = "rlmesh_hardening/Probe-v0"
PROBE_FILES = {
    "pyproject.toml": """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "rlmesh-hardening-probe"
version = "0.1.0"
dependencies = ["gymnasium"]

[tool.hatch.build.targets.wheel]
packages = ["rlmesh_hardening_probe"]
""",
    "rlmesh_hardening_probe/__init__.py": '''\
"""An env whose reset() runs the code it is given and returns its ``result`` as the info."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class Probe(gym.Env):
    observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        scope = {"result": {}, "args": options.get("args", {})}
        exec(options.get("code", ""), scope)
        return np.zeros(1, np.float32), scope["result"]

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}


gym.register("rlmesh_hardening/Probe-v0", entry_point=Probe)
''',
}


SESSION_CACHE = Path(os.environ["RLMESH_CACHE_DIR"])  # set by conftest; tests may move it


def probe_package() -> str:
    """The probe package's directory (beside the test cache, so a kept cache reuses it)."""
    root = SESSION_CACHE.parent / "hardening-probe"
    for name, text in PROBE_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    return str(root)


def probe_options(*extra: str) -> dict[str, Any]:
    return {"packages": [probe_package(), *extra], "imports": ["rlmesh_hardening_probe"]}


def run_probe(code: str, args: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """Run ``code`` in a fresh probe sandbox; its ``result``."""
    with SandboxEnv(PROBE_ID, **probe_options(), **options) as env:
        _, info = env.reset(options={"code": code, "args": args or {}})
    return dict(info)


# -- isolation: what a bwrap sandbox sees of the host (items 8 and 9) ----------------------

SEES = """
import ctypes, os, socket
result["environ"] = dict(os.environ)
try:
    result["home"] = sorted(os.listdir(args["home"]))
except OSError as exc:
    result["home"] = repr(exc)
try:
    with open("/etc/shadow") as handle:
        result["shadow"] = handle.read()
except OSError as exc:
    result["shadow"] = ""
for name, address in (("unix", args["unix"]), ("abstract", "\\0" + args["abstract"])):
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(address)
        result[name] = True
    except OSError:
        result[name] = False
    finally:
        client.close()
with open("/proc/self/status") as handle:
    result["caps"] = [line.split()[1] for line in handle if line.startswith("CapEff")][0]
if args.get("remount"):  # only ever in a sandbox with its own mount namespace
    libc = ctypes.CDLL(None, use_errno=True)
    MS_REMOUNT, MS_BIND = 32, 4096
    result["remount"] = libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND, None) == 0
try:
    with open(args["outside"], "w") as handle:
        handle.write("escaped")
    result["wrote_outside"] = True
except OSError:
    result["wrote_outside"] = False
"""


@pytest.fixture
def host_bait(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Secrets in the environment, a file in the home directory, a unix socket outside /tmp
    (a path one and an abstract one), and a path outside /tmp to write to."""
    tag = uuid.uuid4().hex[:8]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"aws-secret-{tag}")
    monkeypatch.setenv("HF_TOKEN", f"hf-secret-{tag}")
    home = Path.home()
    secret = home / f".rlmesh-test-secret-{tag}"
    secret.write_text("secret")
    path_socket = Path("/var/tmp") / f"rlmesh-test-{tag}.sock"
    servers = [socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)]
    servers[0].bind(str(path_socket))
    servers[1].bind("\0" + f"rlmesh-test-{tag}")
    for server in servers:
        server.listen()
    outside = Path("/var/tmp") / f"rlmesh-test-escape-{tag}"
    try:
        yield {
            "home": str(home),
            "secret_file": secret.name,
            "unix": str(path_socket),
            "abstract": f"rlmesh-test-{tag}",
            "outside": str(outside),
            "tag": tag,
        }
    finally:
        for server in servers:
            server.close()
        for path in (secret, path_socket, outside):
            path.unlink(missing_ok=True)


def test_a_plain_sandbox_sees_the_host_and_takes_the_env_option(host_bait: dict[str, str]) -> None:
    """The control: without bwrap the sandbox sees it all (and the env option adds to it)."""
    seen = run_probe(SEES, host_bait, env={"MUJOCO_GL": "egl"})
    assert seen["environ"]["AWS_SECRET_ACCESS_KEY"] == f"aws-secret-{host_bait['tag']}"
    assert seen["environ"]["MUJOCO_GL"] == "egl"
    assert host_bait["secret_file"] in seen["home"]
    assert seen["unix"] and seen["abstract"] and seen["wrote_outside"]


@needs_bwrap
def test_bwrap_keeps_secrets_home_and_sockets_away(host_bait: dict[str, str]) -> None:
    seen = run_probe(SEES, host_bait, isolation="bwrap", env={"MUJOCO_GL": "egl"})
    environ = seen["environ"]
    assert "AWS_SECRET_ACCESS_KEY" not in environ and "HF_TOKEN" not in environ
    assert not any(host_bait["tag"] in value for value in environ.values())
    assert environ["MUJOCO_GL"] == "egl"  # the env option reaches the sandbox
    assert environ["HOME"] == "/tmp" and environ["VIRTUAL_ENV"]
    assert host_bait["secret_file"] not in seen["home"]
    assert not seen["shadow"].strip()  # empty (masked), or unreadable as a non-root user
    assert not seen["unix"] and not seen["abstract"]


@needs_bwrap
def test_bwrap_drops_capabilities_so_no_remount_and_no_write_outside_tmp(
    host_bait: dict[str, str],
) -> None:
    seen = run_probe(SEES, {**host_bait, "remount": "yes"}, isolation="bwrap")
    assert int(seen["caps"], 16) == 0
    assert not seen["remount"]
    assert not seen["wrote_outside"]
    assert not Path(host_bait["outside"]).exists()


def test_the_env_option_is_checked_and_stays_out_of_the_cache_key() -> None:
    from rlmesh._backends.venv import key_inputs, venv_key
    from rlmesh._core.spec import make_spec

    def key(**options: Any) -> str:
        spec = make_spec("CartPole-v1", **options)
        return venv_key(key_inputs(spec.options, spec.source.resolve(spec.options)))

    assert key(env={"MUJOCO_GL": "egl"}) == key()
    with pytest.raises(TypeError, match=r"env=\{'MUJOCO_GL': '1'\}"):
        SandboxEnv("CartPole-v1", env={"MUJOCO_GL": 1})
    for bad in ({"A=B": "x"}, {"": "x"}, {"A\0": "x"}, {"A": "x\0"}):
        with pytest.raises(ValueError, match="env"):
            SandboxEnv("CartPole-v1", env=bad)
    with pytest.raises(TypeError, match="dict of environment variables"):
        SandboxEnv("CartPole-v1", env="MUJOCO_GL=egl")
    from rlmesh import _cli, _config

    line = ["sandbox", "prepare", "CartPole-v1", "--env", "MUJOCO_GL=egl", "--env", "A=b=c"]
    given = _config.cli_options(_cli._parser().parse_args(line))
    assert _config.check_options(given).env == {"A": "b=c", "MUJOCO_GL": "egl"}


# -- build-time code (item 10) ------------------------------------------------------------

BUILD_HOOK = """
import os
from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class Witness(BuildHookInterface):
    def initialize(self, version, build_data):
        with open(os.environ["RLMESH_TEST_BUILD_WITNESS"], "w") as handle:
            handle.write(os.environ.get("AWS_SECRET_ACCESS_KEY", "no secret"))
"""


@needs_bwrap
def test_build_time_code_runs_on_the_host_even_under_bwrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What docs/reliability.md says: a package's build code runs unsandboxed, as you."""
    project = tmp_path / f"witness-{uuid.uuid4().hex[:8]}"
    (project / "rlmesh_witness").mkdir(parents=True)
    (project / "rlmesh_witness" / "__init__.py").write_text("")
    (project / "hatch_build.py").write_text(BUILD_HOOK)
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "rlmesh-witness"\nversion = "0.1.0"\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["rlmesh_witness"]\n'
        '[tool.hatch.build.hooks.custom]\npath = "hatch_build.py"\n'
    )
    witness = Path("/var/tmp") / f"rlmesh-build-witness-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("RLMESH_TEST_BUILD_WITNESS", str(witness))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "visible-at-build-time")
    try:
        with SandboxEnv("CartPole-v1", packages=[str(project)], isolation="bwrap") as env:
            env.reset(seed=0)
        assert witness.read_text() == "visible-at-build-time"  # outside /tmp, with the secret
    finally:
        witness.unlink(missing_ok=True)


# -- local packages: FIFOs, devices, large files (item 7) ---------------------------------

HASH = "import sys; from pathlib import Path; from rlmesh._backends.venv import _hash_tree; " \
       "print(_hash_tree(Path(sys.argv[1])))"  # fmt: skip


def test_fifos_and_devices_in_a_local_package_are_skipped_not_read(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "module.py").write_text("x = 1\n")
    os.mkfifo(project / "events.fifo")
    (project / "zeros").symlink_to("/dev/zero")  # reading it would never end
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(project / "control.sock"))
    try:
        done = subprocess.run([sys.executable, "-c", HASH, str(project)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr
    (project / "events.fifo").unlink()
    (project / "zeros").unlink()
    (project / "control.sock").unlink()
    assert done.stdout.strip() == venv._hash_tree(project)  # only regular files count


def test_local_files_are_hashed_once_and_large_ones_keyed_by_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    small, large = project / "small.py", project / "weights.bin"
    small.write_text("x = 1\n")
    large.write_bytes(b"\0" * (venv.LARGE_FILE + 1))
    first = venv._hash_tree(project)
    digests = []
    real_sha256 = venv.hashlib.sha256

    def counting_sha256(*args: Any) -> Any:
        digests.append(args)
        return real_sha256(*args)

    monkeypatch.setattr(venv.hashlib, "sha256", counting_sha256)
    assert venv._hash_tree(project) == first
    assert len(digests) == 1  # the tree's own digest: no file was read again
    monkeypatch.undo()

    times = large.stat()
    with large.open("r+b") as handle:  # same size, mtime set back: a large file's content
        handle.write(b"\1")  # is not read, so this does not count
    os.utime(large, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert venv._hash_tree(project) == first
    os.utime(large, ns=(times.st_atime_ns, times.st_mtime_ns + 10**9))
    assert venv._hash_tree(project) != first

    before = venv._hash_tree(project)
    times = small.stat()
    small.write_text("x = 2\n")  # same size, mtime set back: a small file's content counts
    os.utime(small, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert venv._hash_tree(project) != before
