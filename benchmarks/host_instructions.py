"""Host instructions per step, counted by valgrind: a timing-free before/after measure.

Wall-clock ratios on a small shared VM swing by 10-40 % from run to run, more than most code
changes move them. This counts the instructions the *host* process executes per step of each
face, under ``valgrind --tool=callgrind`` (the sandbox child runs natively, untraced), with
spinning off (``RLMESH_SPIN_US=0``) so that waiting costs a fixed ``poll`` instead of a
timing-dependent number of loop turns. Each face first runs once natively (so its venv is
built before counting), then ``--steps`` and ``3 x --steps`` steps (both at once);
the difference divided by the extra steps is the per-step cost, with startup cancelled out.
Run to run, a count moves by about 15 million instructions (startup and threads), so the
default of 2,000 steps keeps the per-step figure within a few percent.

Run: ``python benchmarks/host_instructions.py [--steps N] [--tree PATH ...]``. Each
``--tree`` is an rlmesh checkout put first on ``PYTHONPATH`` (default: the one imported
here); give two to compare revisions (``git worktree add /tmp/base <rev>``). Prints a
Markdown table of instructions per step.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FACES = {
    "SandboxEnv": """
from rlmesh.numpy import SandboxEnv
with SandboxEnv("CartPole-v1") as env:
    env.reset(seed=0)
    for i in range(STEPS):
        if env.step(i % 2)[2]:
            env.reset()
""",
    "AsyncSandboxEnv (asyncio)": """
import anyio
from rlmesh.numpy import AsyncSandboxEnv
async def main():
    async with AsyncSandboxEnv("CartPole-v1") as env:
        await env.reset(seed=0)
        for i in range(STEPS):
            if (await env.step(i % 2))[2]:
                await env.reset()
anyio.run(main)
""",
    "SandboxVectorEnv (8 envs, 2 workers)": """
import numpy as np
from rlmesh.numpy import SandboxVectorEnv
with SandboxVectorEnv("CartPole-v1", num_envs=8, num_workers=2) as env:
    env.reset(seed=0)
    actions = np.array([0, 1] * 4)
    for i in range(STEPS):
        env.step(actions)
""",
}
_COLLECTED = re.compile(r"Collected : (\d+)")


def _env(tree: Path | None) -> dict[str, str]:
    env = {**os.environ, "RLMESH_SPIN_US": "0", "RLMESH_SANDBOX_ECHO": "0", "PYTHONHASHSEED": "0"}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    return env


def warm_up(code: str, tree: Path | None) -> None:
    """Run once natively, so the sandbox venv exists before anything is counted (a build
    runs host code under the counter, and only in the first run)."""
    subprocess.run([sys.executable, "-c", code.replace("STEPS", "1")], env=_env(tree),
                   check=True, timeout=1800)  # fmt: skip


def count(code: str, steps: int, tree: Path | None) -> int:
    env = _env(tree)
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-c", code.replace("STEPS", str(steps))],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    found = _COLLECTED.search(result.stderr)
    if result.returncode or not found:
        raise SystemExit(f"valgrind run failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return int(found.group(1))


def per_step(code: str, steps: int, tree: Path | None) -> float:
    """The two counted runs go at once: a count does not depend on timing (spinning is
    off), and under valgrind each run is single-threaded CPU work, so two cores halve the wait."""
    warm_up(code, tree)
    with ThreadPoolExecutor(2) as pool:
        long, short = pool.map(lambda n: count(code, n, tree), (3 * steps, steps))
    return (long - short) / (2 * steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--tree", type=Path, action="append", default=[])
    parser.add_argument("--face", action="append", choices=list(FACES), default=[],
                        help="measure only these faces (default: all)")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    trees: list[Path | None] = list(args.tree) or [None]
    names = [str(tree) if tree else "this rlmesh" for tree in trees]
    print(f"Host instructions per step (callgrind, RLMESH_SPIN_US=0, {args.steps} steps).\n")
    print("| face | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for face in args.face or list(FACES):
        code = FACES[face]
        cells = [f"{per_step(code, args.steps, tree):,.0f}" for tree in trees]
        print(f"| {face} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
