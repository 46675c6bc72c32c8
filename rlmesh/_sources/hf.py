"""Hugging Face EnvHub repositories: ``hf://org/repo[@revision][:selector]``.

``selector`` is ``suite[/task]`` (pick from what ``make_env`` returns) or a file path ending in
``.py`` (the entry file, LeRobot's own form); without one the entry file is ``env.py`` and a
lone suite and task are picked automatically.

Two gates before anything is downloaded: ``trust_remote_code=True`` (the repository's Python
runs in the sandbox), and a full 40-hex commit sha unless ``allow_unpinned_hf=True``.
``resolve`` downloads the whole snapshot on the host with huggingface_hub (which honours
``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and tokens, and shows its own progress),
resolves a branch or tag to its commit, and reads the repository's requirements
(``requirements.txt``, else ``pyproject.toml``'s ``[project] dependencies``), which the sandbox
installs beside ``packages``. The worker imports the entry file with the snapshot root on
``sys.path`` (``rlmesh._worker.make``).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._config import Options, Resolved

__all__ = ["HubSource", "parse_hf"]

log = logging.getLogger("rlmesh.hf")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_SELECTOR_PART = re.compile(r"^[\w.-]+$")
REPO_RULE = (
    "a repo id is exactly 'org/name': two parts of letters, digits, '.', '_' and '-', each "
    "starting with a letter or digit, with no '..' and no '--'"
)
DEFAULT_ENTRY = "env.py"
HUB_PROBE_WAIT = 3.0  # seconds for a connection to the Hub before it counts as unreachable
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face EnvHub repository.

    Attributes:
        repo: ``org/name``.
        revision: A commit sha, a branch or a tag; ``None`` for the default branch.
        suite: The suite to select (``None``: the only one).
        task: The task to select within the suite (``None``: the only one).
        entry: The entry file, relative to the repository root.
    """

    repo: str
    revision: str | None = None
    suite: str | None = None
    task: str | None = None
    entry: str = DEFAULT_ENTRY

    def __str__(self) -> str:
        text = f"hf://{self.repo}"
        if self.revision:
            text += f"@{self.revision}"
        if self.entry != DEFAULT_ENTRY:
            text += f":{self.entry}"
        elif self.suite:
            text += f":{self.suite}"
            if self.task:
                text += f"/{self.task}"
        return text

    @property
    def pinned(self) -> bool:
        return self.revision is not None and bool(_FULL_SHA.match(self.revision))

    def _review_url(self) -> str:
        return f"https://huggingface.co/{self.repo}/tree/{self.revision or 'main'}"

    def check(self, options: Options) -> None:
        """The trust and pin gates; ``ValueError`` that says what would run and how to pass."""
        if not options.trust_remote_code:
            raise ValueError(
                f"{str(self)!r} runs Python code from the Hugging Face repository {self.repo} "
                f"({self.entry} and its make_env(), inside the sandbox); pass "
                f"trust_remote_code=True only after reviewing it at {self._review_url()}"
                + ("" if self.pinned else f" and pinning the reviewed commit as "
                   f"'hf://{self.repo}@<40-hex-sha>...'")
            )  # fmt: skip
        if not self.pinned and not options.allow_unpinned_hf:
            got = f"revision {self.revision!r}" if self.revision else "no revision"
            raise ValueError(
                f"{str(self)!r} has {got}, so it is not pinned to a full commit sha and what "
                f"runs can change under you; pin it as 'hf://{self.repo}@<40-hex-sha>...' (the "
                "commit you reviewed), or pass allow_unpinned_hf=True to resolve the branch or "
                "tag at start"
            )

    def resolve(self, options: Options) -> Resolved:
        """Download the snapshot, resolve the commit, read the requirements (host I/O)."""
        root = _download(self)
        commit = root.name
        if not self.pinned:
            log.warning("%s resolved to commit %s (pin it for reproducible runs)", self, commit)
        entry = root / self.entry
        if not entry.is_file():
            found = sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))[:20]
            raise ValueError(
                f"{str(self)!r}: the repository {self.repo} at {commit} has no entry file "
                f"{self.entry!r} (its Python files: {', '.join(found) or 'none'}); name the entry "
                f"file with 'hf://{self.repo}@{commit}:<file>.py'"
            )
        request: dict[str, Any] = {
            "kind": "hf",
            "repo": self.repo,
            "revision": commit,
            "root": str(root),
            "entry": self.entry,
            "suite": self.suite,
            "task": self.task,
        }
        resolved = str(HubSource(self.repo, commit, self.suite, self.task, self.entry))
        return Resolved(
            request,
            requirements=tuple(repo_requirements(root)),
            mounts=(str(root.parent.parent),),  # snapshots/<sha> and the blobs they link to
            label=resolved,
        )


def _download(source: HubSource) -> Path:
    """The snapshot folder of ``source`` in the Hugging Face cache (downloaded if needed)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{source.repo}@{source.revision or 'main'}"
    unreachable = _hub_unreachable()
    try:
        path = snapshot_download(
            source.repo, revision=source.revision, local_files_only=unreachable is not None
        )
    except LocalEntryNotFoundError as exc:
        why = f"the Hub is unreachable: {unreachable}" if unreachable else type(exc).__name__
        raise ValueError(
            f"{str(source)!r}: {where} is not in the Hugging Face cache and cannot be downloaded "
            f"now (offline, HF_HUB_OFFLINE=1, or the Hub is unreachable); download it once with "
            f"network access ('rlmesh sandbox prepare {source} --trust-remote-code'), or point "
            f"HF_HUB_CACHE at a cache that holds it. ({why}: {exc})"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
        raise ValueError(
            f"{str(source)!r}: downloading {where} failed: {type(exc).__name__} (check the repo "
            "id and revision; a private or gated repo needs a token: HF_TOKEN or "
            f"'hf auth login'). {str(exc).splitlines()[0]}"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise ValueError(
            f"{str(source)!r}: downloading {where} failed: {type(exc).__name__}: {exc}"
        ) from None
    return Path(str(path))


def _hub_unreachable() -> str | None:
    """Why a direct connection to the Hub's endpoint fails within ``HUB_PROBE_WAIT`` s, or
    ``None`` if it succeeds, if huggingface_hub is offline anyway, or if a proxy stands
    between (then huggingface_hub finds out itself).

    huggingface_hub retries an unreachable endpoint for about 23 s before it falls back to
    its cache (measured, 2.4), even for a pinned commit already there; with this look first,
    a cached snapshot starts at once and a missing one fails at once."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(name) for name in _PROXY_VARS):
        return None
    url = urlsplit(constants.ENDPOINT)
    if not url.hostname:
        return None
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_WAIT).close()
    except OSError as exc:
        return f"{url.scheme}://{url.netloc}: {exc}"
    return None


def repo_requirements(root: Path) -> list[str]:
    """The repository's own requirements: ``requirements.txt``, else ``pyproject.toml``."""
    text_file = root / "requirements.txt"
    if text_file.is_file():
        reqs = []
        for number, raw in enumerate(text_file.read_text().splitlines(), 1):
            line = raw.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("-"):
                raise ValueError(
                    f"{text_file.name} line {number}: {line!r}: pip options are not supported in "
                    "an EnvHub repository's requirements; list plain requirements, or pass what "
                    "you need in packages=[...]"
                )
            reqs.append(line)
        return reqs
    project = root / "pyproject.toml"
    if project.is_file():
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        data = tomllib.loads(project.read_text())
        deps = data.get("project", {}).get("dependencies", [])
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise ValueError(f"{project}: [project] dependencies must be a list of strings")
        return list(deps)
    return []


def parse_hf(source: str, rest: str) -> HubSource:
    """Parse what follows ``hf://``; ``ValueError`` with the grammar or the repo-id rule."""
    grammar = "expected 'hf://org/repo[@revision][:suite[/task] | :path/to/entry.py]'"
    head, sep, selector = rest.partition(":")
    repo, at, revision = head.partition("@")
    parts = repo.split("/")
    if (
        len(parts) != 2
        or not all(_NAME.match(part) for part in parts)
        or ".." in repo
        or "--" in repo
    ):
        raise ValueError(f"{source!r}: {repo!r} is not a valid repo id; {REPO_RULE}")
    if at and not _REVISION.match(revision):
        raise ValueError(f"{source!r}: {revision!r} is not a valid revision; {grammar}")
    if not sep:
        return HubSource(repo, revision or None)
    if selector.endswith(".py"):
        path = Path(selector)
        if path.is_absolute() or ".." in path.parts or not selector.strip():
            raise ValueError(f"{source!r}: the entry file must be a path inside the repository")
        return HubSource(repo, revision or None, entry=path.as_posix())
    suite, slash, task = selector.partition("/")
    if not _SELECTOR_PART.match(suite) or (slash and not _SELECTOR_PART.match(task)):
        raise ValueError(f"{source!r}: {selector!r} is not a valid selector; {grammar}")
    return HubSource(repo, revision or None, suite, task or None)
