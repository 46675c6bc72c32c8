"""Check that an env behaves the same in its sandbox as in your own process (rlmesh.testing)."""

from rlmesh.testing import check_sandbox_env

# Plays seeded episodes in a sandbox and here, compares every value and its type, and runs
# Gymnasium's check_env on the sandboxed env. A difference raises AssertionError.
report = check_sandbox_env("CartPole-v1", seeds=(0, 1, 2))
print(f"{report.source}: compared with in-process={report.compared}, "
      f"{report.episodes} episodes, {report.steps} steps")
for warning in report.warnings:
    print(f"check_env (in-process too): {warning}")
