"""Hugging Face EnvHub repositories: ``hf://org/repo[@sha][:suite[/task]]``.

Parsing and the two gates (a full-sha pin unless ``allow_unpinned_hf``, and
``trust_remote_code``) are here; downloading and making EnvHub envs are not built yet, so
``resolve`` says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._config import Options, Resolved

__all__ = ["HubSource", "parse_hf"]

_HF_NAME = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?"
_HF = re.compile(
    rf"^(?P<repo>{_HF_NAME}/{_HF_NAME})(?:@(?P<rev>[^:@/\s]+))?"
    r"(?::(?P<suite>[\w.-]+)(?:/(?P<task>[\w.-]+))?)?$"
)
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face EnvHub repository."""

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

    def check(self, options: Options) -> None:
        """The pin and trust gates; ``ValueError`` that says how to pass them."""
        if not self.pinned and not options.allow_unpinned_hf:
            raise ValueError(
                f"{str(self)!r} is not pinned to a full commit sha; pin it as "
                f"'hf://{self.repo}@<40-hex-sha>...' for reproducible runs, or pass "
                "allow_unpinned_hf=True"
            )
        if not options.trust_remote_code:
            where = f"at {self.revision}" if self.revision else "(unpinned)"
            raise ValueError(
                f"{str(self)!r} runs Python code from the repository; pass "
                f"trust_remote_code=True after reviewing the repository {self.repo} {where}"
            )

    def resolve(self, options: Options) -> Resolved:
        raise NotImplementedError(
            f"{str(self)!r}: Hugging Face EnvHub sources are not supported yet; use a Gymnasium id"
        )


def parse_hf(source: str, rest: str) -> HubSource:
    match = _HF.match(rest)
    if not match:
        raise ValueError(
            f"{source!r} is not a valid EnvHub source; expected "
            "'hf://org/repo[@<full-commit-sha>][:suite[/task]]'"
        )
    return HubSource(match["repo"], match["rev"], match["suite"], match["task"])
