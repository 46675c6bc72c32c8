"""Vector env throughput: sandboxed vector envs against Gymnasium's, side by side in one run.

For CartPole-v1 and a synthetic 210x160x3 uint8 image env (``bench_envs/``), num_envs 8:

- Gymnasium ``SyncVectorEnv`` in-process (no sandbox, no IPC): the overhead reference;
- Gymnasium ``AsyncVectorEnv`` with shared memory (one process per sub-env): the baseline;
- ``SandboxVectorEnv`` with 1 and 2 workers (each runs a ``SyncVectorEnv`` of its share).

Subjects are measured in alternating rounds (median). Run:
``python benchmarks/vector_throughput.py [--steps N] [--rounds R]``. Prints a Markdown table
of env-steps per second and ratios to ``AsyncVectorEnv``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rlmesh.numpy import SandboxVectorEnv

BENCH_ENVS = Path(__file__).parent / "bench_envs"
sys.path.insert(0, str(BENCH_ENVS))
import rlmesh_bench_envs  # noqa: E402, F401 - registers rlmesh_bench/Image-v0

NUM_ENVS = 8
CASES = {
    "CartPole-v1": {},
    "rlmesh_bench/Image-v0": {"packages": [str(BENCH_ENVS)], "imports": ["rlmesh_bench_envs"]},
}


def steps_per_second(env: Any, steps: int, rng: np.random.Generator) -> float:
    actions = [env.action_space.sample() for _ in range(16)]
    start = time.perf_counter()
    for i in range(steps):
        env.step(actions[i % 16])
    return steps * env.num_envs / (time.perf_counter() - start)


def subjects(env_id: str, options: dict[str, Any], num_envs: int = NUM_ENVS) -> dict[str, Any]:
    """The vector envs compared, by name (two workers only when there are two sub-envs)."""
    made = {
        "Gymnasium SyncVectorEnv, in-process": gym.make_vec(
            env_id, num_envs=num_envs, vectorization_mode="sync"
        ),
        "Gymnasium AsyncVectorEnv, shared memory": gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="async",
            vector_kwargs={"shared_memory": True},
        ),
        "SandboxVectorEnv, 1 worker": SandboxVectorEnv(env_id, num_envs=num_envs, **options),
    }
    if num_envs >= 2:
        made["SandboxVectorEnv, 2 workers"] = SandboxVectorEnv(
            env_id, num_envs=num_envs, num_workers=2, **options
        )
    return made


def run(
    env_id: str, options: dict[str, Any], steps: int, rounds: int, num_envs: int = NUM_ENVS
) -> dict[str, float]:
    """Median env-steps per second of each subject, in alternating rounds."""
    envs = subjects(env_id, options, num_envs)
    rng = np.random.default_rng(0)
    try:
        for env in envs.values():
            env.reset(seed=0)
            env.action_space.seed(0)
            steps_per_second(env, max(20, steps // 10), rng)
        samples: dict[str, list[float]] = {name: [] for name in envs}
        for _ in range(rounds):
            for name, env in envs.items():
                samples[name].append(steps_per_second(env, steps, rng))
    finally:
        for env in envs.values():
            env.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="batch steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("RLMESH_SANDBOX_ECHO", "0")
    print(f"num_envs {NUM_ENVS}, {os.cpu_count()} CPUs, median of {args.rounds} rounds of "
          f"{args.steps} batch steps.\n")  # fmt: skip
    print("| env | what | env-steps/s | vs AsyncVectorEnv |")
    print("|---|---|---:|---:|")
    for env_id, options in CASES.items():
        result = run(env_id, options, args.steps, args.rounds)
        base = result["Gymnasium AsyncVectorEnv, shared memory"]
        for name, value in result.items():
            print(f"| {env_id} | {name} | {value:,.0f} | **{value / base:.2f}x** |")


if __name__ == "__main__":
    main()
