"""Before/after: one benchmark's ratios for a base revision of rlmesh and for the working tree.

The base revision is checked out with ``git worktree add --detach`` into a temporary directory
(removed at the end, also on an error or Ctrl-C). Both sides run the benchmark script of the
*current* tree, so the harness is the same; only ``import rlmesh`` differs, through
``PYTHONPATH`` (checked: the child's ``rlmesh.__file__`` must lie in the expected tree). Runs
alternate (before, after, before, after, ...) so machine drift hits both alike.

Every table row with a ratio cell (``**1.23x**``) is keyed by its leading non-numeric cells
(e.g. placement and face) and reported as the median ratio before, after, and the change;
rows where after is worse by more than ``--threshold`` percent are marked (a higher ratio is
worse, except in ``HIGHER_IS_BETTER``). It reports and does not judge: exit 0 after a
completed comparison, 2 for bad usage, 1 when a run fails. To see the noise floor of a
machine, compare a revision with itself (``--base HEAD`` on a clean tree).

Run: ``python benchmarks/compare_revisions.py --base REV [--bench step_latency.py]
[--repeats 3] [--after PATH] -- <arguments for the benchmark>``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
HIGHER_IS_BETTER = {"vector_throughput.py"}  # ratios of throughput, not of time
RATIO = re.compile(r"\*\*(\d+(?:\.\d+)?)x\*\*")
NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+ ?[a-z%]*")  # 12.3, 12,345, 1.00x, 0.4 s
WHERE = "import rlmesh, os; print(os.path.realpath(rlmesh.__file__))"


@dataclass
class Side:
    """One side of the comparison: the tree whose rlmesh is imported, and what it measured."""

    name: str
    root: Path
    label: str
    ratios: dict[str, list[float]] = field(default_factory=dict)
    info: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.root), env.get("PYTHONPATH")) if p)
        return env


def git(root: Path, *args: str, check: bool = True) -> str:
    cmd = ["git", "-C", str(root), *args]
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout.strip()


@contextmanager
def worktree(repo: Path, rev: str) -> Iterator[Path]:
    """A detached worktree of ``rev`` in a temporary directory, removed on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix="rlmesh-base-"))
    path = tmp / "tree"
    try:
        git(repo, "worktree", "add", "--detach", "--quiet", str(path), rev)
        yield path
    finally:
        git(repo, "worktree", "remove", "--force", str(path), check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        git(repo, "worktree", "prune", check=False)


def parse(out: str) -> tuple[dict[str, float], list[str]]:
    """The ratio of every table row that has one, by row key; and the lines before any table."""
    rows: dict[str, float] = {}
    info: list[str] = []
    in_tables = False
    for line in out.splitlines():
        in_tables = in_tables or line.startswith("|")
        if not line.startswith("|"):
            if not in_tables and line.strip():
                info.append(line.strip())
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        ratio = next((m for cell in cells if (m := RATIO.fullmatch(cell))), None)
        if ratio is None:
            continue
        key_cells: list[str] = []
        for cell in cells:
            if NUMBER.fullmatch(cell) or RATIO.fullmatch(cell):
                break
            key_cells.append(cell)
        key = " / ".join(key_cells) or f"row {len(rows) + 1}"
        while key in rows:  # the same leading cells again (another table): keep both
            key += " (again)"
        rows[key] = float(ratio.group(1))
    return rows, info


def measure(side: Side, bench: Path, bench_args: list[str]) -> None:
    cmd = [sys.executable, str(bench), *bench_args]
    result = subprocess.run(
        cmd, cwd=bench.parent, env=side.env(), stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        sys.exit(
            f"compare_revisions: {side.name} run failed (exit {result.returncode}): "
            f"{' '.join(cmd)} with PYTHONPATH={side.root}; its stderr is above"
        )
    rows, info = parse(result.stdout)
    if not rows:
        sys.exit(
            f"compare_revisions: no **N.NNx** rows in the {side.name} output:\n{result.stdout}"
        )
    for key, value in rows.items():
        side.ratios.setdefault(key, []).append(value)
    side.info = side.info or info


def check_import(side: Side, cwd: Path) -> str:
    """Where the child imports rlmesh from; exits unless that is inside ``side.root``."""
    cmd = [sys.executable, "-c", WHERE]
    result = subprocess.run(cmd, cwd=cwd, env=side.env(), capture_output=True, text=True)
    found = result.stdout.strip()
    if result.returncode != 0 or not Path(found).is_relative_to(side.root.resolve()):
        sys.exit(
            f"compare_revisions: the {side.name} python does not import rlmesh from "
            f"{side.root} (PYTHONPATH={side.root}); it gave {found or 'nothing'}\n"
            f"{result.stderr[-2000:]}"
        )
    return found


def report(before: Side, after: Side, higher_is_better: bool, threshold: float) -> str:
    def cell(values: list[float] | None) -> str:
        if not values:
            return "-"
        spread = f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""
        return f"{statistics.median(values):.2f}x{spread}"

    n = max(len(v) for v in [*before.ratios.values(), *after.ratios.values()])
    lines = [f"{side.name}: {side.label}" for side in (before, after)]
    for side in (before, after) if before.info != after.info else (after,):
        name = side.name if before.info != after.info else "both"
        lines += [f"{name}: {text}" for text in side.info]
    lines += [
        "",
        f"| row | before (median of {n}, range) | after | change | worse by > {threshold:g}% |",
        "|---|---:|---:|---:|---|",
    ]
    for key in [*before.ratios, *(k for k in after.ratios if k not in before.ratios)]:
        old, new = before.ratios.get(key), after.ratios.get(key)
        change, mark = "", ""
        if old and new:
            pct = (statistics.median(new) / statistics.median(old) - 1) * 100
            change = f"{pct:+.1f}%"
            mark = "**worse**" if (-pct if higher_is_better else pct) > threshold else ""
        lines.append(f"| {key} | {cell(old)} | {cell(new)} | {change} | {mark} |")
    better = "higher" if higher_is_better else "lower"
    return "\n".join([*lines, "", f"(A {better} ratio is better for this benchmark.)"])


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the worktree is removed then too
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision measured as 'before'")
    parser.add_argument("--bench", default="step_latency.py", help="a script in benchmarks/")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side (median)")
    parser.add_argument("--after", type=Path, help="tree measured as 'after' (default: this)")
    parser.add_argument("--threshold", type=float, default=5.0, help="percent worse to mark")
    args = parser.parse_args(argv[:cut])
    bench_args = argv[cut + 1 :]
    bench = HERE / Path(args.bench).name
    if bench.name == Path(__file__).name or bench.suffix != ".py" or not bench.is_file():
        parser.error(f"--bench {args.bench}: no such benchmark in {HERE}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    repo = Path(git(HERE, "rev-parse", "--show-toplevel"))
    after_root = (args.after or repo).resolve()
    if not (after_root / "rlmesh" / "__init__.py").is_file():
        parser.error(f"--after {after_root}: no rlmesh/ package there")
    try:
        sha = git(repo, "rev-parse", "--verify", "--short", f"{args.base}^{{commit}}")
    except subprocess.CalledProcessError:
        parser.error(f"--base {args.base}: not a commit in {repo}")
    dirty = " (with uncommitted changes)" if git(after_root, "status", "-s", check=False) else ""
    with worktree(repo, sha) as base_root:
        before = Side("before", base_root, f"{args.base} ({sha})")
        after = Side("after", after_root, f"{after_root}{dirty}")
        for side in (before, after):
            side.label += f", rlmesh from {check_import(side, bench.parent)}"
        for i in range(args.repeats):
            for side in (before, after):
                say = f"compare_revisions: {side.name} run {i + 1}/{args.repeats}"
                print(say, file=sys.stderr, flush=True)
                measure(side, bench, bench_args)
    print(f"{bench.name} {' '.join(bench_args)}".rstrip() + f", {args.repeats} runs per side.\n")
    print(report(before, after, bench.name in HIGHER_IS_BETTER, args.threshold))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)  # the worktree is gone already; no traceback for a Ctrl-C
