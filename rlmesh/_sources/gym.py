"""Gymnasium registry ids: ``CartPole-v1``, ``gym://CartPole-v1``, ``ALE/Pong-v5``, ``mod:Id``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._config import Options, Resolved

__all__ = ["GymSource", "parse_gym"]

# Optional "module:" prefix, optional "Namespace/", name, optional "-vN".
_MODULE = r"[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*"
_GYM_ID = re.compile(rf"^(?:(?P<module>{_MODULE}):)?(?:(?P<ns>[\w.-]+)/)?(?P<name>[\w.-]+)$")


@dataclass(frozen=True)
class GymSource:
    """A Gymnasium registry id, made with ``gymnasium.make`` inside the sandbox."""

    env_id: str

    def __str__(self) -> str:
        return self.env_id

    def check(self, options: Options) -> None:
        """Gymnasium ids need no gate: the code that runs is what ``packages`` installs."""

    def resolve(self, options: Options) -> Resolved:
        """What the worker makes; a registry id needs nothing beyond ``packages``."""
        return Resolved({"kind": "gym", "id": self.env_id})


def parse_gym(source: str, rest: str) -> GymSource:
    match = _GYM_ID.match(rest)
    if not match or not re.search(r"[A-Za-z0-9]", match.group("name")):
        raise ValueError(
            f"{source!r} is not a valid Gymnasium id; expected forms like 'CartPole-v1', "
            "'gym://CartPole-v1', 'ALE/Pong-v5' or 'my_package.envs:MyEnv-v0'"
        )
    return GymSource(rest)
