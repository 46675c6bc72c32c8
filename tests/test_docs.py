"""The docs stay true: relative links resolve and Python code blocks compile."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_compile(page: Path) -> None:
    for number, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
        compile(block, f"{page.name}[block {number}]", "exec")


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S)
    assert "nox -s example" in commands[0] and "nox -s tests" in commands[1]
    assert "nox -s tests" in (ROOT / ".ci" / "run").read_text()


def test_every_option_of_the_table_is_in_the_guide() -> None:
    from rlmesh._config import OPTIONS

    guides = (ROOT / "docs" / "sandbox-guide.md").read_text()
    guides += (ROOT / "docs" / "vector.md").read_text()
    missing = [o.name for o in OPTIONS if f"`{o.name}`" not in guides]
    assert not missing, f"options without a line in docs/sandbox-guide.md or vector.md: {missing}"


def test_the_guides_signature_is_the_faces() -> None:
    import inspect

    from rlmesh.numpy import SandboxEnv

    text = (ROOT / "docs" / "sandbox-guide.md").read_text()
    block = re.search(r"```text\n(SandboxEnv\(.*?)```", text, re.S)
    assert block is not None
    written = re.sub(r"\s+", "", block.group(1))
    bare = re.sub(r": '[^']*'", "", "SandboxEnv" + str(inspect.signature(SandboxEnv)))
    actual = re.sub(r"\s+", "", bare)
    assert written == actual
