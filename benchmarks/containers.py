"""The container backend beside the venv backend, in one run: warm start and step latency.

warm start    from the SandboxEnv constructor call to the first reset() result, with the
              sandbox environment already cached (both backends)
step          one SandboxEnv.step of CartPole (the env resets at episode ends)

Each row is a container sandbox (podman, and the docker CLI where it answers) against the venv
sandbox, measured in alternating rounds in this process. No CPU pinning: the container's
processes are started by the engine, out of this process's reach; the affinity is printed.

Run: ``python benchmarks/containers.py [--image IMAGE] [--rounds N] [--steps N]``. The image
defaults to the one ``.ci/containers`` makes. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from step_latency import Stepper, _timed

from rlmesh._backends.engine import ENGINE_ENV, _find
from rlmesh.numpy import SandboxEnv

IMAGE = "localhost/rlmesh-test-python"


def _engines() -> list[str]:
    found = []
    for name in ("podman", "docker"):
        _find.cache_clear()
        try:
            _find(name)
            found.append(name)
        except Exception:  # not installed or not answering: left out of the table
            continue
    _find.cache_clear()
    return found


def _options(backend: str, image: str) -> dict[str, Any]:
    if backend == "venv":
        os.environ.pop(ENGINE_ENV, None)
        return {}
    os.environ[ENGINE_ENV] = backend
    return {"base_image": image}


def warm_start(backend: str, image: str) -> float:
    options = _options(backend, image)
    start = time.perf_counter()
    env = SandboxEnv("CartPole-v1", **options)
    env.reset(seed=0)
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed


def step_us(backend: str, image: str, steps: int) -> float:
    with SandboxEnv("CartPole-v1", **_options(backend, image)) as env:
        env.reset(seed=0)
        stepper = Stepper(env)
        _timed(stepper, max(50, steps // 10))  # warm up
        return _timed(stepper, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    if "DOCKER_HOST" not in os.environ and Path("/run/podman/podman.sock").exists():
        os.environ["DOCKER_HOST"] = "unix:///run/podman/podman.sock"  # .ci/containers' socket
    engines = _engines()
    if not engines:
        sys.exit("no container engine answered (podman or docker): run .ci/containers")
    backends = ["venv", *engines]
    for backend in backends:  # build (or find) each sandbox once, outside the timing
        warm_start(backend, args.image)
    starts: dict[str, list[float]] = {b: [] for b in backends}
    steps: dict[str, list[float]] = {b: [] for b in backends}
    for _ in range(args.rounds):
        for backend in backends:
            starts[backend].append(warm_start(backend, args.image))
            steps[backend].append(step_us(backend, args.image, args.steps))
    start = {b: statistics.median(v) for b, v in starts.items()}
    step = {b: statistics.median(v) for b, v in steps.items()}
    cpus = sorted(os.sched_getaffinity(0))
    print(f"# containers vs venv: {args.rounds} rounds, {args.steps} steps each, image "
          f"{args.image}, CPUs {cpus} (no pinning), {os.cpu_count()} online")  # fmt: skip
    print()
    print("| sandbox | warm start (s) | vs venv | step (us) | vs venv |")
    print("|---|---:|---:|---:|---:|")
    for backend in backends:
        name = f"{backend} container" if backend != "venv" else "venv (uv virtualenv, child)"
        print(f"| {name} | {start[backend]:.3f} | **{start[backend] / start['venv']:.2f}x** | "
              f"{step[backend]:.1f} | **{step[backend] / step['venv']:.2f}x** |")  # fmt: skip


if __name__ == "__main__":
    main()
