"""On a file system with copy-on-write clones, a venv's copies share uv's blocks.

rlmesh installs with ``uv pip install --link-mode=copy`` (never hard links: ``venv.py``).
uv copies with ``copy_file_range``, which btrfs and XFS answer with a clone. So there a venv
costs almost no disk, and the guarantee holds: a sandbox that writes into its own
site-packages gets its own blocks. This machine's disk is ext4 (real copies), so the test
runs on a real btrfs and a real XFS: a file on a loop device, made and mounted here. That
needs root, btrfs-progs and xfsprogs, which ``.ci/run`` installs; there
``RLMESH_REQUIRE_REFLINK=1`` makes their absence a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_options import TEST_ENVS

from rlmesh.numpy import SandboxEnv

pytestmark = pytest.mark.sandbox


MKFS = {"btrfs": ["mkfs.btrfs", "-q"], "xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"]}
PACKAGES = {"btrfs": "btrfs-progs", "xfs": "xfsprogs"}


@pytest.fixture(params=sorted(MKFS))
def cow(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A 2 GiB file system (a sparse file) with clones, mounted from a loop device."""
    kind = request.param
    if os.geteuid() != 0 or shutil.which(MKFS[kind][0]) is None:
        message = f"a loop-mounted {kind} needs root and {MKFS[kind][0]} ({PACKAGES[kind]})"
        if os.environ.get("RLMESH_REQUIRE_REFLINK") == "1":
            pytest.fail(message)
        pytest.skip(message)
    image, mount = tmp_path / "image", tmp_path / "mnt"
    mount.mkdir()
    with open(image, "wb") as file:
        file.truncate(2 << 30)
    subprocess.run([*MKFS[kind], str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        image.unlink(missing_ok=True)


def shares_extents(path: Path) -> bool:
    """Whether the file's data shares extents with another file (``filefrag`` says so)."""
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return "shared" in out


def test_a_venvs_copies_share_uvs_blocks_and_a_write_stays_its_own(
    cow: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uv's cache lives on that file system too (a fresh one: this test downloads)."""
    monkeypatch.setenv("RLMESH_CACHE_DIR", str(cow / "rlmesh"))
    monkeypatch.setenv("UV_CACHE_DIR", str(cow / "uv"))
    with SandboxEnv("rlmesh_test/Faulty-v0", mode="tamper", **TEST_ENVS) as env:
        venv = Path(env.sandbox_versions["executable"]).parent.parent
        site = next((venv / "lib").glob("python*/site-packages"))
        big = max((site / "numpy").rglob("*.so"), key=lambda p: p.stat().st_size)
        assert big.stat().st_nlink == 1  # not a hard link into uv's cache
        assert shares_extents(big), f"{big} shares no blocks: a full copy"
        cached = {p: p.read_bytes() for p in (cow / "uv").rglob("numpy/__init__.py")}
        assert cached, "uv's cache holds numpy's files"
        env.reset()  # the env appends to its own numpy/__init__.py
    own = site / "numpy" / "__init__.py"
    assert own.read_bytes().endswith(b"# tampered by a sandboxed env\n")  # it did write
    assert {p: p.read_bytes() for p in cached} == cached
