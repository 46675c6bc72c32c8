"""The house rules of the package's layout, checked: import direction, the child boundary,
the cache key, one lifecycle table, one option table, public names.
"""

from __future__ import annotations

import ast
import inspect
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rlmesh.numpy
from rlmesh import _cli, _config
from rlmesh._backends import payload, venv
from rlmesh._core.lifecycle import TRANSITIONS, Event, Lifecycle, State
from rlmesh._core.spec import make_spec, spec_from_arguments

PACKAGE = Path(rlmesh.__file__).resolve().parent

# Layers, top to bottom; a module may import its own layer and the ones below it.
LAYERS = ["faces", "core", "backends/sources", "config", "wire", "errors"]
# Within "backends/sources" the two halves do not import each other.


def layer_of(module: str) -> str:
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else ""
    if head in ("", "_errors", "_version"):
        return "errors"
    if head == "_wire":
        return "wire"
    if head == "_worker":
        return "worker"
    if head == "_config":
        return "config"
    if head in ("_backends", "_sources"):
        return "backends/sources"
    if head == "_core":
        return "core"
    return "faces"  # _env, _vector_env, numpy, testing, _cli, __main__


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def rlmesh_imports(path: Path) -> set[str]:
    """Every rlmesh module that ``path`` imports, at top level or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rlmesh"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "rlmesh":
                continue
            for alias in node.names:  # `from . import x` may name a module
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / candidate.replace(".", "/")).exists() or (
                    PACKAGE.parent / (candidate.replace(".", "/") + ".py")
                ).exists():
                    found.add(candidate)
                else:
                    found.add(target)
    found.discard(name)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_imports_point_down() -> None:
    wrong = []
    for path in MODULES:
        source = module_name(path)
        mine = layer_of(source)
        for target in rlmesh_imports(path):
            theirs = layer_of(target)
            if mine == "worker":
                ok = theirs in ("worker", "wire", "errors")
            elif theirs == "worker":
                ok = False  # only the child runs the worker
            elif mine == theirs == "backends/sources":
                ok = source.split(".")[1] == target.split(".")[1]  # no backend <-> source
            else:
                ok = LAYERS.index(theirs) >= LAYERS.index(mine)
            if not ok:
                wrong.append(f"{source} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_can_fail() -> None:
    assert layer_of("rlmesh._wire.codec") == "wire"
    assert LAYERS.index(layer_of("rlmesh._core.startup")) < LAYERS.index("wire")


def test_the_child_runs_from_its_own_files_alone(tmp_path: Path) -> None:
    """Only the child-side files go into a sandbox; they must be enough for the worker."""
    payload.copy_child(tmp_path)
    copied = {p.relative_to(tmp_path / "rlmesh").as_posix() for p in tmp_path.rglob("*.py")}
    assert "_worker/main.py" in copied and "_wire/codec.py" in copied
    assert not any(name.startswith(("_core", "_backends", "_sources")) for name in copied)
    assert not {"_config.py", "_env.py", "_cli.py", "numpy.py"} & copied
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "for name in ('anyio', 'uv', 'huggingface_hub', 'packaging'):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "import rlmesh._worker.main, rlmesh._worker.make\n"
        "print(rlmesh.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(tmp_path))


def copy_package(tmp_path: Path) -> Path:
    root = tmp_path / "rlmesh"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_editing_a_host_only_module_keeps_the_cache_key(tmp_path: Path) -> None:
    root = copy_package(tmp_path)
    before = payload.child_hash(root)
    for host_only in ("_cli.py", "_env.py", "_core/startup.py", "_backends/venv.py", "_config.py"):
        with (root / host_only).open("a") as handle:
            handle.write("\n# an edit\n")
    assert payload.child_hash(root) == before
    with (root / "_wire" / "codec.py").open("a") as handle:
        handle.write("\n# an edit the child runs\n")
    assert payload.child_hash(root) != before


def test_the_venv_key_hashes_the_child_files_only() -> None:
    spec = make_spec("CartPole-v1")
    inputs = venv.key_inputs(spec.options, spec.source.resolve(spec.options))
    assert inputs["rlmesh"] == {"mode": "copy", "hash": payload.child_hash(PACKAGE)}


# -- one lifecycle ---------------------------------------------------------------------------


def test_every_lifecycle_move_is_in_the_table() -> None:
    for state in State:
        for event in Event:
            life = Lifecycle("x")
            life.state = state
            if (state, event) in TRANSITIONS:
                assert life.fire(event) is state
                assert life.state is TRANSITIONS[state, event]
            else:
                with pytest.raises(RuntimeError, match="no lifecycle move"):
                    life.fire(event)
    assert all(TRANSITIONS[State.CLOSED, e] is State.CLOSED for e in (Event.CLOSED, Event.FAILED))


FACE_FILES = [PACKAGE / "_env.py", PACKAGE / "_vector_env.py"]
LIFECYCLE_FIELDS = {"state", "_state", "reason", "_reason", "pending", "_pending", "restarts"}


@pytest.mark.parametrize("path", FACE_FILES, ids=lambda p: p.name)
def test_the_faces_write_no_lifecycle_state(path: Path) -> None:
    """State changes go through the one table (``Lifecycle.fire``), never a face."""
    writes = [
        f"{path.name}:{node.lineno}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute) and target.attr in LIFECYCLE_FIELDS
    ]
    assert not writes


# -- one option table ------------------------------------------------------------------------

FACES = [
    (rlmesh.numpy.SandboxEnv, False),
    (rlmesh.numpy.AsyncSandboxEnv, False),
    (rlmesh.numpy.SandboxVectorEnv, True),
    (rlmesh.numpy.AsyncSandboxVectorEnv, True),
]


@pytest.mark.parametrize(("face", "vector"), FACES, ids=lambda f: getattr(f, "__name__", ""))
def test_faces_show_every_option_of_the_table(face: type, vector: bool) -> None:
    params = inspect.signature(face).parameters
    wanted = [o.name for o in _config.OPTIONS if vector or not o.vector]
    assert [p for p in params if p not in ("source", "gym_make_kwargs")] == wanted
    assert params["startup_timeout"].default == _config.Timeouts().startup
    for name in wanted:
        assert f"{name}:" in (face.__doc__ or "")


def test_the_spec_round_trip_gives_the_same_options() -> None:
    spec = make_spec("CartPole-v1", packages=["numpy<3"], call_timeout=5.0, max_memory=1 << 30,
                     make_kwargs={"max_episode_steps": 7})  # fmt: skip
    kwargs = spec.factory_kwargs()  # what EnvSpec.kwargs holds; make() passes it to the face
    again = spec_from_arguments(kwargs.pop("source"), kwargs, vector=False)
    assert again.options == spec.options and dict(again.make_kwargs) == {"max_episode_steps": 7}


def test_the_command_line_takes_the_tables_options() -> None:
    prepare = _cli._parser().parse_args(
        ["sandbox", "prepare", "CartPole-v1", "--package", "numpy<3", "--package", "msgpack",
         "--import", "gymnasium", "--max-memory", "123456789", "--timeout", "9"]
    )  # fmt: skip
    assert _config.cli_options(prepare) == {
        "packages": ["numpy<3", "msgpack"],
        "imports": ["gymnasium"],
        "startup_timeout": 9.0,
        "max_memory": 123456789,
    }
    defaults = _config.cli_options(_cli._parser().parse_args(["sandbox", "prepare", "X-v0"]))
    assert defaults == {"startup_timeout": 600.0}


# -- public names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", rlmesh.numpy.__all__)
def test_public_names_report_the_public_module(name: str) -> None:
    obj = getattr(rlmesh.numpy, name)
    assert obj.__module__ == "rlmesh.numpy"
    assert b"rlmesh.numpy" in pickle.dumps(obj) and b"._" not in pickle.dumps(obj)
