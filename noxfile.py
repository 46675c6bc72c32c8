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


# A CPU build of torch for the SB3 tests: PyPI's torch is a CUDA build of several GB, and
# machines here carry a CPU wheel on disk. Without one, tests/test_sb3.py says it is skipped.
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
        session.install(wheel, "-e", ".[sb3]")
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
def lint(session: nox.Session) -> None:
    """Check formatting and lint with ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "rlmesh", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "rlmesh", "tests/test_architecture.py")


@nox.session(default=False)
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy (strict)."""
    session.install("-e", ".", "mypy>=1.10")
    session.run("mypy")


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Check the docs: links resolve and Python code blocks compile."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_docs.py")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the benchmarks and print the ratios that docs/performance.md reports."""
    session.install("-e", ".", "trio>=0.25")
    session.run("python", "benchmarks/step_latency.py", *session.posargs)
    session.run("python", "benchmarks/warm_start.py")
    session.run("python", "benchmarks/vector_throughput.py")
    session.run("python", "benchmarks/host_instructions.py")
