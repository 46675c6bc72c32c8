"""What the Ray backend costs per step, against its floors, measured side by side in one run.

relay step   SandboxEnv(CartPole-v1, backend=RayBackend()).step(0): a frame in one actor
             call to the host actor, through the child's pipes on the host, and back
Ray echo     a bare round trip: ray.get(actor.echo.remote(frame)) on an actor that returns
             its argument (the same bytes as a step request), on the same local cluster
quiet echo   the same with enable_task_events=False, as rlmesh's exchange calls are made:
             the stricter floor (Ray's default records an event per call)
tcp step     the same step with RayBackend(data_plane="tcp"): a token-authenticated socket to
             the host actor, which pumps bytes to the child's pipes
local step   the same step on the local backend (the child's pipes straight from the driver)

Each subject is timed per round trip: a step, or the reset that ends an episode (actions
alternate, so episodes are long and resets rare, but each counts), against one echo call.
The goals of issue 15: relay step <= 1.2x Ray echo, tcp step <= 2x local step. Subjects are
measured in alternating short rounds, and each ratio is taken within a round (then the
median over ``--rounds``), so the machine's drift between rounds does not enter it; it
also reports how long Ray takes to start and a first sandbox to start on it.

Run: ``python benchmarks/ray_overhead.py [--steps N] [--rounds R] [--address ADDR]``. Without
an address it starts a local cluster (2 CPUs, no dashboard) and stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import ray

from rlmesh._wire import protocol as P
from rlmesh.numpy import SandboxEnv
from rlmesh.ray import RayBackend

HOST = {"CPU": 0.1}


class Echo:
    def echo(self, data: bytes) -> bytes:
        return data


class QuietEcho:
    @ray.method(enable_task_events=False)
    def echo(self, data: bytes) -> bytes:
        return data


def per_call(step: Callable[[], int], steps: int) -> float:
    """Microseconds per round trip, after a short warm-up; ``step`` returns how many it made."""
    for _ in range(min(steps, 20)):
        step()
    calls = 0
    begun = time.perf_counter()
    for _ in range(steps):
        calls += step()
    return (time.perf_counter() - begun) / calls * 1e6


def stepper(env: SandboxEnv) -> Callable[[], int]:
    """One step (alternating actions keep episodes long), and the reset that ends an
    episode: each is one round trip to the sandbox, so both are counted."""
    env.reset(seed=0)
    action = [0]

    def step() -> int:
        action[0] ^= 1
        _, _, terminated, truncated, _ = env.step(action[0])
        if terminated or truncated:
            env.reset()
            return 2
        return 1

    return step


def echo(actor: Any, frame: bytes) -> Callable[[], int]:
    def call() -> int:
        ray.get(actor.echo.remote(frame))
        return 1

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--address", default=None)
    args = parser.parse_args()

    begun = time.perf_counter()
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_init = time.perf_counter() - begun

    begun = time.perf_counter()
    local = SandboxEnv("CartPole-v1")
    local_start = time.perf_counter() - begun
    begun = time.perf_counter()
    relay = SandboxEnv("CartPole-v1", backend=RayBackend(resources=HOST))
    relay_start = time.perf_counter() - begun
    tcp = SandboxEnv("CartPole-v1", backend=RayBackend(resources=HOST, data_plane="tcp"))
    echo_actor = ray.remote(Echo).options(num_cpus=HOST["CPU"]).remote()
    quiet_actor = ray.remote(QuietEcho).options(num_cpus=HOST["CPU"]).remote()
    payload = P.RequestEncoder().encode([P.STEP, 0])
    frame = P.frame_header(len(payload)) + payload
    subjects: dict[str, Callable[[], Any]] = {
        "Ray echo": echo(echo_actor, frame),
        "quiet echo": echo(quiet_actor, frame),
        "relay step": stepper(relay),
        "local step": stepper(local),
        "tcp step": stepper(tcp),
    }
    times: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(args.rounds):
        for name, step in subjects.items():
            times[name].append(per_call(step, args.steps))
    us = {name: statistics.median(values) for name, values in times.items()}
    # each ratio is taken within a round (its subject beside its floor, seconds apart), then
    # the median over rounds: the VM's drift between rounds does not enter it
    def ratio(subject: str, floor: str) -> float:
        pairs = zip(times[subject], times[floor], strict=True)
        return statistics.median(s / f for s, f in pairs)

    relay_ratio, tcp_ratio = ratio("relay step", "Ray echo"), ratio("tcp step", "local step")
    strict_ratio = ratio("relay step", "quiet echo")
    for env in (local, relay, tcp):
        env.close()
    ray.kill(echo_actor)
    ray.kill(quiet_actor)
    if not args.address:
        ray.shutdown()

    size = f"{args.steps} steps x {args.rounds} rounds; medians, ratios within a round"
    print(f"# Ray backend overhead ({platform.machine()}, {os.cpu_count()} CPUs, "
          f"ray {ray.__version__}, {size})\n")  # fmt: skip
    print("| Subject | us per round trip | ratio | goal |")
    print("|---|---|---|---|")
    print(f"| Ray echo round trip | {us['Ray echo']:.0f} | 1.00x | |")
    print(f"| relay step (data_plane='ray') | {us['relay step']:.0f} | "
          f"**{relay_ratio:.2f}x** | <= 1.2x Ray echo |")  # fmt: skip
    print(f"| quiet echo (no task events) | {us['quiet echo']:.0f} | "
          f"relay step: {strict_ratio:.2f}x | |")  # fmt: skip
    print(f"| local step (pipe) | {us['local step']:.0f} | 1.00x | |")
    print(f"| tcp step (data_plane='tcp') | {us['tcp step']:.0f} | "
          f"**{tcp_ratio:.2f}x** | <= 2x local step |")  # fmt: skip
    print()
    cluster = f"joining {args.address}" if args.address else "a local cluster"
    print(f"ray.init ({cluster}): {ray_init:.1f} s")
    print(f"first start on Ray (host actor, cached venv, child): {relay_start:.2f} s; "
          f"local start: {local_start:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
