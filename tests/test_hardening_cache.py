"""Hardening of isolation and of the venv cache (issue 11): real bubblewrap, real uv venvs,
real child processes, and the cache as another user or a read-only mount would leave it.

Code that must run inside a sandbox runs in a probe env (a small local package written
below): ``reset(options={"code": ..., "args": ...})`` executes the code and returns its
``result`` dict as the info. docs/reliability.md ("Hardening: cache and isolation") points at
these tests.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from processes import RLMESH
from processes import rlmesh as run_rlmesh

from rlmesh import SandboxBuildError
from rlmesh._backends import venv, venv_cache
from rlmesh._backends.venv_cache import MARKER
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv

pytestmark = [pytest.mark.sandbox, pytest.mark.faults]

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


# -- the cache: trust, damage, read-only, bad markers (items 11, 12, 16, 18) --------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache that holds one freshly built venv (the probe's), for tests to copy."""
    root = tmp_path_factory.mktemp("pristine") / "rlmesh"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLMESH_CACHE_DIR", str(root))
        with SandboxEnv(PROBE_ID, **probe_options()) as env:
            env.reset()
    return root


@pytest.fixture
def cache(pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the pristine cache (times kept, as ``cp -a`` keeps them), used by this test."""
    root = tmp_path / "rlmesh"
    shutil.copytree(pristine, root, symlinks=True)
    monkeypatch.setenv("RLMESH_CACHE_DIR", str(root))
    return root


def the_venv(cache: Path) -> Path:
    [path] = [p for p in (cache / "venvs").iterdir() if not p.name.startswith(".")]
    return path


rlmesh = functools.partial(run_rlmesh, no_traceback=True)


def numpy_init(venv_path: Path) -> Path:
    return next(venv_path.glob("lib/python*/site-packages/numpy/__init__.py"))




def use_probe() -> dict[str, Any]:
    return run_probe("import os\nresult['tampered'] = os.environ.get('RLMESH_TAMPERED', '')")


def edit(venv_path: Path) -> None:
    with numpy_init(venv_path).open("a") as handle:
        handle.write("\n# tampered\n")


def add_pth(venv_path: Path) -> None:  # a .pth file runs at every start of the venv's python
    pth = numpy_init(venv_path).parent.parent / "evil.pth"
    pth.write_text("import os; os.environ['RLMESH_TAMPERED'] = 'yes'\n")


def remove(venv_path: Path) -> None:
    numpy_init(venv_path).unlink()


def open_up(venv_path: Path) -> None:  # anyone may now write the file
    path = numpy_init(venv_path)
    path.chmod(path.stat().st_mode | 0o022)


TAMPERS = {"edit": edit, "add_pth": add_pth, "remove": remove, "open_up": open_up}


@pytest.mark.parametrize("tamper", TAMPERS)
def test_a_tampered_venv_is_found_and_rebuilt_before_any_sandbox_uses_it(
    cache: Path, tamper: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rlmesh.build")
    path = the_venv(cache)
    pristine_numpy = numpy_init(path).read_bytes()
    TAMPERS[tamper](path)
    assert use_probe()["tampered"] == ""
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "changed since it was built" in log and "building sandbox venv" in log
    assert numpy_init(path).read_bytes() == pristine_numpy
    assert not list(path.glob("lib/python*/site-packages/evil.pth"))


def test_a_tampered_venv_in_use_is_refused_then_rebuilt_once_free(cache: Path) -> None:
    with SandboxEnv(PROBE_ID, **probe_options()) as running:
        running.reset()
        edit(the_venv(cache))
        with pytest.raises(SandboxBuildError, match=r"(?s)numpy/__init__.py changed.*running"):
            SandboxEnv(PROBE_ID, **probe_options())
    assert use_probe() == {"tampered": ""}  # now free: rebuilt


def test_cache_verify_doctor_and_prune_damaged(cache: Path) -> None:
    key = the_venv(cache).name
    assert "1 venvs checked, 0 damaged" in rlmesh("cache", "verify")
    assert "[ok] cache venvs: all 1 as built" in rlmesh("doctor")
    edit(the_venv(cache))
    out = rlmesh("cache", "verify", code=1)
    assert f"DAMAGED {key}" in out and "numpy/__init__.py changed since the build" in out
    assert "[FAIL] cache venvs: 1 of 1 damaged" in rlmesh("doctor", code=1)
    assert f"removed {key}" in rlmesh("cache", "prune", "--damaged")
    assert not (cache / "venvs" / key).exists()


@as_root
def test_a_venv_planted_by_another_user_is_refused(cache: Path) -> None:
    path = the_venv(cache)
    subprocess.run(["chown", "-R", "65534:65534", str(path)], check=True)
    with pytest.raises(SandboxBuildError, match=rf"(?s){path}: it belongs to uid 65534.*rm -rf"):
        SandboxEnv(PROBE_ID, **probe_options())


def test_a_symlinked_venv_is_refused(cache: Path, tmp_path: Path) -> None:
    path = the_venv(cache)
    elsewhere = tmp_path / "elsewhere"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    with pytest.raises(SandboxBuildError, match=rf"{path}: it is a symbolic link"):
        SandboxEnv(PROBE_ID, **probe_options())


@pytest.mark.parametrize("where", ["cache", "venvs", "venv"])
def test_a_cache_that_others_can_write_is_refused(cache: Path, where: str) -> None:
    path = {"cache": cache, "venvs": cache / "venvs", "venv": the_venv(cache)}[where]
    path.chmod(path.stat().st_mode | 0o022)
    with pytest.raises(SandboxBuildError, match="other user"):
        SandboxEnv(PROBE_ID, **probe_options())


@needs_bwrap
def test_bwrap_runs_a_venv_that_lives_in_the_hidden_home_directory(
    pristine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default cache is ~/.cache/rlmesh: hiding home must bind the venv back."""
    root = Path.home() / f".cache/rlmesh-test-{uuid.uuid4().hex[:8]}"
    shutil.copytree(pristine, root, symlinks=True)
    monkeypatch.setenv("RLMESH_CACHE_DIR", str(root))
    try:
        seen = run_probe("import sys\nresult['prefix'] = sys.prefix", isolation="bwrap")
        assert seen["prefix"].startswith(str(root))
    finally:
        shutil.rmtree(root)


CREATE_AND_STEP = """
import sys
from rlmesh.numpy import SandboxEnv
with SandboxEnv(sys.argv[1], packages=sys.argv[2:], imports=["rlmesh_hardening_probe"]) as env:
    env.reset(seed=0)
    env.step(0)
print("OK")
"""


@needs_bwrap
def test_a_read_only_cache_of_finished_venvs_is_usable(cache: Path) -> None:
    """The "prepare on a node image" workflow: the cache is mounted read-only."""

    def read_only(*command: str) -> subprocess.CompletedProcess[str]:
        mount = ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(cache), str(cache), "--"]
        return subprocess.run([*mount, *command], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RLMESH_SANDBOX_ECHO": "0"})  # fmt: skip

    def create(*packages: str) -> subprocess.CompletedProcess[str]:
        return read_only(
            sys.executable, "-c", CREATE_AND_STEP, PROBE_ID, probe_package(), *packages
        )

    done = create()
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr
    missing = create("msgpack>=1.0,!=0.0.16")  # a venv the cache does not hold
    assert missing.returncode == 1
    assert "cannot be written here" in missing.stderr and "rlmesh sandbox prepare" in missing.stderr
    listed = read_only(RLMESH, "cache", "list", "--json")
    assert listed.returncode == 0 and the_venv(cache).name in listed.stdout, listed.stderr
    pruned = read_only(RLMESH, "cache", "prune", "--all")
    assert pruned.returncode == 1 and "cannot be written here" in pruned.stderr
    assert "Traceback" not in pruned.stderr and the_venv(cache).is_dir()


BAD_MARKERS = {
    "not-json": "{",
    "a-list": "[]",
    "a-string": '"done"',
    "odd-fields": json.dumps({"created": "yesterday", "inputs": [], "source": 3}),
    "odd-requirements": json.dumps({"inputs": {"requirements": "gymnasium"}, "created": True}),
}


def test_bad_markers_do_not_crash_list_verify_doctor_or_prune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "rlmesh"
    monkeypatch.setenv("RLMESH_CACHE_DIR", str(root))
    for name, text in BAD_MARKERS.items():
        (root / "venvs" / name).mkdir(parents=True)
        (root / "venvs" / name / MARKER).write_text(text)
    (root / "venvs" / "no-marker").mkdir()
    listed = {row["key"]: row for row in json.loads(rlmesh("cache", "list", "--json"))}
    assert set(listed) == {*BAD_MARKERS, "no-marker"}
    assert all(row["problem"] for row in listed.values())
    assert "DAMAGED" in rlmesh("cache", "list")
    assert "6 venvs checked, 6 damaged" in rlmesh("cache", "verify", code=1)
    assert "[FAIL] cache venvs: 6 of 6 damaged" in rlmesh("doctor", code=1)
    assert "6 removed" in rlmesh("cache", "prune", "--all")
    assert not [p for p in (root / "venvs").iterdir() if not p.name.startswith(".")]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_listing_probe_never_makes_a_starting_sandbox_rebuild(
    cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``cache list`` probes each venv with a brief exclusive lock; a sandbox starting right
    then used to take the venv for gone, delete it and build it again."""
    caplog.set_level(logging.INFO, logger="rlmesh.build")
    path = the_venv(cache)
    built = (path / MARKER).stat().st_ino
    blocked = anyio.Event()
    real = venv_cache.try_build_lock

    def observed(key: str) -> int | None:
        fd = real(key)
        if fd is None:
            blocked.set()  # the start found the build lock held: it waits for the probe
        return fd

    monkeypatch.setattr(venv_cache, "try_build_lock", observed)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            started: list[AsyncSandboxEnv] = []

            async def start() -> None:
                started.append(await AsyncSandboxEnv.create(PROBE_ID, **probe_options()))

            with venv_cache.probe_in_use(path) as in_use:
                assert not in_use
                group.start_soon(start)
                await blocked.wait()
        await started[0].reset()
        await started[0].aclose()
    assert (path / MARKER).stat().st_ino == built
    assert not any("building" in r.getMessage() for r in caplog.records)


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
