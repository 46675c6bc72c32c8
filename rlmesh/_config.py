"""The one option table: every sandbox option, its default, its check and its words.

Everything about options is derived from ``OPTIONS``:

- the faces' signatures and the "Args" of their docstrings (``face_signature``,
  ``options_doc``): the faces take ``**options`` and show the table's rows;
- validation (``check_options``): each row's ``check`` turns what the user passed into the
  stored value or raises ``TypeError``/``ValueError`` that names the option;
- the spec round trip (``Options.as_kwargs``): what ``EnvSpec.kwargs`` holds to make an
  equivalent sandbox again;
- the command line (``add_cli_arguments``, ``cli_options``): ``rlmesh sandbox prepare``'s flags.

Adding an option is one row here plus the code that uses it. Pure: no I/O beyond checking
that a named local path exists.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

__all__ = [
    "OPTIONS",
    "Option",
    "Options",
    "Resolved",
    "Timeouts",
    "check_options",
    "face_signature",
    "options_doc",
]

RLMESH_PACKAGE_ENV = "RLMESH_SANDBOX_RLMESH_PACKAGE"
BASE_IMAGE_ENV = "RLMESH_SANDBOX_BASE_IMAGE"
ISOLATIONS = (None, "none", "bwrap")
VECTORIZATION_MODES = ("sync", "async")
_IMPORT = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class Timeouts:
    """Every bound on a wait, in seconds, in one value (``None``: no limit).

    ``startup`` and ``call`` come from the ``startup_timeout`` and ``call_timeout`` options;
    the others are fixed bounds of the shutdown and crash paths.
    """

    startup: float = 120.0  # build, spawn, handshake and make, in all
    call: float | None = None  # one call (reset, step, ...); expiry stops the sandbox
    close: float = 10.0  # env.close() in the sandbox, after which it is stopped
    stop_grace: float = 3.0  # stop(): from end-of-file to SIGTERM
    term_grace: float = 1.0  # stop(): from SIGTERM to SIGKILL
    kill_wait: float = 5.0  # stop(): for the exit after SIGKILL
    drain_wait: float = 1.0  # stop(): for the output pump to drain
    abort_grace: float = 0.5  # stopping a sandbox that timed out or that auto_restart replaces
    failed_start_grace: float = 1.0  # stopping a sandbox whose startup failed otherwise
    crash_wait: float = 1.0  # a crash report, or abandon(): for the exit status (then kill)
    output_wait: float = 0.5  # a crash report: for the last output
    portal_start: float = 30.0  # the sync faces' event-loop thread to start
    cancel_wait: float = 10.0  # an interrupted sync startup: for its cleanup on the portal


DEFAULT_TIMEOUTS = Timeouts()


# -- checks: each takes (option name, value) and returns the stored value -------------------


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


def check_package(item: str) -> str:
    """A requirement as it is, or a local path made absolute; ``ValueError`` otherwise."""
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


def _packages(name: str, value: Any) -> tuple[str, ...]:
    return tuple(check_package(item) for item in _strings(name, value))


def _imports(name: str, value: Any) -> tuple[str, ...]:
    mods = _strings(name, value)
    for mod in mods:
        if not _IMPORT.match(mod):
            raise ValueError(f"imports entry {mod!r} is not a module name like 'ale_py'")
    return mods


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, not {value!r}")
    return value


def _base_image(name: str, value: Any) -> str | None:
    if value is None:
        value = os.environ.get(BASE_IMAGE_ENV) or None
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or value.strip().startswith("-"):
        raise ValueError(
            f"base_image must be a Docker image name (like 'python:3.12-slim'), not {value!r}"
        )
    return value.strip()


def _cpus(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"cpus must be a number of CPUs (like 1.5), not {value!r}")
    if not 0 < value < math.inf:
        raise ValueError(f"cpus must be a positive number of CPUs, not {value!r}")
    return float(value)


_GPUS = re.compile(r"^(all|\d+(,\d+)*)$")


def _gpus(name: str, value: Any) -> str | None:
    if value is None:
        return None
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _GPUS.match(text.strip()):
        raise ValueError(f"gpus must be 'all' or device numbers like '0' or '0,1', not {value!r}")
    return text.strip()


def _backend(name: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str) or not callable(getattr(value, "start", None)):
        raise TypeError(
            f"backend must be None (a uv virtualenv on this host) or a backend object such as "
            f"rlmesh.ray.RayBackend(), not {value!r}"
        )
    return value


def _rlmesh_package(name: str, value: Any) -> str | None:
    if value is None:
        value = os.environ.get(RLMESH_PACKAGE_ENV) or None
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"rlmesh_package must be 'local', a wheel path or a specifier, not {value!r}"
        )
    return value if value == "local" else check_package(value.strip())


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


# poll() takes a C int of milliseconds: about 24.8 days. A call_timeout beyond it is a wish
# for no limit, and is stored as one (None), as is inf.
MAX_CALL_TIMEOUT = (2**31 - 1) / 1000


def _call_seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    seconds = _seconds(name, value)
    if seconds == math.inf:
        return None
    if seconds > MAX_CALL_TIMEOUT:
        raise ValueError(
            f"{name}={value!r} is longer than the longest wait rlmesh can bound "
            f"({MAX_CALL_TIMEOUT:g} s, about 24 days); for no limit pass {name}=None (or "
            f"float('inf'))"
        )
    return seconds


_PYTHON_VERSION = re.compile(r"^3\.\d{1,2}$")


def _python(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise TypeError(
            f"python must be a version such as '3.12' or an interpreter path, not {value!r}"
        )
    text = value.strip()
    if _PYTHON_VERSION.match(text):
        return text
    path = Path(text).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ValueError(
            f"python={text!r} is neither a version such as '3.12' nor an executable "
            "interpreter file; pass a version, or the path of a Python (e.g. "
            "/usr/bin/python3.12 or ~/.pyenv/versions/3.12.1/bin/python)"
        )
    return str(path.resolve())


def _wrappers(name: str, value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if callable(value) or not isinstance(value, (list, tuple)):
        raise TypeError(
            f"wrappers must be a list of callables (env -> wrapped env), such as "
            f"[gymnasium.wrappers.TimeAwareObservation]; got {value!r}"
        )
    for item in value:
        if not callable(item):
            raise TypeError(f"every entry of wrappers must be callable (env -> env), not {item!r}")
    return tuple(value)


def _isolation(name: str, value: Any) -> str | None:
    if value not in ISOLATIONS:
        raise ValueError(
            f"isolation must be None (a plain child process) or 'bwrap' (bubblewrap: no "
            f"network, read-only filesystem, own PID namespace), not {value!r}"
        )
    return None if value == "none" else value


def _limit(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        unit = "bytes" if name == "max_memory" else "seconds"
        raise ValueError(f"{name} must be a positive int ({unit}), not {value!r}")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, not {value!r}")
    return value


def _environment(name: str, value: Any) -> dict[str, str]:
    """A mapping of names to values, or the command line's ``NAME=VALUE`` strings."""
    if value is None:
        return {}
    if isinstance(value, (list, tuple)):  # the command line's NAME=VALUE strings
        parsed: dict[Any, Any] = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(
                    f"{name} entries must be NAME=VALUE strings (like MUJOCO_GL=egl), not {item!r}"
                )
            key, _, val = item.partition("=")
            parsed[key] = val
        value = parsed
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{name} must be a dict of environment variables, like "
            f"{name}={{'MUJOCO_GL': 'egl'}}, not {type(value).__name__}"
        )
    for key, val in value.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise TypeError(
                f"{name} names and values must both be str: write {name}={{{str(key)!r}: "
                f"{str(val)!r}}} instead of {name}={{{key!r}: {val!r}}}"
            )
        if not key or "=" in key or "\0" in key:
            raise ValueError(
                f"{name} name {key!r} is not a variable name: it must be non-empty, without "
                f"'=' or NUL (like 'MUJOCO_GL')"
            )
        if "\0" in val:
            raise ValueError(f"{name}[{key!r}] holds a NUL character, which no variable can")
    return dict(sorted(value.items()))


def _vectorization_mode(name: str, value: Any) -> str:
    if value not in VECTORIZATION_MODES:
        raise ValueError(
            f"vectorization_mode must be 'sync' or 'async' (how each sandbox runs its share "
            f"of sub-envs), not {value!r}"
        )
    return str(value)


def _autoreset_mode(name: str, value: Any) -> str | None:
    if value is None:
        return None
    from gymnasium.vector import AutoresetMode

    try:
        return str(AutoresetMode(getattr(value, "value", value)).value)
    except ValueError:
        names = ", ".join(repr(m.value) for m in AutoresetMode)
        raise ValueError(
            f"autoreset_mode must be an AutoresetMode or one of {names}, not {value!r}"
        ) from None


# -- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One row of the option table.

    Attributes:
        name: The keyword argument.
        default: Its default.
        check: ``check(name, value)`` returns the stored value or raises.
        annotation: The type shown in signatures.
        doc: The docstring line.
        vector: Only vector faces take it (elsewhere it is an env keyword argument).
        cli: How ``rlmesh sandbox prepare`` takes it: ``"list"`` (repeatable), ``"flag"``,
            ``"str"``, ``"float"``, ``"int"``; ``None`` for no flag.
    """

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    annotation: str
    doc: str
    vector: bool = False
    cli: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option("num_envs", 1, _count, "int", "Sub-envs in all.", vector=True),
    Option("num_workers", 1, _count, "int",
           "Sandbox processes to spread the sub-envs over (for CPU-heavy envs).", vector=True),
    Option("vectorization_mode", "sync", _vectorization_mode, "str",
           "How each worker runs its sub-envs: ``\"sync\"`` (one process) or ``\"async\"`` "
           "(Gymnasium's ``AsyncVectorEnv`` inside the sandbox).", vector=True),
    Option("autoreset_mode", None, _autoreset_mode, "Any",
           "A ``gymnasium.vector.AutoresetMode`` (or its value); Gymnasium's default when "
           "``None``.", vector=True),
    Option("packages", (), _packages, "Sequence[str]",
           "Requirements installed into the sandbox (``[\"gymnasium==1.3.0\"]``). Without a "
           "gymnasium entry the sandbox gets the host's gymnasium version.", cli="list"),
    Option("imports", (), _imports, "Sequence[str]",
           "Modules imported in the sandbox before the env is made (to register it).",
           cli="list"),
    Option("python", None, _python, "str | None",
           "The sandbox's interpreter: a version (``\"3.12\"``: uv's discovery, then pyenv's "
           "installs) or the path of one. Default: the host's interpreter.", cli="str"),
    Option("render_mode", None, _optional_str, "str | None",
           "Passed to ``gymnasium.make``."),
    Option("wrappers", (), _wrappers, "Sequence[Callable[[Any], Any]]",
           "Callables applied in the sandbox, in order, to the env once it is made (a "
           "wrapper class, or ``functools.partial`` of one), so a preprocessed observation "
           "crosses instead of the raw one. They travel with cloudpickle, host to sandbox."),
    Option("base_image", None, _base_image, "str | None",
           "Run the sandbox in a container of this image (podman or docker) instead of a "
           "host virtualenv; the image's own Python runs the env. Default: "
           "``$RLMESH_SANDBOX_BASE_IMAGE``, else none.", cli="str"),
    Option("network", False, _flag, "bool",
           "Give a container (or ``isolation=\"bwrap\"``) sandbox the network; off by "
           "default.", cli="flag"),
    Option("cpus", None, _cpus, "float | None",
           "CPUs a container sandbox may use (``--cpus``).", cli="number"),
    Option("gpus", None, _gpus, "str | None",
           "GPUs for a container sandbox: ``\"all\"`` or device numbers (``\"0,1\"``).",
           cli="str"),
    Option("backend", None, _backend, "Any",
           "Where the sandbox runs: ``None`` (a uv virtualenv and a child process on this "
           "host) or ``rlmesh.ray.RayBackend(...)`` (on Ray cluster nodes). Not part of the "
           "cache key."),
    Option("rlmesh_package", None, _rlmesh_package, "str | None",
           "The rlmesh installed in the sandbox: ``\"local\"`` (newest wheel in ``dist/``), a "
           "wheel path or a pip specifier. Default: ``$RLMESH_SANDBOX_RLMESH_PACKAGE``, else "
           "the host's own rlmesh.", cli="str"),
    Option("trust_remote_code", False, _flag, "bool",
           "Allow sources that run repository code (EnvHub).", cli="flag"),
    Option("allow_unpinned_hf", False, _flag, "bool",
           "Allow EnvHub sources not pinned to a full commit sha.", cli="flag"),
    Option("startup_timeout", DEFAULT_TIMEOUTS.startup, _seconds, "float",
           "Seconds for build plus startup before ``SandboxTimeoutError``.", cli="float"),
    Option("call_timeout", None, _call_seconds, "float | None",
           "Seconds each call may take (``None`` or ``inf``: no limit); on expiry the sandbox "
           "is stopped and ``SandboxTimeoutError`` raised."),
    Option("isolation", None, _isolation, "str | None",
           "``None`` (a plain child process: crash isolation, not a security boundary) or "
           "``\"bwrap\"`` (bubblewrap: no network, read-only filesystem but a scratch "
           "``/tmp``, own PID namespace, dies with the host).", cli="str"),
    Option("env", None, _environment, "Mapping[str, str] | None",
           "Environment variables for the sandbox (``{\"MUJOCO_GL\": \"egl\"}``), set on top "
           "of the host's (or, under ``isolation=\"bwrap\"``, of a minimal environment). Not "
           "part of the cache key.", cli="list"),
    Option("max_memory", None, _limit, "int | None",
           "Memory limit in bytes: the sandbox process's address space (``RLIMIT_AS``), or "
           "a container's memory (``--memory``).", cli="int"),
    Option("max_cpu_seconds", None, _limit, "int | None",
           "CPU-time limit of the sandbox process (``RLIMIT_CPU``).", cli="int"),
    Option("auto_restart", False, _flag, "bool",
           "After a crash or timeout, the next ``reset()`` starts a fresh sandbox and reports "
           "``info[\"rlmesh_restarted\"] = True`` instead of raising."),
)  # fmt: skip

BY_NAME = {option.name: option for option in OPTIONS}
OPTION_NAMES = tuple(option.name for option in OPTIONS if not option.vector)
VECTOR_NAMES = tuple(option.name for option in OPTIONS if option.vector)


class Options(Mapping[str, Any]):
    """Validated option values (all rows of the table, vector ones included); immutable.

    Read an option as an attribute (``options.packages``) or by name.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Options are immutable")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(tuple((k, repr(v)) for k, v in self._values.items()))

    def __repr__(self) -> str:
        return f"Options({self._values!r})"

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(startup=self._values["startup_timeout"], call=self._values["call_timeout"])

    def as_kwargs(self, *, vector: bool = False) -> dict[str, Any]:
        """Keyword arguments that give these options again (``EnvSpec.kwargs``)."""
        return {
            o.name: list(v) if isinstance(v := self._values[o.name], tuple) else _copy(v)
            for o in OPTIONS
            if (vector or not o.vector) and o.name != "render_mode"
        }


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def check_options(given: Mapping[str, Any]) -> Options:
    """Validate ``given`` (option name -> value; missing ones take their defaults).

    Raises ``TypeError`` for an unknown name and whatever a row's check raises.
    """
    unknown = set(given) - set(BY_NAME)
    if unknown:
        raise TypeError(f"unknown sandbox option(s): {', '.join(sorted(unknown))}")
    return Options({o.name: o.check(o.name, given.get(o.name, o.default)) for o in OPTIONS})


def split_arguments(
    arguments: Mapping[str, Any], *, vector: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A face's ``**options`` split into sandbox options and the env's own keyword arguments.

    A vector-only name given to a single-env face is the env's (as Gymnasium would take it).
    """
    options: dict[str, Any] = {}
    env_kwargs: dict[str, Any] = {}
    for name, value in arguments.items():
        option = BY_NAME.get(name)
        if option is not None and (vector or not option.vector):
            options[name] = value
        else:
            env_kwargs[name] = value
    return options, env_kwargs


# -- what is derived for the faces and the command line -------------------------------------


def face_signature(*, vector: bool) -> inspect.Signature:
    """``(source, *, <options>, **gym_make_kwargs)`` for a face's ``__init__``/``create``."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("source", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation="str")]  # fmt: skip
    params += [
        inspect.Parameter(o.name, keyword, default=o.default, annotation=o.annotation)
        for o in OPTIONS
        if vector or not o.vector
    ]
    params.append(inspect.Parameter("gym_make_kwargs", inspect.Parameter.VAR_KEYWORD,
                                    annotation="Any"))  # fmt: skip
    return inspect.Signature(params)


def options_doc(*, vector: bool, indent: str = "    ") -> str:
    """The "Args:" section for a face's docstring, from the table."""
    source = (
        'A Gymnasium id (``"CartPole-v1"``, ``"gym://CartPole-v1"``, ``"ALE/Pong-v5"``, '
        '``"my_pkg.envs:MyEnv-v0"``).'
    )
    lines = [f"{indent}Args:", f"{indent}    source: {source}"]
    for option in OPTIONS:
        if vector or not option.vector:
            lines.append(f"{indent}    {option.name}: {option.doc}")
    lines.append(f"{indent}    **gym_make_kwargs: Forwarded to ``gymnasium.make`` in the sandbox.")
    return "\n".join(lines)


_CLI_TYPES: dict[str, dict[str, Any]] = {
    "list": {"action": "append", "metavar": "VALUE"},
    "flag": {"action": "store_true", "default": None},
    "str": {"metavar": "TEXT"},
    "float": {"type": float, "metavar": "SECONDS"},
    "number": {"type": float, "metavar": "N"},
    "int": {"type": int, "metavar": "N"},
}


_CLI_ALIASES = {"startup_timeout": ("--timeout",)}


def add_cli_arguments(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """One flag per option that has a ``cli`` form (``--packages``, ``--startup-timeout``...)."""
    for option in OPTIONS:
        if option.cli is None:
            continue
        kwargs = dict(_CLI_TYPES[option.cli])
        kwargs.setdefault("default", None)
        if option.name in defaults:
            kwargs["default"] = defaults[option.name]
        help_text = option.doc.replace("%", "%%").replace("``", "'")
        if kwargs["default"] is not None and option.cli != "flag":
            help_text += f" (default here: {kwargs['default']})"
        flag = "--" + option.name.replace("_", "-")
        if option.cli == "list":  # repeatable: one item a flag, so the flag is singular
            flag = flag.removesuffix("s")
        parser.add_argument(flag, *_CLI_ALIASES.get(option.name, ()), dest=option.name,
                            help=help_text, **kwargs)  # fmt: skip


def cli_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options a command line set (flags left out keep their defaults)."""
    return {
        o.name: getattr(args, o.name)
        for o in OPTIONS
        if o.cli is not None and getattr(args, o.name, None) is not None
    }


@dataclass(frozen=True)
class Resolved:
    """A source resolved on the host, as a backend takes it.

    Attributes:
        request: The ``MAKE`` request's ``source``: what the worker makes (``{"kind": ...}``).
        requirements: Installed beside ``packages`` (part of the sandbox's cache key).
        mounts: Host paths the sandbox must see, read-only (a downloaded repository).
        label: The source as it was resolved (an EnvHub branch becomes its commit); empty:
            as requested.
    """

    request: Mapping[str, Any]
    requirements: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()
    label: str = ""
