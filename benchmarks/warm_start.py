"""Sandbox start-up: warm start against a bare interpreter, and the first build.

warm start   from the SandboxEnv / AsyncSandboxEnv constructor call to the first reset()
             result, with the venv already cached
baseline     ``<venv python> -c "import gymnasium; gymnasium.make('CartPole-v1').reset(seed=0)"``
             with that same venv's interpreter, measured in alternating rounds with the above
first build  a fresh rlmesh cache (uv's own cache warm): the venv build, and the whole first
             create-to-reset
by hand      what a first build replaces: ``python -m venv`` and ``pip install`` of the same
             packages (pip's own cache warm after the first round)

Run: ``python benchmarks/warm_start.py [--rounds N] [--builds N]``. Prints a Markdown table
(seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import anyio

from rlmesh._backends.venv import ensure_venv
from rlmesh._core.spec import make_spec
from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv

PACKAGES = ["gymnasium==1.3.0"]
# What a sandbox venv holds besides PACKAGES (the worker's requirements), for the by-hand build.
BY_HAND = [*PACKAGES, "cloudpickle", "msgpack"]
BASELINE = "import gymnasium; gymnasium.make('CartPole-v1').reset(seed=0)"


def sync_start() -> float:
    start = time.perf_counter()
    env = SandboxEnv("CartPole-v1", packages=PACKAGES)
    env.reset(seed=0)
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed


async def _async_start() -> float:
    start = time.perf_counter()
    env = await AsyncSandboxEnv.create("CartPole-v1", packages=PACKAGES)
    await env.reset(seed=0)
    elapsed = time.perf_counter() - start
    await env.aclose()
    return elapsed


def baseline(python: str) -> float:
    start = time.perf_counter()
    subprocess.run([python, "-c", BASELINE], check=True)
    return time.perf_counter() - start


def first_build(rounds: int) -> tuple[float, float]:
    """Median seconds of (the venv build alone, the whole first create-to-reset)."""
    builds, creates = [], []
    saved = os.environ.get("RLMESH_CACHE_DIR")
    spec = make_spec("CartPole-v1", packages=PACKAGES)
    resolved = spec.source.resolve(spec.options)
    try:
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as root:
                os.environ["RLMESH_CACHE_DIR"] = root
                start = time.perf_counter()
                venv = anyio.run(ensure_venv, spec.options, resolved, spec.label)
                builds.append(time.perf_counter() - start)
                os.close(venv.in_use_fd)
            with tempfile.TemporaryDirectory() as root:
                os.environ["RLMESH_CACHE_DIR"] = root
                creates.append(sync_start())
    finally:
        if saved is None:
            os.environ.pop("RLMESH_CACHE_DIR", None)
        else:
            os.environ["RLMESH_CACHE_DIR"] = saved
    return statistics.median(builds), statistics.median(creates)


def venv_and_pip(rounds: int) -> float:
    """Median seconds of ``python -m venv`` plus ``pip install`` of what a sandbox holds."""
    times = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as root:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "venv", root], check=True)
            subprocess.run(
                [f"{root}/bin/python", "-m", "pip", "install", "-q",
                 "--disable-pip-version-check", *BY_HAND],
                check=True,
            )  # fmt: skip
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--builds", type=int, default=3, help="first builds timed (median)")
    parser.add_argument("--pip-rounds", type=int, default=0,
                        help="also time python -m venv + pip install (median of N; 0: skip)")
    args = parser.parse_args()
    os.environ.setdefault("RLMESH_SANDBOX_ECHO", "0")
    with SandboxEnv("CartPole-v1", packages=PACKAGES) as env:  # make sure the venv is cached
        python = env.sandbox_versions["executable"]
    samples: dict[str, list[float]] = {"baseline": [], "sync": [], "async": []}
    for _ in range(args.rounds):
        samples["baseline"].append(baseline(python))
        samples["sync"].append(sync_start())
        samples["async"].append(anyio.run(_async_start))
    med = {name: statistics.median(values) for name, values in samples.items()}
    build, create = first_build(args.builds)
    print(f"CartPole-v1, packages={PACKAGES}, median of {args.rounds} alternating rounds.\n")
    print("| what | seconds | ratio to baseline | target |")
    print("|---|---:|---:|---:|")
    print(f"| baseline: venv python imports gymnasium, makes and resets | {med['baseline']:.3f} | "
          "1.00x | |")  # fmt: skip
    for face, name in (("sync", "SandboxEnv"), ("async", "AsyncSandboxEnv")):
        print(f"| warm start: {name}(...) to first reset() | {med[face]:.3f} | "
              f"**{med[face] / med['baseline']:.2f}x** | <= 1.3x |")  # fmt: skip
    print(f"| first build of the venv (uv cache warm) | {build:.3f} | | < 3 s |")
    print(f"| first create to first reset, build included | {create:.3f} | | |")
    if args.pip_rounds:
        by_hand = venv_and_pip(args.pip_rounds)
        print(f"| by hand: python -m venv + pip install (pip cache warm) | {by_hand:.3f} | | |")


if __name__ == "__main__":
    main()
