"""Step latency of a sandboxed CartPole against its floor, measured side by side in one run.

floor (sync)  = a bare length-prefixed round trip between two Python processes over os.pipe
                + one in-process CartPole-v1 step
floor (async) = the same round trip over anyio process streams (asyncio and trio)
                + one in-process CartPole-v1 step

The sync group also times a **bare child step**: a child that steps its own CartPole for each
100-byte request and echoes it, with no codec and no rlmesh. It is the least that any design
with the env in another process can cost under a placement, and shows how much of a sandboxed
step's cost the placement alone imposes (on one shared CPU, most of it).

Every figure is taken in the same process run, under the same CPU placement, which is set and
reported (placement dominates IPC cost on small VMs):

  same   host and child pinned to one CPU
  split  host on one CPU, child on another
  none   no pinning (the scheduler decides)

Run: ``python benchmarks/step_latency.py [--steps N] [--placement same,split,none]``.
Prints a Markdown table of microseconds per step and ratios to the floor. Subjects of one
face are measured in alternating rounds (median of ``--rounds``), so machine drift hits the
floor and the sandbox alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import gymnasium as gym
from anyio.abc import Process

from rlmesh.numpy import AsyncSandboxEnv, SandboxEnv

# A child that echoes length-prefixed frames, over fds given as arguments or over stdio. The
# STEP_CHILD variant also steps its own CartPole for each one (the bare child step); the
# echo child's loop holds nothing else, not even a branch.
_CHILD = r"""
import os, sys, struct
r = int(sys.argv[1]) if len(sys.argv) > 2 else 0
w = int(sys.argv[2]) if len(sys.argv) > 2 else 1
read, write, unpack = os.read, os.write, struct.Struct("<I").unpack
{setup}
while True:
    head = read(r, 4)
    if len(head) < 4:
        break
    (n,) = unpack(head)
    body = read(r, n)
{step}
    write(w, head + body)
"""
ECHO_CHILD = _CHILD.format(setup="", step="")
STEP_CHILD = _CHILD.format(
    setup='import gymnasium as gym\nenv = gym.make("CartPole-v1")\nenv.reset(seed=0)',
    step="    _, _, terminated, truncated, _ = env.step(body[0] & 1)\n"
    "    if terminated or truncated:\n"
    "        env.reset()",
)
PAYLOAD = struct.pack("<I", 96) + b"x" * 96  # a CartPole-sized message
CPUS = sorted(os.sched_getaffinity(0))


def place(placement: str, host: int, child: int | None) -> None:
    """Pin the host (and the child, if given) for a placement."""
    if placement == "none":
        os.sched_setaffinity(host, CPUS)
        if child is not None:
            os.sched_setaffinity(child, CPUS)
        return
    os.sched_setaffinity(host, {CPUS[0]})
    if child is not None:
        os.sched_setaffinity(child, {CPUS[0] if placement == "same" else CPUS[-1]})


class Stepper:
    """Steps a CartPole-like env in a loop, resetting at episode ends."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.i = 0

    def __call__(self) -> None:
        self.i += 1
        _, _, terminated, truncated, _ = self.env.step(self.i & 1)
        if terminated or truncated:
            self.env.reset()

    async def astep(self) -> None:
        self.i += 1
        _, _, terminated, truncated, _ = await self.env.step(self.i & 1)
        if terminated or truncated:
            await self.env.reset()


def _timed(func: Callable[[], Any], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        func()
    return (time.perf_counter() - start) / steps * 1e6


async def _atimed(func: Callable[[], Any], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        await func()
    return (time.perf_counter() - start) / steps * 1e6


def interleaved(
    subjects: dict[str, Callable[[], Any]], steps: int, rounds: int
) -> dict[str, float]:
    """Median us/call per subject, measured in alternating rounds so drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for func in subjects.values():  # warm up
        _timed(func, max(100, steps // 10))
    for _ in range(rounds):
        for name, func in subjects.items():
            samples[name].append(_timed(func, steps))
    return {name: statistics.median(values) for name, values in samples.items()}


def start_echo(code: str = ECHO_CHILD) -> tuple[subprocess.Popen[bytes], int, int]:
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(to_r), str(from_w)], pass_fds=(to_r, from_w)
    )
    os.close(to_r)
    os.close(from_w)
    return child, to_w, from_r


def sync_group(placement: str, steps: int, rounds: int) -> dict[str, float]:
    children = [start_echo(), start_echo(STEP_CHILD)]
    (_, to_w, from_r), (_, step_w, step_r) = children
    local = gym.make("CartPole-v1")
    local.reset(seed=0)

    def round_trip() -> None:
        os.write(to_w, PAYLOAD)
        os.read(from_r, 65536)

    def bare_child_step() -> None:
        os.write(step_w, PAYLOAD)
        os.read(step_r, 65536)

    with SandboxEnv("CartPole-v1") as env:
        env.reset(seed=0)
        place(placement, 0, env.pid)
        for child, _, _ in children:
            place(placement, 0, child.pid)
        result = interleaved(
            {
                "pipe round trip": round_trip,
                "CartPole step (in-process)": Stepper(local),
                "bare child step": bare_child_step,
                "SandboxEnv.step": Stepper(env),
            },
            steps,
            rounds,
        )
    for child, write_fd, read_fd in children:
        os.close(write_fd)
        child.wait()
        os.close(read_fd)
    return result


async def _async_group(placement: str, steps: int, rounds: int) -> dict[str, float]:
    process: Process = await anyio.open_process([sys.executable, "-c", ECHO_CHILD])
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    local = Stepper(gym.make("CartPole-v1"))
    local.env.reset(seed=0)

    async def round_trip() -> None:
        await stdin.send(PAYLOAD)
        got = 0
        while got < len(PAYLOAD):
            got += len(await stdout.receive())

    async def in_process() -> None:
        local()

    async with AsyncSandboxEnv("CartPole-v1") as env:
        assert env.pid is not None
        await env.reset(seed=0)
        place(placement, 0, env.pid)
        place(placement, 0, process.pid)
        stepper = Stepper(env)
        subjects = {
            "anyio process stream round trip": round_trip,
            "CartPole step (in-process)": in_process,
            "AsyncSandboxEnv.step": stepper.astep,
        }
        samples: dict[str, list[float]] = {name: [] for name in subjects}
        for func in subjects.values():
            await _atimed(func, max(100, steps // 10))
        for _ in range(rounds):
            for name, func in subjects.items():
                samples[name].append(await _atimed(func, steps))
    await stdin.aclose()
    await process.wait()
    return {name: statistics.median(values) for name, values in samples.items()}


def run(placement: str, steps: int, rounds: int) -> dict[str, dict[str, float]]:
    groups = {"sync": sync_group(placement, steps, rounds)}
    for backend in ("asyncio", "trio"):
        groups[backend] = anyio.run(_async_group, placement, steps, rounds, backend=backend)
    place("none", 0, None)
    return groups


def report(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        f"Python {platform.python_version()}, gymnasium {gym.__version__}, "
        f"{os.cpu_count()} CPUs, spin window {os.environ.get('RLMESH_SPIN_US', '100')} us.",
        "",
        "| placement | face | round trip | CartPole step | floor | sandboxed step | ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    bare = [
        "",
        "Bare child step (a child steps its own CartPole per 100-byte request, no codec):",
        "",
        "| placement | floor | bare child step | ratio | SandboxEnv.step | ratio to bare |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for placement, groups in results.items():
        for face, row in groups.items():
            trip = row.get("pipe round trip", row.get("anyio process stream round trip", 0.0))
            step = row["CartPole step (in-process)"]
            sandboxed = row.get("SandboxEnv.step", row.get("AsyncSandboxEnv.step", 0.0))
            floor = trip + step
            name = (
                "SandboxEnv (os.pipe floor)"
                if face == "sync"
                else (f"AsyncSandboxEnv on {face} (anyio stream floor)")
            )
            lines.append(
                f"| {placement} | {name} | {trip:.1f} | {step:.1f} | {floor:.1f} | "
                f"{sandboxed:.1f} | **{sandboxed / floor:.2f}x** |"
            )
            if "bare child step" in row:
                child = row["bare child step"]
                bare.append(
                    f"| {placement} | {floor:.1f} | {child:.1f} | {child / floor:.2f}x | "
                    f"{sandboxed:.1f} | {sandboxed / child:.2f}x |"
                )
    return "\n".join(lines + bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per round and subject")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (median)")
    parser.add_argument("--placement", default="same,split,none")
    args = parser.parse_args()
    placements = [p for p in args.placement.split(",") if p]
    if len(CPUS) < 2:
        placements = [p for p in placements if p != "split"]
    results = {p: run(p, args.steps, args.rounds) for p in placements}
    print(report(results))


if __name__ == "__main__":
    os.environ.setdefault("RLMESH_SANDBOX_ECHO", "0")
    main()
