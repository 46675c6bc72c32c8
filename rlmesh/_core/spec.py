"""``SandboxSpec``: a parsed source, its validated options and the env's keyword arguments.

Built once per face, before any process starts; everything the startup needs. Pure.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._config import Options, check_options, split_arguments
from .._sources import Source, parse_source

__all__ = ["SandboxSpec", "make_spec", "spec_from_arguments"]


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that defines one sandbox, validated. Build with ``make_spec``."""

    source: Source
    options: Options
    make_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short name for messages: the source as the user wrote it."""
        return str(self.source)

    def factory_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that make an equivalent single sandbox env (``EnvSpec.kwargs``)."""
        return {"source": self.label, **self.options.as_kwargs(), **self.make_kwargs}

    def rebuild(self, face: type, *, vector: bool) -> Any:
        """What unpickling calls to make an equivalent face: ``face(**every option)``.

        A ``functools.partial`` of the public class, so a pickle names only ``functools`` and
        ``rlmesh.numpy``.
        """
        kwargs = {**self.options.as_kwargs(vector=vector), **self.make_kwargs}
        kwargs["render_mode"] = self.options.render_mode
        return functools.partial(face, self.label, **kwargs)


def make_spec(
    source: str, *, make_kwargs: Mapping[str, Any] | None = None, **options: Any
) -> SandboxSpec:
    """Parse ``source``, validate ``options`` and gate the source on them.

    Raises ``ValueError``/``TypeError`` naming what is wrong, before anything starts.
    """
    parsed = parse_source(source)
    checked = check_options(options)
    kwargs = dict(make_kwargs or {})
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(f"environment keyword names must be str, got {key!r}")
    parsed.check(checked)
    return SandboxSpec(parsed, checked, kwargs)


def spec_from_arguments(source: str, arguments: Mapping[str, Any], *, vector: bool) -> SandboxSpec:
    """``make_spec`` from a face's ``**options`` (sandbox options and env keyword arguments)."""
    options, env_kwargs = split_arguments(arguments, vector=vector)
    return make_spec(source, make_kwargs=env_kwargs, **options)
