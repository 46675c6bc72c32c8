"""The benchmarks still run and print their tables (tiny sizes; no timing is asserted here).

The figures themselves are measured with ``python3 -m nox -s bench`` and reported in
docs/performance.md, never in timed tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.sandbox

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RATIO = re.compile(r"\*\*\d+\.\d\dx\*\*")


def run_benchmark(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_benchmark_is_run_here() -> None:
    tested = {
        "step_latency.py",
        "warm_start.py",
        "vector_throughput.py",
        "compare_revisions.py",
        "host_instructions.py",
        "containers.py",
        "ray_overhead.py",
        "plots.py",
    }
    assert {path.name for path in BENCHMARKS.glob("*.py")} == tested


def test_step_latency_prints_every_face_with_its_floor_and_the_bare_child_step() -> None:
    out = run_benchmark("step_latency.py", "--steps", "60", "--rounds", "1", "--placement", "none")
    rows = [line for line in out.splitlines() if line.startswith("| none |")]
    faces = ["SandboxEnv (os.pipe", "AsyncSandboxEnv on asyncio", "AsyncSandboxEnv on trio"]
    for face in faces:
        (row,) = [line for line in rows if face in line]
        assert RATIO.search(row), row
    assert "Bare child step" in out and len(rows) == 4, out


def test_warm_start_prints_both_faces_against_the_baseline() -> None:
    out = run_benchmark("warm_start.py", "--rounds", "1", "--builds", "1")
    for what in ("warm start: SandboxEnv", "warm start: AsyncSandboxEnv"):
        (row,) = [line for line in out.splitlines() if what in line]
        assert RATIO.search(row), row
    assert "first build of the venv" in out


def test_vector_throughput_prints_each_subject_against_async_vector_env() -> None:
    out = run_benchmark("vector_throughput.py", "--steps", "10", "--rounds", "1")
    rows = [line for line in out.splitlines() if RATIO.search(line)]
    assert len(rows) == 8, out
    assert sum("SandboxVectorEnv" in row for row in rows) == 4


@pytest.mark.skipif(not (BENCHMARKS.parent / ".git").exists(), reason="needs the git checkout")
def test_compare_revisions_prints_the_sync_face_ratio_before_and_after() -> None:
    out = run_benchmark(
        "compare_revisions.py", "--base", "HEAD", "--bench", "step_latency.py", "--repeats", "1",
        "--", "--steps", "40", "--rounds", "1", "--placement", "none",
    )  # fmt: skip
    (row,) = [line for line in out.splitlines() if line.startswith("| none / SandboxEnv (os.pipe")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert re.fullmatch(r"\d+\.\d\dx", cells[1]) and re.fullmatch(r"\d+\.\d\dx", cells[2]), row
    assert re.fullmatch(r"[-+]\d+\.\d%", cells[3]), row
    assert "before: HEAD" in out and "CPUs" in out, out


def test_host_instructions_counts_a_step_of_the_sync_face() -> None:
    """valgrind counts; the test checks the table's shape, not the count (at 3 steps the
    run-to-run noise of the startup outweighs the steps)."""
    out = run_benchmark("host_instructions.py", "--steps", "3", "--face", "SandboxEnv")
    [row] = [line for line in out.splitlines() if line.startswith("| SandboxEnv |")]
    assert re.fullmatch(r"-?[\d,]+", row.split("|")[2].strip())


def test_containers_prints_each_engine_against_the_venv_backend() -> None:
    if shutil.which("podman") is None:
        message = "podman is not installed: run .ci/containers (as root)"
        if os.environ.get("RLMESH_REQUIRE_CONTAINERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    out = run_benchmark("containers.py", "--rounds", "1", "--steps", "50")
    for what in ("venv (uv virtualenv", "podman container"):
        (row,) = [line for line in out.splitlines() if line.startswith(f"| {what}")]
        assert len(RATIO.findall(row)) == 2, row


@pytest.mark.ray
def test_ray_overhead_prints_relay_against_echo_and_tcp_against_the_pipe(
    ray_session: Any,
) -> None:
    """On the session's cluster (``--address``): a cluster of its own would cost 7 s more."""
    address = ray_session.get_runtime_context().gcs_address
    out = run_benchmark("ray_overhead.py", "--steps", "30", "--rounds", "1", "--address", address)
    for what in ("relay step (data_plane='ray')", "tcp step (data_plane='tcp')"):
        (row,) = [line for line in out.splitlines() if what in line]
        assert RATIO.search(row), row
    assert f"ray.init (joining {address})" in out and "first start on Ray" in out


def test_plots_writes_the_three_plots_and_results_whose_text_matches_its_tables(
    tmp_path: Path,
) -> None:
    """The report's run at tiny sizes, into a temporary directory (not docs/performance)."""
    run_benchmark(
        "plots.py", "--out", str(tmp_path), "--steps", "40", "--rounds", "1",
        "--placement", "none", "--num-envs", "2", "--vector-steps", "10",
        "--vector-rounds", "1", "--gym-seconds", "0.1", "--start-rounds", "1", "--builds", "1",
        "--pip-rounds", "1",
    )  # fmt: skip
    for name in ("step_latency.png", "vector_throughput.png", "startup.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name
    text = (tmp_path / "results.md").read_text()
    page = (BENCHMARKS.parent / "docs" / "performance.md").read_text()
    sections = re.findall(r"results\.md:([a-z-]+)", page)
    assert len(sections) >= 7, sections
    for section in sections:
        assert f"[start:{section}]" in text and f"[end:{section}]" in text, section
    [row] = [line for line in text.splitlines() if line.startswith("| none | SandboxEnv")]
    ratio = re.search(r"\*\*(\d+\.\d\dx)\*\*", row)
    assert ratio and f"SandboxEnv {row.split('|')[6].strip()} us ({ratio.group(1)}" in text, row
