"""Development sessions: `python3 -m nox -l` lists them."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite (real uv venvs and sandbox processes)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


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
