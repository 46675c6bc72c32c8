"""What goes into every sandbox, whatever the backend: rlmesh's child side and its needs.

Only the child's files travel: ``rlmesh/__init__.py``, ``_errors.py``, ``_version.py``,
``py.typed``, and the ``_wire`` and ``_worker`` packages. They are also all that the cache
key hashes of rlmesh, so editing a host-only module (a face, the CLI, a backend) reuses every
cached sandbox, while editing anything the child runs builds new ones.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .._config import Options, Resolved

__all__ = [
    "CHILD_PACKAGES",
    "child_files",
    "child_hash",
    "copy_child",
    "requirement_names",
    "sandbox_requirements",
]

PACKAGE_DIR = Path(__file__).resolve().parent.parent
CHILD_MODULES = ("__init__.py", "_errors.py", "_version.py", "py.typed")
CHILD_PACKAGES = ("_wire", "_worker")


def child_files(root: Path = PACKAGE_DIR) -> list[Path]:
    """The child-side files of the rlmesh package at ``root``, sorted."""
    files = [root / name for name in CHILD_MODULES if (root / name).is_file()]
    for package in CHILD_PACKAGES:
        files += [
            path
            for path in (root / package).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix == ".py"
        ]
    return sorted(files)


def child_hash(root: Path = PACKAGE_DIR) -> str:
    """A content hash of the child-side files (paths and bytes)."""
    digest = hashlib.sha256()
    for path in child_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def own_child_hash() -> str:
    """``child_hash`` of this process's rlmesh (computed once)."""
    return child_hash()


def copy_child(site_packages: Path) -> None:
    """Copy the child-side files into ``site_packages/rlmesh``."""
    target = site_packages / "rlmesh"
    for path in child_files():
        dest = target / path.relative_to(PACKAGE_DIR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)


@functools.cache
def dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def requirements_file(item: str) -> Path | None:
    """``item`` as a requirements file (a lock): an existing local path ending in ``.txt``."""
    path = Path(item)
    return path if item.endswith(".txt") and path.is_absolute() and path.is_file() else None


def requirement_lines(path: Path) -> list[str]:
    """The requirements a requirements file lists (comments and blank lines left out)."""
    lines = (line.split(" #")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def requirement_names(items: list[str]) -> set[str]:
    """Canonical names of the distributions that ``items`` name, requirements files included
    (local packages have none until they are built)."""
    names: set[str] = set()
    expanded: list[str] = []
    for item in items:
        listed = requirements_file(item)
        expanded += requirement_lines(listed) if listed else [item]
    for item in expanded:
        try:
            names.add(canonicalize_name(Requirement(item).name))
        except InvalidRequirement:
            continue  # a local path: its name is unknown until it is built
    return names


def sandbox_requirements(options: Options, resolved: Resolved) -> list[str]:
    """What a sandbox installs: ``packages``, the source's own requirements, the worker's needs.

    Where neither names gymnasium, the sandbox gets exactly the host's version, so a sandboxed
    run matches an in-process one. cloudpickle follows the host's version because the host
    pickles what the child unpickles.
    """
    reqs = [*options.packages, *resolved.requirements]
    named = requirement_names(reqs)
    for name, default in (
        ("gymnasium", f"gymnasium=={dist_version('gymnasium')}"),
        ("cloudpickle", f"cloudpickle=={dist_version('cloudpickle')}"),
        ("msgpack", "msgpack>=1.0"),
    ):
        if name not in named:
            reqs.append(default)
    return reqs
