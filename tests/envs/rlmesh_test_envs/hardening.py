"""Environments for the process, fork and signal hardening tests (tests/test_hardening_process.py).

Importing this module registers them (ids ``rlmesh_hardening/...``); the tests pass
``imports=["rlmesh_test_envs.hardening"]``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

BIG_ACTION = 1 << 20  # float32s: a 4 MiB action, four times the host's 1 MiB pipe


class BigActionEnv(gym.Env):
    """Takes a 4 MiB action; its observation is the action's first element. With
    ``exit_after``, the sandbox exits (status 3) that many seconds after ``reset``."""

    def __init__(self, exit_after: float | None = None) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(BIG_ACTION,), dtype=np.float32)
        self.exit_after = exit_after

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.exit_after is not None:
            import threading

            threading.Timer(self.exit_after, os._exit, (3,)).start()
        return np.zeros(1, np.float32), {"pid": os.getpid()}

    def step(self, action: Any):
        return np.asarray(action[:1], np.float32), 0.0, False, False, {}


class SlowMakeEnv(gym.Env):
    """Says ``making <pid>`` on stderr, then takes ``seconds`` to be made."""

    def __init__(self, seconds: float = 600.0) -> None:
        sys.stderr.write(f"making {os.getpid()}\n")
        sys.stderr.flush()
        time.sleep(seconds)
        self.observation_space = spaces.Discrete(2)
        self.action_space = spaces.Discrete(2)


class DaemonEnv(gym.Env):
    """``reset()`` starts a daemon the classic way (fork, ``setsid``, fork again), which
    leaves the worker's process group; ``info["daemon"]`` is its pid."""

    def __init__(self) -> None:
        self.observation_space = spaces.Discrete(2)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        read, write = os.pipe()
        first = os.fork()
        if first == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(write, str(os.getpid()).encode())
                os.close(write)
                time.sleep(600)
            os._exit(0)
        os.close(write)
        os.waitpid(first, 0)
        daemon = int(os.read(read, 32))
        os.close(read)
        return 0, {"daemon": daemon}

    def step(self, action: Any):
        return 0, 0.0, False, False, {}


WORDS = [f"word-{i}" for i in range(16)]


class HashOrderEnv(gym.Env):
    """Its observation is the order in which a set of strings iterates (hash-seed dependent)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, len(WORDS), shape=(len(WORDS),), dtype=np.int64)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        order = [WORDS.index(word) for word in set(WORDS)]
        return np.array(order, np.int64), {"sys_path": list(sys.path)}

    def step(self, action: Any):
        return self.reset()[0], 0.0, False, False, {}


ESCAPES = (
    "plain text\tand a tab\n"
    "\x1b]52;c;cm0gLXJmIH4=\x07"  # OSC 52: put 'rm -rf ~' on the clipboard
    "\x1b[2J\x1b[31mred\x1b[0m\n"  # clear the screen, colours
    "\x9b31mC1 CSI\n"
    "bell\x07 backspace\x08 and \u202ereversed\u202c\n"
)


class EscapesEnv(gym.Env):
    """``step()`` prints terminal escape sequences (``ESCAPES``) to stdout and stderr;
    ``step(1)`` then exits (code 5) so the crash report shows them too."""

    def __init__(self) -> None:
        self.observation_space = spaces.Discrete(2)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action: Any):
        sys.stdout.write(ESCAPES)
        sys.stdout.flush()
        sys.stderr.write(ESCAPES)
        sys.stderr.flush()
        if action == 1:
            os._exit(5)
        return 0, 0.0, False, False, {}


gym.register("rlmesh_hardening/BigAction-v0", entry_point=BigActionEnv)
gym.register("rlmesh_hardening/SlowMake-v0", entry_point=SlowMakeEnv)
gym.register("rlmesh_hardening/Daemon-v0", entry_point=DaemonEnv)
gym.register("rlmesh_hardening/HashOrder-v0", entry_point=HashOrderEnv)
gym.register("rlmesh_hardening/Escapes-v0", entry_point=EscapesEnv)
