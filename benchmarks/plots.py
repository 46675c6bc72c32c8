"""The performance report: one run of the benchmarks, written out as plots and tables.

Runs, in one process and one go:

- ``step_latency.py``: each face's sandboxed CartPole step against its floor, per placement;
- ``vector_throughput.py``: env-steps per second of ``SandboxVectorEnv`` against Gymnasium's
  ``SyncVectorEnv`` (in-process) and ``AsyncVectorEnv`` over ``num_envs``, for CartPole and
  an image env, and the same subjects under Gymnasium's own
  ``gymnasium.utils.performance.benchmark_vector_step``;
- ``warm_start.py``: warm starts against a bare interpreter, the first build of a venv, and
  ``python -m venv`` + ``pip install`` of the same packages.

and writes into ``--out`` (default ``docs/performance``) ``step_latency.png``,
``vector_throughput.png``, ``startup.png`` and ``results.md``: the tables, the machine, and the
figures the text of docs/performance.md quotes, in sections that page includes. Text and plots
therefore always come from the same run. Run: ``python benchmarks/plots.py`` (or
``python3 -m nox -s bench``); the size flags shrink it for tests.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import gymnasium as gym
import matplotlib
import numpy as np
from gymnasium.utils.performance import benchmark_vector_step

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
import step_latency  # noqa: E402
import vector_throughput  # noqa: E402
import warm_start  # noqa: E402

import rlmesh  # noqa: E402
from rlmesh.numpy import SandboxEnv  # noqa: E402

SYNC = "Gymnasium SyncVectorEnv, in-process"
ASYNC = "Gymnasium AsyncVectorEnv, shared memory"
ONE = "SandboxVectorEnv, 1 worker"
TWO = "SandboxVectorEnv, 2 workers"
FACES = {
    "sync": "SandboxEnv",
    "asyncio": "AsyncSandboxEnv (asyncio)",
    "trio": "AsyncSandboxEnv (trio)",
}


# -- the run ---------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        rev = subprocess.run(
            ["git", "-C", str(BENCHMARKS.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        rev = "not a git checkout"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpus": f"{os.cpu_count()} CPUs, this process may run on {len(os.sched_getaffinity(0))}",
        "python": platform.python_version(),
        "gymnasium": gym.__version__,
        "numpy": np.__version__,
        "rlmesh": f"{rlmesh.__version__} ({rev})",
        "spin": os.environ.get("RLMESH_SPIN_US", "100"),
        "load_before": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
    }


def measure_latency(placements: list[str], steps: int, rounds: int) -> dict[str, Any]:
    """``step_latency.run`` per placement: {placement: {face: {subject: us}}}."""
    if len(step_latency.CPUS) < 2:
        placements = [p for p in placements if p != "split"]
    return {placement: step_latency.run(placement, steps, rounds) for placement in placements}


def measure_vector(
    sizes: list[int], steps: int, rounds: int, seconds: float
) -> tuple[dict[str, dict[int, dict[str, float]]], dict[int, dict[str, float]]]:
    """Env-steps/s per env, num_envs and subject; and Gymnasium's benchmark_vector_step's."""
    alternating = {
        env_id: {n: vector_throughput.run(env_id, options, steps, rounds, n) for n in sizes}
        for env_id, options in vector_throughput.CASES.items()
    }
    gymnasiums: dict[int, dict[str, float]] = {}
    for n in sizes:
        envs = vector_throughput.subjects("CartPole-v1", {}, n)
        try:
            gymnasiums[n] = {
                name: benchmark_vector_step(env, target_duration=seconds, seed=0)  # type: ignore[arg-type]
                for name, env in envs.items()
            }
        finally:
            for env in envs.values():
                env.close()
    return alternating, gymnasiums


def measure_startup(rounds: int, builds: int, pip_rounds: int) -> dict[str, float]:
    """Seconds: warm starts and their baseline (medians of alternating rounds), first builds."""
    with SandboxEnv("CartPole-v1", packages=warm_start.PACKAGES) as env:  # cache the venv
        python = env.sandbox_versions["executable"]
    samples: dict[str, list[float]] = {"baseline": [], "sync": [], "async": []}
    for _ in range(rounds):
        samples["baseline"].append(warm_start.baseline(python))
        samples["sync"].append(warm_start.sync_start())
        samples["async"].append(anyio.run(warm_start._async_start))
    result = {name: float(np.median(values)) for name, values in samples.items()}
    result["build"], result["create"] = warm_start.first_build(builds)
    result["by_hand"] = warm_start.venv_and_pip(pip_rounds)
    return result


# -- the plots -------------------------------------------------------------------------------


def _floor(row: dict[str, float]) -> tuple[float, float]:
    trip = row.get("pipe round trip", row.get("anyio process stream round trip", 0.0))
    return trip + row["CartPole step (in-process)"], trip


def _sandboxed(row: dict[str, float]) -> float:
    return row.get("SandboxEnv.step", row.get("AsyncSandboxEnv.step", 0.0))


def plot_latency(latency: dict[str, Any], path: Path) -> None:
    placements = list(latency)
    width = max(6.0, 4.2 * len(placements))
    fig, axes = plt.subplots(1, len(placements), figsize=(width, 4.4), squeeze=False)
    for ax, placement in zip(axes[0], placements, strict=True):
        groups = latency[placement]
        x = np.arange(len(groups))
        floors = [_floor(groups[face])[0] for face in groups]
        steps = [_sandboxed(groups[face]) for face in groups]
        ax.bar(x - 0.2, floors, 0.4, label="floor (round trip + in-process step)", color="#9aa")
        bars = ax.bar(x + 0.2, steps, 0.4, label="sandboxed step", color="#369")
        for bar, step, floor in zip(bars, steps, floors, strict=True):
            ax.annotate(f"{step / floor:.2f}x", (bar.get_x() + bar.get_width() / 2, step),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
        bare = groups.get("sync", {}).get("bare child step", 0.0)
        if bare:
            ax.plot([-0.4, 0.4], [bare, bare], "k--", lw=1, label="bare child step (sync)")
        ax.set_xticks(x, [FACES[face] for face in groups], rotation=15, fontsize=8)
        ax.set_title(f"placement: {placement}", fontsize=10)
        ax.set_ylabel("microseconds per step")
        ax.set_ylim(0, max(max(steps), max(floors), bare if "sync" in groups else 0) * 1.15)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3)
    fig.suptitle("CartPole-v1 step latency per face, against its floor (lower is better)",
                 fontsize=11)  # fmt: skip
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_vector(
    alternating: dict[str, dict[int, dict[str, float]]],
    gymnasiums: dict[int, dict[str, float]],
    path: Path,
) -> None:
    panels = [(f"{env_id} (alternating rounds)", data) for env_id, data in alternating.items()]
    panels.append(("CartPole-v1 (Gymnasium's benchmark_vector_step)", gymnasiums))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    styles = {SYNC: ("#999", "o:"), ASYNC: ("#c63", "s-"), ONE: ("#369", "^-"), TWO: ("#6a3", "v-")}
    for ax, (title, data) in zip(axes[0], panels, strict=True):
        sizes = sorted(data)
        for subject, (color, style) in styles.items():
            points = [(n, data[n][subject]) for n in sizes if subject in data[n]]
            if points:
                ax.plot(*zip(*points, strict=True), style, color=color, label=subject, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("num_envs")
        ax.set_ylabel("env-steps per second")
        ax.set_title(title, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Vector env throughput over num_envs (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


STARTUP_ROWS = {
    "baseline": "venv python: import gymnasium, make, reset",
    "sync": "warm start: SandboxEnv(...) to first reset()",
    "async": "warm start: AsyncSandboxEnv(...) to first reset()",
    "build": "first build of the venv (uv cache warm)",
    "create": "first create to first reset, build included",
    "by_hand": "python -m venv + pip install (median; pip's cache warm after the 1st)",
}


def plot_startup(startup: dict[str, float], path: Path) -> None:
    keys = list(STARTUP_ROWS)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    colors = ["#9aa", "#369", "#369", "#6a3", "#6a3", "#c63"]
    y = np.arange(len(keys))[::-1]
    ax.barh(y, [startup[k] for k in keys], color=colors)
    for yy, key in zip(y, keys, strict=True):
        ax.annotate(f" {startup[key]:.2f} s", (startup[key], yy), va="center", fontsize=8)
    ax.set_yticks(y, [STARTUP_ROWS[k] for k in keys], fontsize=8)
    ax.set_xlabel("seconds (lower is better)")
    ax.set_title("Start-up: warm starts, first builds, and a venv made by hand", fontsize=10)
    ax.set_xlim(0, max(startup.values()) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the text --------------------------------------------------------------------------------


def _section(name: str, lines: list[str]) -> list[str]:
    return [f"<!-- --8<-- [start:{name}] -->", *lines, f"<!-- --8<-- [end:{name}] -->", ""]


def results_markdown(
    info: dict[str, str],
    latency: dict[str, Any],
    alternating: dict[str, dict[int, dict[str, float]]],
    gymnasiums: dict[int, dict[str, float]],
    startup: dict[str, float],
    command: str,
) -> str:
    out = [
        "<!-- Written by benchmarks/plots.py from one run; do not edit by hand: re-run it. -->",
        "",
    ]
    out += _section("machine", [
        f"Measured {info['date']} on {info['cpu']}, {info['cpus']}; Python {info['python']}, "
        f"gymnasium {info['gymnasium']}, numpy {info['numpy']}, rlmesh {info['rlmesh']}, "
        f"spin window {info['spin']} us. Load average (1, 5, 15 min) {info['load_before']} "
        f"before the run and {info['load_after']} after; it took {info['duration']}. "
        f"Command: `{command}`.",
    ])  # fmt: skip

    summary = []
    for placement in ("none", "split", "same"):
        if placement not in latency:
            continue
        parts = []
        for face, row in latency[placement].items():
            floor, _ = _floor(row)
            parts.append(f"{FACES[face]} {_sandboxed(row):.1f} us ({_sandboxed(row) / floor:.2f}x "
                         f"its floor of {floor:.1f} us)")  # fmt: skip
        where = {"none": "Unpinned", "split": "With host and child on separate CPUs",
                 "same": "With host and child on one shared CPU"}[placement]  # fmt: skip
        summary.append(f"- {where}: " + "; ".join(parts) + ".")
    out += _section("latency-summary", summary)
    out += _section("latency-table", step_latency.report(latency).splitlines())

    table = ["| env | num_envs | " + " | ".join([SYNC, ASYNC, ONE, TWO]) + " |",
             "|---|---:|" + "---:|" * 4]  # fmt: skip
    for env_id, per_n in alternating.items():
        for n, row in sorted(per_n.items()):
            base = row[ASYNC]
            cells = [f"{row[s]:,.0f} ({row[s] / base:.2f}x)" if s in row else "" for s in
                     (SYNC, ASYNC, ONE, TWO)]  # fmt: skip
            table.append(f"| {env_id} | {n} | " + " | ".join(cells) + " |")
    out += _section("vector-table", [
        "Env-steps per second, and in brackets the ratio to `AsyncVectorEnv` at the same "
        "`num_envs` (median of alternating rounds):", "", *table,
    ])  # fmt: skip
    gym_table = ["| num_envs | " + " | ".join([SYNC, ASYNC, ONE, TWO]) + " |",
                 "|---:|" + "---:|" * 4]  # fmt: skip
    for n, row in sorted(gymnasiums.items()):
        cells = [f"{row[s]:,.0f}" if s in row else "" for s in (SYNC, ASYNC, ONE, TWO)]
        gym_table.append(f"| {n} | " + " | ".join(cells) + " |")
    out += _section("vector-gymnasium", [
        "CartPole-v1 env-steps per second as `gymnasium.utils.performance."
        "benchmark_vector_step` measures them (it samples actions inside the loop and does not "
        "count the steps that only autoreset):", "", *gym_table,
    ])  # fmt: skip

    best = max(alternating["CartPole-v1"])
    cart = alternating["CartPole-v1"][best]
    vector_summary = [
        f"- CartPole-v1 at num_envs {best}: one sandbox worker steps {cart[ONE]:,.0f} env-steps/s, "
        f"{cart[ONE] / cart[ASYNC]:.2f}x Gymnasium's `AsyncVectorEnv` ({cart[ASYNC]:,.0f}) and "
        f"{cart[ONE] / cart[SYNC]:.2f}x the in-process `SyncVectorEnv` ({cart[SYNC]:,.0f})."
    ]
    image_id = next(e for e in alternating if e != "CartPole-v1")
    image = alternating[image_id][best]
    vector_summary.append(
        f"- {image_id} (210x160x3 frames) at num_envs {best}: {image[ONE]:,.0f} env-steps/s, "
        f"{image[ONE] / image[ASYNC]:.2f}x `AsyncVectorEnv` and {image[ONE] / image[SYNC]:.2f}x "
        "`SyncVectorEnv`."
    )
    out += _section("vector-summary", vector_summary)

    rows = ["| what | seconds | ratio to the baseline |", "|---|---:|---:|"]
    for key, label in STARTUP_ROWS.items():
        ratio = f"{startup[key] / startup['baseline']:.2f}x" if key in ("sync", "async") else ""
        rows.append(f"| {label} | {startup[key]:.3f} | {ratio} |")
    out += _section("startup-table", rows)
    out += _section("startup-summary", [
        f"- A warm start (the venv cached) took {startup['sync']:.3f} s to the first `reset()` "
        f"on `SandboxEnv`, {startup['sync'] / startup['baseline']:.2f}x a bare interpreter of "
        f"the same venv importing gymnasium and resetting CartPole ({startup['baseline']:.3f} s).",
        f"- A first build took {startup['build']:.2f} s with uv's cache warm, against "
        f"{startup['by_hand']:.2f} s for `python -m venv` and `pip install` of the same packages "
        "(the median of rounds in which pip's cache was warm after the first).",
    ])  # fmt: skip
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BENCHMARKS.parent / "docs" / "performance")
    parser.add_argument("--steps", type=int, default=2000, help="latency: steps per round")
    parser.add_argument("--rounds", type=int, default=7, help="latency: alternating rounds")
    parser.add_argument("--placement", default="same,split,none")
    parser.add_argument("--num-envs", default="1,2,4,8,16", help="vector: sizes")
    parser.add_argument("--vector-steps", type=int, default=300, help="vector: batch steps")
    parser.add_argument("--vector-rounds", type=int, default=5)
    parser.add_argument("--gym-seconds", type=float, default=2.0,
                        help="vector: benchmark_vector_step's target duration per subject")
    parser.add_argument("--start-rounds", type=int, default=7)
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--pip-rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RLMESH_SANDBOX_ECHO", "0")
    command = "python benchmarks/plots.py " + " ".join(sys.argv[1:])

    started = time.perf_counter()
    info = machine()
    latency = measure_latency([p for p in args.placement.split(",") if p], args.steps,
                              args.rounds)  # fmt: skip
    sizes = [int(n) for n in args.num_envs.split(",")]
    alternating, gymnasiums = measure_vector(sizes, args.vector_steps, args.vector_rounds,
                                             args.gym_seconds)  # fmt: skip
    startup = measure_startup(args.start_rounds, args.builds, args.pip_rounds)
    info["load_after"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    info["duration"] = f"{time.perf_counter() - started:.0f} s"

    args.out.mkdir(parents=True, exist_ok=True)
    plot_latency(latency, args.out / "step_latency.png")
    plot_vector(alternating, gymnasiums, args.out / "vector_throughput.png")
    plot_startup(startup, args.out / "startup.png")
    text = results_markdown(info, latency, alternating, gymnasiums, startup, command.strip())
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {args.out}/results.md, step_latency.png, vector_throughput.png, startup.png")


if __name__ == "__main__":
    main()
