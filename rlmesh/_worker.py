"""The sandbox side: ``python -m rlmesh._worker`` serves one environment over the protocol.

Run by the host inside the sandbox's virtualenv. It imports only the standard library, numpy,
gymnasium, msgpack, cloudpickle (to read what the host pickled) and rlmesh's stdlib-only
modules, so
installing rlmesh into a sandbox brings none of the host-side dependencies.

Two ways to get the protocol streams:

- ``--fds R W``: dedicated pipe fds passed by the host (the venv backend). The child's own
  stdout and stderr are separate pipes that env code may flood or print to freely.
- ``--stdio``: stdin/stdout carry the protocol (for backends that forward only stdio, such as
  containers). The worker moves them to private fds at once and points fd 1 at stderr, so
  env code that prints cannot reach the protocol stream.

``Worker.serve`` is a loop over two callables (read and write), so tests can also run it
in-process over a socket pair.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from . import _protocol as P
from ._codec import Encoder, unpack
from ._spaces import space_to_data
from ._spin import Spinner
from ._version import __version__

__all__ = ["Worker", "main"]

_SPEC_FIELDS = (
    "id",
    "reward_threshold",
    "nondeterministic",
    "max_episode_steps",
    "order_enforce",
    "disable_env_checker",
)


def _versions() -> dict[str, Any]:
    import gymnasium
    import msgpack
    import numpy

    return {
        "protocol": P.PROTOCOL_VERSION,
        "rlmesh": __version__,
        "python": platform.python_version(),
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
        "msgpack": ".".join(str(part) for part in msgpack.version),
        "pid": os.getpid(),
        "executable": sys.executable,
    }


def _spec_data(env: Any) -> dict[str, Any] | None:
    spec = getattr(env, "spec", None)
    if spec is None:
        return None
    data = {name: getattr(spec, name, None) for name in _SPEC_FIELDS}
    entry = getattr(spec, "entry_point", None)
    data["entry_point"] = entry if isinstance(entry, str) or entry is None else repr(entry)
    return data


class Worker:
    """Serves one environment. ``read(n)`` returns up to n bytes (b'' at EOF)."""

    def __init__(self, read: Callable[[int], bytes], write: Callable[[bytes], None]) -> None:
        self._read = read
        self._write = write
        self._encoder = Encoder(opaque=True)
        self._pack = self._encoder.pack_fast
        self._reset_packer = self._encoder.reset
        self.env: Any = None
        self._handlers: dict[int, Callable[..., list[Any]]] = {
            P.MAKE: self._make,
            P.RESET: self._reset,
            P.STEP: self._step,
            P.RENDER: self._render,
            P.CLOSE: self._close,
            P.SPACE_SAMPLE: self._sample,
            P.SPACE_CONTAINS: self._contains,
            P.CALL: self._call,
            P.GET_ATTR: self._get_attr,
            P.SET_ATTR: self._set_attr,
            P.SHM_SETUP: self._shm_setup,
        }
        self._shm: Any = None  # a numpy view of the shared observation buffer, once set up
        self._closing = False

    def _send(self, message: list[Any]) -> None:
        self._send_payload(self._encoder.encode(message))

    def _send_payload(self, payload: bytes) -> None:
        if len(payload) < 65536:
            self._write(P.HEADER.pack(len(payload)) + payload)
        else:  # no concatenated copy of a large reply
            self._write(P.HEADER.pack(len(payload)))
            self._write(payload)

    def _payload(self, reply: list[Any]) -> bytes:
        """The payload of a reply; that of an error reply if the reply cannot be sent."""
        try:
            out = self._pack(reply)
        except Exception:
            self._reset_packer()
            try:  # the full encoder: ints over 64 bits, values sent as RemoteObject
                out = self._encoder.encode(reply)
            except Exception as exc:  # an unhashable key, say
                out = self._encoder.encode(self._error(exc))
        if len(out) > P.MAX_FRAME:
            out = self._encoder.encode(self._error(ValueError(P.frame_too_large(len(out)))))
        return out  # type: ignore[no-any-return]

    def serve(self) -> None:
        """Say HELLO, then answer requests until CLOSE or the host goes away."""
        self._write(P.MAGIC)
        self._send([P.HELLO, _versions()])
        reader = P.FrameReader(expect_magic=False)
        whole, feed = reader.whole, reader.feed
        read, write, handle, encode = self._read, self._write, self._handle, self._payload
        array, packed, step, ok = self._encoder.array, P.step_packer(self._encoder), P.STEP, P.OK
        # Whole frames of a STEP with an int action -> the action: a read that holds just
        # one of them skips framing and decoding.
        actions: dict[bytes, int] = {}
        aligned = True  # no partial frame is buffered: a read starts with a frame
        while not self._closing:
            data = read(1 << 16)
            if not data:
                break  # the host closed the pipe: it is gone or done with us
            action = actions.get(data) if aligned else None
            if action is not None:
                payloads: Any = (None,)
            else:
                payload = whole(data)
                if payload is None:
                    payloads, key = feed(data), None
                    aligned = not reader.buffered
                else:
                    payloads, key = (payload,), data
            for payload in payloads:
                if payload is not None:
                    message = unpack(payload)
                    if message[0] != step or len(message) != 2 or self.env is None:
                        self._send_payload(encode(handle(message)))
                        continue
                    action = message[1]
                    if type(action) is int and key is not None and len(actions) < 256:
                        actions[key] = action
                try:  # the hot path, inlined
                    obs, reward, terminated, truncated, info = self.env.step(action)
                    if self._shm is None:
                        frame = packed(obs, reward, terminated, truncated, info)
                        if frame is not None and len(frame) <= P.MAX_FRAME:
                            write(frame)
                            continue
                        reply = [ok, array(obs), reward, terminated, truncated, info]
                    else:
                        reply = self._via_shm([ok, obs, reward, terminated, truncated, info])
                except MemoryError:
                    _out_of_memory()
                except Exception as exc:
                    reply = self._error(exc)
                self._send_payload(encode(reply))
        if self.env is not None and not self._closing:
            self._close_env()

    @property
    def closed_by_host(self) -> bool:
        """Whether serving ended with the host's CLOSE (rather than the host vanishing)."""
        return self._closing

    def _handle(self, message: list[Any]) -> list[Any]:
        try:
            kind = message[0]
            if kind == P.PICKLED:
                import cloudpickle  # host -> child only: the child may unpickle host bytes

                message = cloudpickle.loads(message[1])
                kind = message[0]
            return self._handlers[kind](*message[1:])
        except MemoryError:
            _out_of_memory()
        except Exception as exc:
            return self._error(exc)

    @staticmethod
    def _error(exc: BaseException) -> list[Any]:
        return [
            P.ERROR,
            f"{type(exc).__module__}.{type(exc).__qualname__}",
            str(exc),
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        ]

    def _make(self, request: dict[str, Any]) -> list[Any]:
        for name in request.get("imports", ()):
            importlib.import_module(name)
        source = request["source"]
        kwargs = dict(request.get("kwargs") or {})
        if request.get("render_mode") is not None:
            kwargs["render_mode"] = request["render_mode"]
        if source["kind"] != "gym":
            raise NotImplementedError(f"sources of kind {source['kind']!r} are not supported")
        import gymnasium

        vector = request.get("vector")
        if vector is None:
            self.env = gymnasium.make(source["id"], **kwargs)
            env = self.env
            return [
                P.OK,
                {
                    "observation_space": space_to_data(env.observation_space),
                    "action_space": space_to_data(env.action_space),
                    "metadata": dict(getattr(env, "metadata", {}) or {}),
                    "render_mode": getattr(env, "render_mode", None),
                    "spec": _spec_data(env),
                },
            ]
        return self._make_vector(gymnasium, source["id"], vector, kwargs)

    def _make_vector(
        self, gymnasium: Any, env_id: str, vector: dict[str, Any], kwargs: dict[str, Any]
    ) -> list[Any]:
        vector_kwargs: dict[str, Any] = {}
        if vector.get("autoreset_mode") is not None:
            from gymnasium.vector import AutoresetMode  # gymnasium >= 1.1

            vector_kwargs["autoreset_mode"] = AutoresetMode(vector["autoreset_mode"])
        self.env = gymnasium.make_vec(
            env_id,
            num_envs=vector["num_envs"],
            vectorization_mode=vector.get("vectorization_mode") or "sync",
            vector_kwargs=vector_kwargs,
            **kwargs,
        )
        env = self.env
        metadata = dict(getattr(env, "metadata", {}) or {})
        mode = metadata.get("autoreset_mode")
        if mode is not None:  # an enum: travels as its value
            metadata["autoreset_mode"] = getattr(mode, "value", str(mode))
        return [
            P.OK,
            {
                "observation_space": space_to_data(env.single_observation_space),
                "action_space": space_to_data(env.single_action_space),
                "metadata": metadata,
                "render_mode": getattr(env, "render_mode", None),
                "spec": _spec_data(env),
                "num_envs": int(env.num_envs),
            },
        ]

    def _reset(self, seed: Any, options: Any) -> list[Any]:
        obs, info = self.env.reset(seed=seed, options=options)
        reply = [P.OK, obs, info]
        return reply if self._shm is None else self._via_shm(reply)

    def _shm_setup(self, nbytes: int) -> list[Any]:
        """Put batched observations in a shared memfd from now on; reply with its fd.

        The host maps the same memory through ``/proc/<our pid>/fd/<fd>``. A memfd has no
        name in any filesystem: nothing can leak when either side dies.
        """
        import mmap

        import numpy

        if nbytes == 0:  # the host could not map it: back to the pipe
            self._shm = None
            return [P.OK, None]
        space = self.env.observation_space
        shape, dtype = tuple(space.shape), numpy.dtype(space.dtype)
        if int(numpy.prod(shape)) * dtype.itemsize != nbytes:
            raise ValueError(f"observations take {shape} x {dtype}, not {nbytes} bytes")
        fd = os.memfd_create("rlmesh-obs", os.MFD_CLOEXEC)
        os.ftruncate(fd, nbytes)
        self._shm_map = mmap.mmap(fd, nbytes)
        self._shm = numpy.ndarray(shape, dtype=dtype, buffer=self._shm_map)
        self._shm_fd = fd
        return [P.OK, fd]

    def _via_shm(self, reply: list[Any]) -> list[Any]:
        obs, view = reply[1], self._shm
        if type(obs).__name__ == "ndarray" and obs.shape == view.shape and obs.dtype == view.dtype:
            view[...] = obs
            reply[0], reply[1] = P.OK_SHM, None
        return reply

    def _step(self, action: Any) -> list[Any]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return [P.OK, obs, reward, terminated, truncated, info]

    def _render(self) -> list[Any]:
        return [P.OK, self.env.render()]

    def _space(self, which: str) -> Any:
        if which not in ("action", "observation"):
            raise ValueError(f"unknown space {which!r}")
        return getattr(self.env, f"{which}_space")

    def _sample(self, which: str) -> list[Any]:
        return [P.OK, self._space(which).sample()]

    def _contains(self, which: str, value: Any) -> list[Any]:
        return [P.OK, bool(self._space(which).contains(value))]

    def _call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> list[Any]:
        return [P.OK, self.env.call(name, *args, **kwargs)]

    def _get_attr(self, name: str) -> list[Any]:
        return [P.OK, self.env.get_attr(name)]

    def _set_attr(self, name: str, values: Any) -> list[Any]:
        self.env.set_attr(name, values)
        return [P.OK]

    def _close(self) -> list[Any]:
        self._closing = True
        self._close_env()
        return [P.OK]

    def _close_env(self) -> None:
        env, self.env = self.env, None
        if env is not None:
            env.close()


OUT_OF_MEMORY_EXIT = 137  # what the kernel's OOM killer leaves (128 + SIGKILL)


def _out_of_memory() -> NoReturn:
    """A sandbox that ran out of memory may be half-updated: end it, as the OOM killer would."""
    with contextlib.suppress(Exception):
        os.write(2, b"rlmesh sandbox: the environment ran out of memory (MemoryError); exiting\n")
    os._exit(OUT_OF_MEMORY_EXIT)


def _fd_reader(fd: int) -> Callable[[int], bytes]:
    """Reads with a short adaptive spin first (see ``_spin``), then a blocking wait."""
    os.set_blocking(fd, False)
    spin = Spinner(fd).read
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def read(size: int) -> bytes:
        data = spin(size)
        if data is not None:
            return data
        while True:
            poller.poll()
            try:
                return os.read(fd, size)
            except (BlockingIOError, InterruptedError):
                continue

    return read


def _fd_writer(fd: int) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        sent = os.write(fd, data)
        if sent != len(data):  # a pipe takes up to its buffer size at once
            view = memoryview(data)[sent:]
            while view:
                view = view[os.write(fd, view) :]

    return write


def _close_quietly(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _watch_host(fd: int) -> None:
    """Wait for the host's end of the request pipe to close, then end our process group.

    Runs in a daemon thread, so it fires even while the env is busy in a long step: a host
    that dies (even by SIGKILL) takes this sandbox and every process the env started with it.
    """
    poller = select.poll()
    poller.register(fd, 0)  # no events asked: poll reports only hang-up and errors
    while True:
        try:
            if poller.poll():
                break
        except InterruptedError:
            continue
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGKILL)  # us too: the host's stop() does the same on a close


def _set_limits(memory: int | None, cpu_seconds: int | None) -> None:
    import resource

    if memory is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if cpu_seconds is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))


def _parse(args: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rlmesh._worker")
    streams = parser.add_mutually_exclusive_group(required=True)
    streams.add_argument("--fds", nargs=2, type=int, metavar=("READ_FD", "WRITE_FD"))
    streams.add_argument("--stdio", action="store_true")
    parser.add_argument("--max-memory", type=int, default=None, help="bytes (RLIMIT_AS)")
    parser.add_argument("--max-cpu-seconds", type=int, default=None, help="RLIMIT_CPU")
    return parser.parse_args(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the sandbox process."""
    options = _parse(sys.argv[1:] if argv is None else argv)
    if options.stdio:
        rfd, wfd = os.dup(0), os.dup(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
    else:
        rfd, wfd = options.fds
    _set_limits(options.max_memory, options.max_cpu_seconds)
    threading.Thread(target=_watch_host, args=(rfd,), name="rlmesh-host-watch", daemon=True).start()
    os.set_inheritable(rfd, False)
    os.set_inheritable(wfd, False)
    # A child the env forks must not hold our protocol pipes open: the host detects our death
    # by end-of-file, which a lingering copy of the write end would delay forever.
    os.register_at_fork(after_in_child=lambda: _close_quietly(rfd, wfd))
    # The host drives us; a Ctrl-C at the terminal is the host's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    worker = Worker(_fd_reader(rfd), _fd_writer(wfd))
    with contextlib.suppress(BrokenPipeError):  # the host went away mid-reply
        worker.serve()
    if not worker.closed_by_host:  # the host is gone: take what the env started with us
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
