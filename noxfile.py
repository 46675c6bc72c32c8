"""Development sessions: `python3 -m nox -l` lists them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests"]


# A CPU build of torch for the SB3 and TorchRL tests: PyPI's torch is a CUDA build of several
# GB, and machines here carry a CPU wheel on disk. Without one, tests/test_sb3.py and the
# recipes that need torch say they are skipped. The wheel is named in the same install as
# what needs it, so uv can only resolve against it, never fetch another torch.
TORCH_WHEELS = Path("/opt/wheels")


def _torch_cpu_wheel(session: nox.Session) -> str | None:
    tag = session.run("python", "-c", "import sys; print('cp%d%d' % sys.version_info[:2])",
                      silent=True)  # fmt: skip
    found = sorted(TORCH_WHEELS.glob(f"torch-*+cpu-{str(tag).strip()}-*.whl"))
    return str(found[-1]) if found else None


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite (real uv venvs and sandbox processes)."""
    session.install("-e", ".[test,thirdparty,ray]")
    wheel = _torch_cpu_wheel(session)
    if wheel:
        session.install(wheel, "-e", ".[sb3]", "torchrl")
    if not _can_confine():
        session.log("no 'unshare -rn' here: the Ray tests run on the host's network")
        session.run("pytest", *session.posargs)
        return
    # The Ray tests run in a network namespace with only loopback (Ray listens on every
    # interface it has), after the rest, sharing their cache: their venvs then build from
    # uv's cache alone (a build retries offline when the network is unreachable).
    shared = os.environ.get("RLMESH_TEST_CACHE")
    cache = shared or tempfile.mkdtemp(prefix="rlmesh-test-cache-")
    env = {"RLMESH_TEST_CACHE": cache}
    try:
        session.run("pytest", "-m", "not ray", *session.posargs, env=env, success_codes=[0, 5])
        session.run(*_CONFINED, "pytest", "-m", "ray", *session.posargs,
                    env={**env, "RLMESH_TEST_CONFINED": "1"}, success_codes=[0, 5],
                    external=True)  # fmt: skip
    finally:
        if not shared:
            shutil.rmtree(cache, ignore_errors=True)


_CONFINED = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


def _can_confine() -> bool:
    """Whether a process can run in a network namespace of its own with loopback up."""
    try:
        done = subprocess.run([*_CONFINED, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@nox.session
def example(session: nox.Session) -> None:
    """Set up rlmesh and run the main example, examples/gym_sandbox.py."""
    session.install("-e", ".")
    session.run("python", "examples/gym_sandbox.py")


@nox.session(default=False)
def rllib(session: nox.Session) -> None:
    """Run the RLlib recipe, examples/rllib_env.py (ray[rllib] is too heavy for nox -s tests)."""
    wheel = _torch_cpu_wheel(session)
    if not wheel:
        session.skip(f"no CPU torch wheel in {TORCH_WHEELS}: PyPI's torch is a CUDA build")
    session.install(wheel, "-e", ".", "ray[rllib]")
    session.run("python", "examples/rllib_env.py", env={"RLMESH_SANDBOX_ECHO": "0"})


@nox.session(default=False)
def lint(session: nox.Session) -> None:
    """Check formatting and lint with ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "rlmesh", "tests", "benchmarks", "examples", "tools", "noxfile.py")
    session.run("ruff", "format", "--check", "rlmesh", "tests/test_architecture.py")


@nox.session(default=False)
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy (strict)."""
    session.install("-e", ".", "mypy>=1.10")
    session.run("mypy")


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Build the docs site with mkdocs --strict (warnings fail) and check its links."""
    session.install("-e", ".[docs]")
    quiet = {"NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, not a warning
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env=quiet)
    session.run("python", "tools/check_site_links.py", "site")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the benchmarks and write docs/performance/ (plots and results.md) from one run."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/plots.py", *session.posargs)
