"""The docs stay true: links resolve, every Python block runs or is an included example, and
the pages that list things (options, errors) list all of them.

A ```python block of a page is one of three kinds:

- an **included example**: its body is only ``--8<-- "examples/<name>.py"`` lines, which the
  site build replaces with that file; tests/test_examples.py runs the file;
- **not run**: the line before it is ``<!-- not-run: <reason> -->``; such blocks must be listed
  in ``NOT_RUN`` below, with the reason, so each one is a decision someone made;
- **run**: every other block. The blocks of a page run in order in one namespace, in a child
  Python process that shares the session's uv and venv cache (``test_the_blocks_of_a_page_run``).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]

# (page, first line of the block): why it cannot run. Keep this short.
NOT_RUN = {
    ("sandbox-guide.md", 'env = SandboxEnv("my_pkg.envs:Shaped-v0", reward_fn=lambda r: r * 0.1)'):
        "my_pkg stands for your own package of envs",
    ("design.md", "# rlmesh/_config.py, in OPTIONS"):
        "a fragment of the option table for an option that does not exist",
}  # fmt: skip

_BLOCK = re.compile(
    r"^(?:<!-- not-run: (?P<reason>[^\n]*?) -->\n)?```python(?P<info>[^\n]*)\n(?P<body>.*?)^```",
    re.S | re.M,
)
_INCLUDE = re.compile(r'^--8<-- "([^"]+)"$')


@dataclass(frozen=True)
class Block:
    page: Path
    number: int
    body: str
    not_run: str | None

    @property
    def includes(self) -> list[str]:
        lines = [line.strip() for line in self.body.strip().splitlines()]
        found = [_INCLUDE.match(line) for line in lines]
        return [m.group(1) for m in found if m] if found and all(found) else []

    @property
    def runs(self) -> bool:
        return not self.includes and self.not_run is None


def blocks(page: Path) -> list[Block]:
    return [
        Block(page, number, m.group("body"), m.group("reason"))
        for number, m in enumerate(_BLOCK.finditer(page.read_text()))
    ]


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
RUN_PAGES = sorted({block.page for block in ALL_BLOCKS if block.runs})


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_compile(page: Path) -> None:
    for block in blocks(page):
        if not block.includes:
            compile(block.body, f"{page.name}[block {block.number}]", "exec")


def test_every_python_block_runs_or_is_an_included_example_or_is_listed() -> None:
    marked = {
        (b.page.name, b.body.strip().splitlines()[0]): b.not_run
        for b in ALL_BLOCKS
        if b.not_run is not None
    }
    assert marked == NOT_RUN, "a not-run block must be listed in NOT_RUN with its reason"
    for block in ALL_BLOCKS:
        for path in block.includes:
            assert path.startswith("examples/") and (ROOT / path).is_file(), (block.page, path)
    for page in PAGES:  # the collector sees fences at the start of a line only
        assert not re.search(r"^[ \t]+```python", page.read_text(), re.M), page.name
    assert len(RUN_PAGES) >= 8 and sum(b.runs for b in ALL_BLOCKS) >= 9  # the parser sees them


def test_the_block_parser_sees_markers_and_includes(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not-run: why -->\n```python\nx = 1\n```\n\n"
        '```python title="examples/a.py"\n--8<-- "examples/a.py"\n```\n\n'
        "```python\nprint(1)\n```\n"
    )
    found = blocks(page)
    assert [(b.not_run, b.includes, b.runs) for b in found] == [
        ("why", [], False),
        (None, ["examples/a.py"], False),
        (None, [], True),
    ]


_RUNNER = """
import sys
from pathlib import Path
namespace = {"__name__": "__main__"}
for number, body in enumerate(sys.argv[2:]):
    exec(compile(body, f"{Path(sys.argv[1]).name}[run block {number}]", "exec"), namespace)
"""


@pytest.mark.sandbox
@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: p.name)
def test_the_blocks_of_a_page_run(page: Path, tmp_path: Path) -> None:
    bodies = [block.body for block in blocks(page) if block.runs]
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(page), *bodies],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def test_every_error_class_has_a_section_in_troubleshooting() -> None:
    import rlmesh
    from rlmesh import _errors

    text = (DOCS / "troubleshooting.md").read_text()
    errors = [
        name
        for name in sorted({*_errors.__all__, *rlmesh.__all__})
        if isinstance(getattr(_errors, name, None), type)
        and issubclass(getattr(_errors, name), BaseException)
    ]
    assert len(errors) >= 8, errors
    missing = [name for name in errors if f"\n## {name}\n" not in text]
    assert not missing, f"error classes without a section in troubleshooting.md: {missing}"


def test_every_page_is_in_the_site_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1]
    missing = [p.name for p in DOCS.glob("*.md") if p.name not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


def _link_checker() -> object:
    spec = importlib.util.spec_from_file_location("check_site_links", ROOT / "tools" /
                                                  "check_site_links.py")  # fmt: skip
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_link_checker_finds_broken_links_and_anchors(tmp_path: Path) -> None:
    checker = _link_checker()
    (tmp_path / "guide").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="guide/">ok</a><a href="guide/#opts">ok</a><a href="#top" id="top">ok</a>'
        '<a href="guide/#nope">bad anchor</a><a href="missing/">bad page</a>'
        '<a href="https://example.org/x">ok</a><a href="https://exa mple.org">bad url</a>'
        '<img src="img/plot.png">'
    )
    (tmp_path / "guide" / "index.html").write_text(
        '<h2 id="opts">Options</h2><a href="../index.html#top">ok</a><a href="../">ok</a>'
    )
    broken = checker.check_site(tmp_path)  # type: ignore[attr-defined]
    assert len(broken) == 4, broken
    assert any("#nope" in line for line in broken) and any("missing/" in line for line in broken)
    assert any("exa mple" in line for line in broken) and any("plot.png" in line for line in broken)


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S)
    assert "nox -s example" in commands[0] and "nox -s tests" in commands[1]
    run = (ROOT / ".ci" / "run").read_text()
    assert "nox -s tests" in run and "nox -s docs" in run


def test_every_option_of_the_table_is_in_the_guide() -> None:
    from rlmesh._config import OPTIONS

    guides = (DOCS / "sandbox-guide.md").read_text()
    guides += (DOCS / "vector.md").read_text()
    missing = [o.name for o in OPTIONS if f"`{o.name}`" not in guides]
    assert not missing, f"options without a line in docs/sandbox-guide.md or vector.md: {missing}"


def test_the_guides_signature_is_the_faces() -> None:
    import inspect

    from rlmesh.numpy import SandboxEnv

    text = (DOCS / "sandbox-guide.md").read_text()
    block = re.search(r"```text\n(SandboxEnv\(.*?)```", text, re.S)
    assert block is not None
    written = re.sub(r"\s+", "", block.group(1))
    bare = re.sub(r": '[^']*'", "", "SandboxEnv" + str(inspect.signature(SandboxEnv)))
    actual = re.sub(r"\s+", "", bare)
    assert written == actual


def _shell_lines() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for body in re.findall(r"```(?:bash|sh)[^\n]*\n(.*?)^```", page.read_text(), re.S | re.M):
            for line in body.splitlines():
                command = line.split(" #", 1)[0].split(" > ", 1)[0].strip()
                if command:
                    found.append((page.name, command))
    return found


def test_the_shell_blocks_name_real_commands_flags_and_sessions() -> None:
    """Shell blocks are not run (they install, build or run for minutes), but every
    ``rlmesh`` command in them must parse with the real CLI, every nox session must exist and
    every flag given to benchmarks/plots.py must be one of its flags."""
    import shlex

    from rlmesh._cli import _parser

    sessions = set(re.findall(r"^def (\w+)\(session", (ROOT / "noxfile.py").read_text(), re.M))
    plots_flags = set(re.findall(r'add_argument\("(--[\w-]+)"',
                                 (ROOT / "benchmarks" / "plots.py").read_text()))  # fmt: skip
    checked = 0
    for page, command in _shell_lines():
        argv = shlex.split(command)
        if argv[0] == "rlmesh":
            _parser().parse_args(argv[1:])  # SystemExit (a failure) on an unknown command or flag
            checked += 1
        for match in re.finditer(r"nox -s (\w+)", command):
            assert match.group(1) in sessions, (page, command)
            checked += 1
        if "nox -s bench --" in command:
            flags = {arg for arg in argv[argv.index("--") + 1 :] if arg.startswith("--")}
            assert flags <= plots_flags, (page, command)
    assert checked >= 8


def test_the_api_reference_documents_every_public_name() -> None:
    import ast

    text = (DOCS / "api.md").read_text()
    missing = []
    for module, path in [("rlmesh", "__init__.py"), ("rlmesh.numpy", "numpy.py"),
                         ("rlmesh.testing", "testing.py"), ("rlmesh.sb3", "sb3.py")]:  # fmt: skip
        tree = ast.parse((ROOT / "rlmesh" / path).read_text())
        [names] = [
            ast.literal_eval(node.value)
            for node in tree.body
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"
        ]
        missing += [f"{module}.{n}" for n in names if n != "__version__" and
                    f"::: {module}.{n}\n" not in text]  # fmt: skip
    assert not missing, f"public names without an entry in docs/api.md: {missing}"
