"""What every public face shares that is not I/O: derived signatures and the async plumbing.

``public_face`` gives a face class its signature and "Args" from the option table and
reports it as ``rlmesh.numpy`` (so pickles and reprs never name a private module).
``Face`` is what every face shows of its core (state, restarts, pickling); ``AsyncFace`` adds
``create``/``async with`` for the async faces.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .._config import face_signature, options_doc
from .lifecycle import Lifecycle, State
from .single import EnvCore
from .spec import SandboxSpec
from .startup import SandboxInfo
from .vector import VectorCore

__all__ = ["AsyncFace", "Face", "SingleFace", "VectorFace", "public_face"]

PUBLIC_MODULE = "rlmesh.numpy"
_T = TypeVar("_T", bound=type)


def public_face(*, vector: bool) -> Callable[[_T], _T]:
    """Class decorator: signature and "Args" from the option table; ``rlmesh.numpy``."""

    def decorate(cls: _T) -> _T:
        signature = face_signature(vector=vector)
        init: Any = vars(cls)["__init__"]
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        init.__signature__ = signature.replace(
            parameters=[self_param, *signature.parameters.values()]
        )
        if "{options}" in (cls.__doc__ or ""):
            cls.__doc__ = (cls.__doc__ or "").replace(
                "{options}", options_doc(vector=vector).strip()
            )
        cls.__module__ = PUBLIC_MODULE
        cls._vector = vector  # type: ignore[attr-defined]
        return cls

    return decorate


class _Core(Protocol):
    life: Lifecycle
    spec: SandboxSpec


class Face:
    """What all four faces show of their core: ``state``, ``restarts``, and pickling."""

    _core: _Core
    _vector: bool = False  # set by public_face

    @property
    def state(self) -> State:
        """``created``, ``ready``, ``closed`` or ``broken``."""
        return self._core.life.state

    @property
    def restarts(self) -> int:
        """Sandboxes (or vector workers) that ``auto_restart`` replaced."""
        return self._core.life.restarts

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        """Pickling and ``deepcopy`` make an equivalent sandbox from the same options in the
        unpickling process (the env's state is not copied); see the guide."""
        return self._core.spec.rebuild(type(self), vector=self._vector), ()


class SingleFace(Face):
    """What both single-env faces show of their sandbox."""

    _core: EnvCore

    @property
    def sandbox(self) -> SandboxInfo:
        """What this sandbox is: requested and resolved source, backend, venv key, packages."""
        return self._core.started().info

    @property
    def sandbox_versions(self) -> dict[str, Any]:
        """Versions the sandbox reported in its handshake (rlmesh, python, gymnasium, numpy)."""
        return dict(self._core.started().versions)


class VectorFace(Face):
    """What both vector faces show of their workers."""

    _core: VectorCore

    @property
    def sandbox(self) -> SandboxInfo:
        """What the workers' sandbox is (they share one environment): requested and resolved
        source, backend, venv key, packages."""
        return self._core.started().sandboxes[0].info

    @property
    def pids(self) -> list[int | None]:
        """The worker processes' ids (empty before the start)."""
        return [s.child.pid for s in self._core.sandboxes]


_Face = TypeVar("_Face", bound="AsyncFace")


class AsyncFace(Face):
    """``create`` and ``async with`` for the async faces (they define ``start``/``aclose``)."""

    _life: Lifecycle

    def __init__(self, source: str, **options: Any) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    @classmethod
    async def create(cls: type[_Face], source: str, **options: Any) -> _Face:
        """Build (or reuse) the sandbox and start it; takes the constructor's options."""
        env = cls(source, **options)
        await env.start()
        return env

    async def __aenter__(self: _Face) -> _Face:
        if self._life.state is State.CREATED:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
