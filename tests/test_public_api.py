"""The public surface: explicit, sorted __all__, and a worker free of host-only imports."""

from __future__ import annotations

import subprocess
import sys

import rlmesh
import rlmesh.numpy
import rlmesh.testing


def test_all_is_sorted_and_complete() -> None:
    for module in (rlmesh, rlmesh.numpy, rlmesh.testing):
        assert list(module.__all__) == sorted(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name), name


def test_errors_share_one_base() -> None:
    errors = [getattr(rlmesh, n) for n in rlmesh.__all__ if n.endswith("Error")]
    assert errors and all(issubclass(e, rlmesh.SandboxError) for e in errors)
    assert issubclass(rlmesh.SandboxTimeoutError, TimeoutError)


def test_worker_imports_no_host_only_dependency() -> None:
    code = (
        "import sys\n"
        "for name in ('anyio', 'uv', 'huggingface_hub', 'packaging'):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "import rlmesh._worker\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
