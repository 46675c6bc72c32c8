"""A griffe extension for the API reference: the faces' signatures and docstrings as imported.

rlmesh's faces get their signatures and the "Args" of their docstrings from the option table
when they are imported (``rlmesh._core.face.public_face``), so reading the source shows only
``(source, **options)`` and a ``{options}`` placeholder. This extension keeps griffe's reading
of the source for everything else and, for each class whose imported twin carries a derived
``__signature__``, takes the docstring and the signatures of ``__init__`` and ``create`` from
the imported class. Loaded by mkdocs.yml (``extensions``), used by ``nox -s docs``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import griffe


def _parameters(signature: inspect.Signature) -> griffe.Parameters:
    parameters = []
    for param in signature.parameters.values():
        annotation = param.annotation
        default = param.default
        parameters.append(
            griffe.Parameter(
                param.name,
                annotation=None if annotation is param.empty else str(annotation),
                kind=griffe.ParameterKind(param.kind.description),
                default=None if default is param.empty else repr(default),
            )
        )
    return griffe.Parameters(*parameters)


def _has_derived_signature(cls: type, name: str) -> bool:
    function = getattr(cls, name, None)
    function = getattr(function, "__func__", function)  # a classmethod's function
    return "__signature__" in getattr(function, "__dict__", {})


class FaceSignatures(griffe.Extension):
    """Signatures and docstrings of option-table classes, from the imported objects."""

    def on_class(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        try:
            live = getattr(importlib.import_module(cls.module.path), cls.name)
        except (ImportError, AttributeError):
            return
        derived = [name for name in ("__init__", "create") if _has_derived_signature(live, name)]
        if not derived:
            return
        source_doc = cls.docstring
        cls.docstring = griffe.Docstring(
            inspect.getdoc(live) or "",
            parent=cls,
            parser=source_doc.parser if source_doc else None,
            parser_options=source_doc.parser_options if source_doc else None,
        )
        for name in derived:
            member = cls.members.get(name)
            if isinstance(member, griffe.Function):
                member.parameters = _parameters(inspect.signature(getattr(live, name)))
