"""Options shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

ENVS_PACKAGE = str(Path(__file__).parent / "envs")
# The deliberately messy test environments of tests/envs, registered on import.
TEST_ENVS = {"packages": [ENVS_PACKAGE], "imports": ["rlmesh_test_envs"]}
