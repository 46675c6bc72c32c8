"""EnvHub fixture repositories, written into a real Hugging Face cache layout.

The Hub is out of reach here, so the tests write the repositories the way huggingface_hub
caches them (``models--org--name/{refs,snapshots,blobs}``, snapshot files as relative
symlinks to content-addressed blobs) and the real huggingface_hub reads them back with
``HF_HUB_OFFLINE=1`` (set for the whole session in ``conftest.py``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CARTPOLE_ENV = '''
import gymnasium as gym


def make_env(n_envs: int = 1, use_async_envs: bool = False):
    """LeRobot's shape: {suite: {task id: VectorEnv}}."""
    asynchronous = use_async_envs and n_envs > 1
    vector = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    return {"cartpole_suite": {0: vector([lambda: gym.make("CartPole-v1")] * n_envs)}}
'''

MULTI_SUITE_ENV = '''
import gymnasium as gym


def make_env(n_envs: int = 1, use_async_envs: bool = False):
    def vec(env_id):
        return gym.vector.SyncVectorEnv([lambda: gym.make(env_id)] * n_envs)

    return {
        "classic": {0: vec("CartPole-v1"), 1: vec("MountainCar-v0")},
        "toy": {0: vec("FrozenLake-v1")},
    }
'''

WITH_REQUIREMENTS_ENV = '''
import gymnasium as gym
import six  # from requirements.txt

from helpers import horizon  # a sibling module of the entry file


def make_env(**kwargs):
    assert six.PY3
    return gym.make("CartPole-v1", max_episode_steps=horizon(), **kwargs)
'''

FILE_ENTRY_ENV = '''
import gymnasium as gym


def make_env(n_envs=1, use_async_envs=False):
    return gym.make("Pendulum-v1")
'''

REPOS: dict[str, dict[str, str]] = {
    "lerobot/cartpole-env": {"env.py": CARTPOLE_ENV, "README.md": "# CartPole demo\n"},
    "rlmesh-test/multi-suite": {"env.py": MULTI_SUITE_ENV},
    "rlmesh-test/with-requirements": {
        "env.py": WITH_REQUIREMENTS_ENV,
        "helpers.py": "def horizon():\n    return 7\n",
        "requirements.txt": "# what env.py needs\nsix>=1.16\n",
    },
    "rlmesh-test/file-entry": {"envs/my_env.py": FILE_ENTRY_ENV},
    "rlmesh-test/no-entry": {"other.py": "X = 1\n"},
    "rlmesh-test/no-factory": {"env.py": "def make(): pass\n"},
    "rlmesh-test/bad-return": {"env.py": "def make_env(n_envs=1):\n    return 42\n"},
    "rlmesh-test/vector-only": {
        "env.py": (
            "import gymnasium as gym\n\n\ndef make_env(n_envs=1, use_async_envs=False):\n"
            "    return gym.vector.SyncVectorEnv([lambda: gym.make('CartPole-v1')] * 2)\n"
        )
    },
}


def add_repo(cache: Path, repo_id: str, files: dict[str, str], *, branch: str = "main") -> str:
    """Write ``files`` as one commit of ``repo_id`` on ``branch``; return the commit sha."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    listing = "".join(f"{path}\0{text}\0" for path, text in sorted(files.items()))
    commit = hashlib.sha1(f"{repo_id}\0{listing}".encode()).hexdigest()
    for path, text in files.items():
        data = text.encode()
        blob = folder / "blobs" / hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / branch).write_text(commit)
    return commit


def write_all(cache: Path) -> dict[str, str]:
    """Every fixture repository into ``cache``; repo id -> commit sha."""
    return {repo: add_repo(cache, repo, files) for repo, files in REPOS.items()}
