"""Test environments for rlmesh: each misbehaves in one way real third-party envs do.

Importing this module registers them with Gymnasium (ids ``rlmesh_test/...``), the way
third-party packages register on import; the tests pass ``imports=["rlmesh_test_envs"]``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class CustomBox(spaces.Box):
    """A third-party subclass of a standard space: travels as its base class."""


class Weird(spaces.Space):
    """A space with no standard base: the host sees an opaque space."""

    def __init__(self) -> None:
        super().__init__(shape=(), dtype=np.int64)

    def sample(self, mask: Any = None, probability: Any = None) -> Any:
        return int(self.np_random.integers(10, 20))

    def contains(self, x: Any) -> bool:
        return isinstance(x, (int, np.integer)) and 10 <= int(x) < 20

    def __eq__(self, other: object) -> bool:  # as custom spaces should (vector envs compare)
        return isinstance(other, Weird)

    def __hash__(self) -> int:
        return hash(Weird)


class Unserialisable:
    def __repr__(self) -> str:
        return "<Unserialisable thing>"


class Evil:
    """Unpickling this would create a file: proof that code from the sandbox ran."""

    def __reduce__(self):
        return (open, ("/tmp/rlmesh-evil-was-unpickled", "w"))


def evil_pickle() -> bytes:
    """A pickle whose loading creates the marker file (protocol 2: no framing, stable)."""
    import pickle

    return pickle.dumps(Evil(), protocol=2)


def _pipes() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"):
                fds.append(fd)
        except OSError:
            continue
    return fds


def _probe(options: dict) -> dict:
    import socket

    result = {"pid": os.getpid(), "uid": os.getuid()}
    try:
        result["interfaces"] = sorted(os.listdir("/sys/class/net"))
    except OSError:
        result["interfaces"] = []
    for name, path in (("write_tmp", "/tmp/rlmesh-probe"), ("write_home", options.get("home")),
                       ("write_root", "/rlmesh-probe")):
        try:
            with open(path, "w") as handle:
                handle.write("x")
            result[name] = True
        except (OSError, TypeError):
            result[name] = False
    try:
        address = (options.get("host", "127.0.0.1"), int(options.get("port", 9)))
        socket.create_connection(address, timeout=2).close()
        result["network"] = True
    except OSError:
        result["network"] = False
    return result


def _deep_reply(depth: int) -> bytes:
    """A whole step-reply frame whose observation is a tuple nested ``depth`` deep, built
    by hand (ext type 3 is rlmesh's tuple): what a hostile env could forge."""
    import struct

    import msgpack

    data = msgpack.packb([])
    for _ in range(depth):
        data = msgpack.packb([msgpack.ExtType(3, data)])
    payload = msgpack.packb([101, msgpack.ExtType(3, data), 0.0, False, False, {}])
    return struct.pack("<I", len(payload)) + payload


class FaultyEnv(gym.Env):
    """Steps fine, or misbehaves according to ``mode``:

    raise       step() raises ValueError("boom at step N")
    exit        step() calls os._exit(3)
    print       step() prints to stdout, stderr and fd 1 directly
    messy       returns Python ints, an unserialisable info entry and CustomBox/Weird spaces
    tamper      reset() appends a comment to numpy/__init__.py in its own site-packages
    segv        step() dereferences NULL (SIGSEGV)
    sleep       step() sleeps ``factor`` seconds (default 600)
    spawn       reset() starts a grandchild process (info["grandchild"]); step() sleeps
    flood       step() writes 2 MB to stdout and to stderr
    garbage     step() writes junk into every pipe it has open (the protocol's included)
    bigframe    step() announces a 2 GiB frame on every pipe it has open
    alloc       step() allocates ``factor`` bytes (default 1 GiB)
    evil        step() returns an info value whose unpickling would run code
    evilbytes   step() returns the pickle of such a value, as bytes, in its info
    evilframe   step() writes that pickle as a whole frame into every pipe it has open
    probe       reset() reports what the sandbox lets it do (files, network, pid)
    spin        step() burns CPU for ``factor`` seconds (default 600)
    deep        step() returns an info holding a tuple nested ``factor`` deep (default 300)
    deepframe   step() writes a reply nested 200 tuples deep (938 bytes) into every pipe
    gil         step() runs a regular expression that backtracks for hours, holding the GIL
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, mode: str = "ok", render_mode: str | None = None, factor: Any = None):
        self.mode = mode
        self.render_mode = render_mode
        self.factor = factor
        self.observation_space = CustomBox(-10.0, 10.0, shape=(2,), dtype=np.float32)
        self.action_space = Weird() if mode == "messy" else spaces.Discrete(3)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        if self.mode == "spawn":
            import subprocess

            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            return np.zeros(2, np.float32), {"grandchild": child.pid}
        if self.mode == "probe":
            return np.zeros(2, np.float32), _probe(options or {})
        if self.mode == "tamper":
            with open(np.__file__, "a") as handle:
                handle.write("\n# tampered by a sandboxed env\n")
        return np.zeros(2, np.float32), {"options": options}

    def step(self, action: Any):
        self.t += 1
        if self.mode == "raise" and self.t >= 2:
            raise ValueError(f"boom at step {self.t}")
        if self.mode == "exit":
            print("about to exit", flush=True)
            sys.stderr.write("goodbye from the env\n")
            sys.stderr.flush()
            os._exit(3)
        if self.mode == "segv":
            import ctypes

            ctypes.string_at(0)
        if self.mode == "spin":
            import time

            end = time.process_time() + float(self.factor or 600)
            while time.process_time() < end:
                pass
        if self.mode in ("sleep", "spawn") and self.t > 0:
            import time

            print("sleeping in step", flush=True)
            time.sleep(float(self.factor or 600))
        if self.mode == "flood":
            chunk = "x" * 1023 + "\n"
            for _ in range(2048):
                sys.stdout.write(chunk)
                sys.stderr.write(chunk)
        if self.mode in ("garbage", "bigframe"):
            junk = b"\xff" * 64 if self.mode == "garbage" else b"\x00\x00\x00\x80"
            for fd in _pipes():
                with contextlib.suppress(OSError):
                    os.write(fd, junk)
        if self.mode == "alloc":
            hog = bytearray(int(self.factor or 1 << 30))
            hog[::4096] = b"x" * len(hog[::4096])
        if self.mode == "evilbytes":
            return np.zeros(2, np.float32), 0.0, False, False, {"pickle": evil_pickle()}
        if self.mode == "evilframe":
            data = evil_pickle()
            for fd in _pipes():
                with contextlib.suppress(OSError):
                    os.write(fd, len(data).to_bytes(4, "little") + data)
        if self.mode == "evil":
            return np.zeros(2, np.float32), 0.0, False, False, {"evil": Evil()}
        if self.mode == "deep":
            deep: Any = ()
            for _ in range(int(self.factor or 300)):
                deep = (deep,)
            return np.zeros(2, np.float32), 0.0, False, False, {"deep": deep, "t": self.t}
        if self.mode == "deepframe":
            frame = _deep_reply(200)
            for fd in _pipes():
                with contextlib.suppress(OSError):
                    os.write(fd, frame)
        if self.mode == "gil":
            import re

            print("holding the GIL", flush=True)
            re.match(r"(a+)+$", "a" * 64 + "b")  # exponential backtracking, all in C
        if self.mode == "print":
            print("hello from print", self.t)
            sys.stderr.write(f"hello from stderr {self.t}\n")
            os.write(1, b"raw write to fd 1\n")
        value = self.factor(self.t) if callable(self.factor) else float(self.t)
        obs = np.full(2, value, np.float32)
        info: dict[str, Any] = {"t": self.t, "action": action}
        if self.mode == "messy":
            info["thing"] = Unserialisable()
            return obs, 1, False, False, info  # a Python int reward
        return obs, 1.0, False, self.t >= 50, info

    def render(self):
        return f"t={self.t}\n"


gym.register("rlmesh_test/Faulty-v0", entry_point=FaultyEnv)


class ImageEnv(gym.Env):
    """Atari-sized frames (large enough for the shared-memory path); action 3 kills it."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 255, shape=(210, 160, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(4)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = int(self.np_random.integers(0, 100))
        return np.full((210, 160, 3), self.t % 256, np.uint8), {}

    def step(self, action: Any):
        if int(action) == 3:
            os._exit(4)
        self.t += 1
        frame = np.full((210, 160, 3), self.t % 256, np.uint8)
        frame[0, 0] = action
        return frame, float(action), False, self.t % 25 == 0, {"t": self.t}


gym.register("rlmesh_test/Image-v0", entry_point=ImageEnv)


def _memfds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:rlmesh-obs"):
                fds.append(int(name))
    return fds


class ShrinkingEnv(ImageEnv):
    """A hostile env: its steps shrink the shared-memory file the worker puts observations
    in, and if that worked, forge a reply that sends the host to read it (which kills a
    host that maps an unsealed file with SIGBUS)."""

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = super().step(action)
        outcomes = []
        for fd in _memfds():
            try:
                os.ftruncate(fd, 0)
            except OSError as exc:
                outcomes.append(f"refused: {exc.strerror}")
                continue
            outcomes.append("shrunk")
            from rlmesh._wire.codec import Encoder

            n = 2  # the test's num_envs
            zeros, no = np.zeros(n), np.zeros(n, bool)
            payload = Encoder(opaque=True).encode([103, None, zeros, no, no, {}])  # OK_SHM
            for pipe in _pipes():
                with contextlib.suppress(OSError):
                    os.write(pipe, len(payload).to_bytes(4, "little") + payload)
        return obs, reward, terminated, truncated, {**info, "shrink": ", ".join(outcomes)}


gym.register("rlmesh_test/Shrinking-v0", entry_point=ShrinkingEnv)


class BigEnv(gym.Env):
    """Observations of ``nbytes`` bytes of ``dtype``: for the host's memory per reply."""

    def __init__(self, nbytes: int = 1 << 20, dtype: str = "uint8") -> None:
        self.dtype = np.dtype(dtype)
        count = nbytes // self.dtype.itemsize
        self.observation_space = spaces.Box(0, 100, shape=(count,), dtype=self.dtype)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.full(self.observation_space.shape, 1, self.dtype), {}

    def step(self, action: Any):
        self.t += 1
        return np.full(self.observation_space.shape, 2, self.dtype), 1.0, False, False, {}


gym.register("rlmesh_test/Big-v0", entry_point=BigEnv)


class Int32Env(gym.Env):
    """Discrete spaces of dtype int32 (gymnasium >= 1.1), and int32 observations."""

    def __init__(self) -> None:
        self.observation_space = spaces.Discrete(5, start=1, dtype=np.int32)
        self.action_space = spaces.Discrete(3, dtype=np.int32)
        self.state = np.int32(1)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = self.observation_space.dtype.type(self.np_random.integers(1, 6))
        return self.state, {}

    def step(self, action: Any):
        assert self.action_space.contains(action), action
        self.state = self.observation_space.dtype.type(1 + (int(self.state) + int(action)) % 5)
        return self.state, 1.0, False, False, {}


gym.register("rlmesh_test/Int32-v0", entry_point=Int32Env)


class MissionSpace(spaces.Space):
    """Like MiniGrid's: strings from a fixed set, a space class with no standard base and
    the default repr (which holds a memory address)."""

    MISSIONS = ("get the red key", "open the door", "go to the goal")

    def __init__(self) -> None:
        super().__init__(shape=None, dtype=None)

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        return self.MISSIONS[int(self.np_random.integers(len(self.MISSIONS)))]

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and x in self.MISSIONS


class MissionEnv(gym.Env):
    """A MiniGrid-like env: a Dict observation with an image, a direction and a mission
    string in a custom space; Discrete actions."""

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (3, 3, 3), np.uint8),
                "direction": spaces.Discrete(4),
                "mission": MissionSpace(),
            }
        )
        self.action_space = spaces.Discrete(3)
        self.t = 0

    def _obs(self) -> dict:
        mission = MissionSpace.MISSIONS[self.t % 3]
        image = np.full((3, 3, 3), self.t % 256, np.uint8)
        return {"image": image, "direction": np.int64(self.t % 4), "mission": mission}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = int(self.np_random.integers(0, 3))
        return self._obs(), {}

    def step(self, action: Any):
        self.t += int(action) + 1
        return self._obs(), float(action), self.t > 40, False, {}


gym.register("rlmesh_test/Mission-v0", entry_point=MissionEnv)


def _kinds_space(kind: str) -> Any:
    if kind == "text":
        return spaces.Text(6, min_length=1, charset="abcdef")
    if kind == "sequence":
        return spaces.Sequence(spaces.Discrete(4))
    if kind == "graph":
        return spaces.Graph(spaces.Box(0, 1, (2,), np.float32), spaces.Discrete(3))
    if kind == "oneof":
        return spaces.OneOf((spaces.Discrete(2), spaces.Box(0, 1, (2,), np.float32)))
    if kind == "custom":
        return Weird()
    raise ValueError(kind)


class KindsEnv(gym.Env):
    """Observations that batch as tuples in a vector env (Text, Graph, Sequence, OneOf, a
    custom space, a mission string) and an action space of the kind ``action`` names."""

    def __init__(self, action: str = "text") -> None:
        self.observation_space = spaces.Dict(
            {
                "mission": spaces.Text(12, min_length=1, charset="abcdefgh "),
                "graph": _kinds_space("graph"),
                "seq": _kinds_space("sequence"),
                "choice": _kinds_space("oneof"),
                "custom": _kinds_space("custom"),
                "pos": spaces.Box(-1, 1, (2,), np.float32),
            }
        )
        self.action_space = _kinds_space(action)

    def _obs(self) -> dict:
        for space in self.observation_space.spaces.values():
            space.seed(int(self.np_random.integers(2**31)))
        return {key: space.sample() for key, space in self.observation_space.spaces.items()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action: Any):
        assert self.action_space.contains(action), action
        return self._obs(), 1.0, bool(self.np_random.random() < 0.1), False, {}


gym.register("rlmesh_test/Kinds-v0", entry_point=KindsEnv)
