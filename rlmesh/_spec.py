"""Sandbox options and sources: parsed and validated up front, before any process starts.

Pure: no I/O beyond checking that a named local path exists. A ``SandboxSpec`` is frozen and
holds everything a backend needs to build and start a sandbox; the cache key is derived from
it (plus facts about the interpreter and uv) in ``_venv``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

__all__ = [
    "GymSource",
    "HubSource",
    "SandboxSpec",
    "Source",
    "make_spec",
    "parse_source",
]

RLMESH_PACKAGE_ENV = "RLMESH_SANDBOX_RLMESH_PACKAGE"
DEFAULT_STARTUP_TIMEOUT = 120.0

# Gymnasium ids: optional "module:" prefix, optional "Namespace/", name, optional "-vN".
_MODULE = r"[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*"
_GYM_ID = re.compile(rf"^(?:(?P<module>{_MODULE}):)?(?:(?P<ns>[\w.-]+)/)?(?P<name>[\w.-]+)$")
_HF_NAME = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?"
_HF = re.compile(
    rf"^(?P<repo>{_HF_NAME}/{_HF_NAME})(?:@(?P<rev>[^:@/\s]+))?"
    r"(?::(?P<suite>[\w.-]+)(?:/(?P<task>[\w.-]+))?)?$"
)
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_IMPORT = re.compile(rf"^{_MODULE}$")


@dataclass(frozen=True)
class GymSource:
    """A Gymnasium registry id, made with ``gymnasium.make`` inside the sandbox."""

    env_id: str

    def __str__(self) -> str:
        return self.env_id

    def worker_request(self) -> dict[str, Any]:
        """What the worker needs to make the environment."""
        return {"kind": "gym", "id": self.env_id}


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face EnvHub repository (``hf://org/repo[@sha][:suite[/task]]``)."""

    repo: str
    revision: str | None
    suite: str | None
    task: str | None

    def __str__(self) -> str:
        text = f"hf://{self.repo}"
        if self.revision:
            text += f"@{self.revision}"
        if self.suite:
            text += f":{self.suite}"
            if self.task:
                text += f"/{self.task}"
        return text

    @property
    def pinned(self) -> bool:
        return self.revision is not None and bool(_FULL_SHA.match(self.revision))

    def worker_request(self) -> dict[str, Any]:
        return {
            "kind": "hf",
            "repo": self.repo,
            "revision": self.revision,
            "suite": self.suite,
            "task": self.task,
        }


Source = GymSource | HubSource


def parse_source(source: str) -> Source:
    """Parse a source string; raise ``ValueError`` with the accepted forms if it is malformed."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a str such as 'CartPole-v1', not {type(source).__name__}")
    text = source.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "gym", text
    if scheme == "gym":
        match = _GYM_ID.match(rest)
        if not match or not re.search(r"[A-Za-z0-9]", match.group("name")):
            raise ValueError(
                f"{source!r} is not a valid Gymnasium id; expected forms like 'CartPole-v1', "
                "'gym://CartPole-v1', 'ALE/Pong-v5' or 'my_package.envs:MyEnv-v0'"
            )
        return GymSource(rest)
    if scheme == "hf":
        match = _HF.match(rest)
        if not match:
            raise ValueError(
                f"{source!r} is not a valid EnvHub source; expected "
                "'hf://org/repo[@<full-commit-sha>][:suite[/task]]'"
            )
        return HubSource(match["repo"], match["rev"], match["suite"], match["task"])
    raise ValueError(
        f"unknown source scheme {scheme + '://'!r} in {source!r}; use a Gymnasium id "
        "('CartPole-v1' or 'gym://CartPole-v1') or an EnvHub repo ('hf://org/repo@sha')"
    )


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that defines one sandbox, validated. Build with ``make_spec``."""

    source: Source
    packages: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    render_mode: str | None = None
    base_image: str | None = None
    rlmesh_package: str | None = None
    trust_remote_code: bool = False
    allow_unpinned_hf: bool = False
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    call_timeout: float | None = None
    isolation: str | None = None
    max_memory: int | None = None
    max_cpu_seconds: int | None = None
    auto_restart: bool = False
    make_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short name for messages: the source as the user wrote it."""
        return str(self.source)

    def factory_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that make an equivalent sandbox env (for ``EnvSpec.kwargs``)."""
        return {
            "source": str(self.source),
            "packages": list(self.packages),
            "imports": list(self.imports),
            "base_image": self.base_image,
            "rlmesh_package": self.rlmesh_package,
            "trust_remote_code": self.trust_remote_code,
            "allow_unpinned_hf": self.allow_unpinned_hf,
            "startup_timeout": self.startup_timeout,
            "call_timeout": self.call_timeout,
            "isolation": self.isolation,
            "max_memory": self.max_memory,
            "max_cpu_seconds": self.max_cpu_seconds,
            "auto_restart": self.auto_restart,
            **self.make_kwargs,
        }

    def requirement_names(self) -> set[str]:
        """Canonical names of the distributions that ``packages`` names explicitly."""
        names: set[str] = set()
        for item in self.packages:
            try:
                names.add(canonicalize_name(Requirement(item).name))
            except InvalidRequirement:
                continue  # a local path: its name is unknown until it is built
        return names


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of strings, not a single string: write "
            f"{name}=[{value!r}] instead of {name}={value!r}"
        )
    if not isinstance(value, Sequence) and not isinstance(value, (set, frozenset)):
        raise TypeError(f"{name} must be a list of strings, not {type(value).__name__}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise TypeError(f"every entry of {name} must be a non-empty string, got {item!r}")
    return tuple(item.strip() for item in items)


def _check_package(item: str) -> str:
    try:
        Requirement(item)
        return item
    except InvalidRequirement as exc:
        path = Path(item).expanduser()
        if path.exists():
            return str(path.resolve())
        raise ValueError(
            f"packages entry {item!r} is neither a requirement (like 'gymnasium==1.3.0') "
            f"nor an existing local path: {exc}"
        ) from None


def _check_timeout(name: str, value: Any, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


OPTION_NAMES = (
    "packages",
    "imports",
    "render_mode",
    "base_image",
    "rlmesh_package",
    "trust_remote_code",
    "allow_unpinned_hf",
    "startup_timeout",
    "call_timeout",
    "isolation",
    "max_memory",
    "max_cpu_seconds",
    "auto_restart",
)
ISOLATIONS = (None, "none", "bwrap")


def spec_from_arguments(source: str, arguments: Mapping[str, Any]) -> SandboxSpec:
    """``make_spec`` from a face constructor's arguments (its ``locals()``).

    The faces spell every option out in their signatures (for readers and IDEs) and hand
    them over here in one go, so the option list lives in one place.
    """
    options = {name: arguments[name] for name in OPTION_NAMES}
    return make_spec(source, make_kwargs=arguments["gym_make_kwargs"], **options)


def _check_limit(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        unit = "bytes" if name == "max_memory" else "seconds"
        raise ValueError(f"{name} must be a positive int ({unit}), not {value!r}")
    return value


def make_spec(
    source: str,
    *,
    packages: Sequence[str] | None = (),
    imports: Sequence[str] | None = (),
    render_mode: str | None = None,
    base_image: str | None = None,
    rlmesh_package: str | None = None,
    trust_remote_code: bool = False,
    allow_unpinned_hf: bool = False,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    call_timeout: float | None = None,
    isolation: str | None = None,
    max_memory: int | None = None,
    max_cpu_seconds: int | None = None,
    auto_restart: bool = False,
    make_kwargs: Mapping[str, Any] | None = None,
) -> SandboxSpec:
    """Validate every option and return the frozen spec, or raise ``ValueError``/``TypeError``."""
    parsed = parse_source(source)
    for flag_name, flag in (
        ("trust_remote_code", trust_remote_code),
        ("allow_unpinned_hf", allow_unpinned_hf),
        ("auto_restart", auto_restart),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{flag_name} must be True or False, not {flag!r}")
    pkgs = tuple(_check_package(item) for item in _strings("packages", packages))
    mods = _strings("imports", imports)
    for mod in mods:
        if not _IMPORT.match(mod):
            raise ValueError(f"imports entry {mod!r} is not a module name like 'ale_py'")
    if render_mode is not None and not isinstance(render_mode, str):
        raise TypeError(f"render_mode must be a str or None, not {render_mode!r}")
    if base_image is not None and (not isinstance(base_image, str) or not base_image.strip()):
        raise ValueError(f"base_image must be a Docker image name, not {base_image!r}")
    if rlmesh_package is None:
        rlmesh_package = os.environ.get(RLMESH_PACKAGE_ENV) or None
    if rlmesh_package is not None:
        if not isinstance(rlmesh_package, str) or not rlmesh_package.strip():
            raise ValueError(
                f"rlmesh_package must be 'local', a wheel path or a specifier, "
                f"not {rlmesh_package!r}"
            )
        if rlmesh_package != "local":
            rlmesh_package = _check_package(rlmesh_package.strip())
    if isinstance(parsed, HubSource):
        if not parsed.pinned and not allow_unpinned_hf:
            raise ValueError(
                f"{source!r} is not pinned to a full commit sha; pin it as "
                f"'hf://{parsed.repo}@<40-hex-sha>...' for reproducible runs, or pass "
                "allow_unpinned_hf=True"
            )
        if not trust_remote_code:
            where = f"at {parsed.revision}" if parsed.revision else "(unpinned)"
            raise ValueError(
                f"{source!r} runs Python code from the repository; pass trust_remote_code=True "
                f"after reviewing the repository {parsed.repo} {where}"
            )
    if isolation not in ISOLATIONS:
        raise ValueError(
            f"isolation must be None (a plain child process) or 'bwrap' (bubblewrap: no "
            f"network, read-only filesystem, own PID namespace), not {isolation!r}"
        )
    kwargs = dict(make_kwargs or {})
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(f"environment keyword names must be str, got {key!r}")
    return SandboxSpec(
        source=parsed,
        packages=pkgs,
        imports=mods,
        render_mode=render_mode,
        base_image=base_image.strip() if base_image else None,
        rlmesh_package=rlmesh_package,
        trust_remote_code=trust_remote_code,
        allow_unpinned_hf=allow_unpinned_hf,
        startup_timeout=_check_timeout("startup_timeout", startup_timeout, optional=False) or 0.0,
        call_timeout=_check_timeout("call_timeout", call_timeout, optional=True),
        isolation=None if isolation == "none" else isolation,
        max_memory=_check_limit("max_memory", max_memory),
        max_cpu_seconds=_check_limit("max_cpu_seconds", max_cpu_seconds),
        auto_restart=auto_restart,
        make_kwargs=kwargs,
    )
