"""``Worker``: serves one environment over the protocol, as a loop over read and write.

``Worker.serve`` takes two callables, ``read(n)`` and ``write(bytes)``, so tests can run it
in-process over a socket pair (coverage cannot follow it into a uv child). The envs are made
by ``make`` (one maker per source kind); the process around it is ``main``'s.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .._version import __version__
from .._wire import protocol as P
from .._wire.codec import Encoder, unpack
from .make import make_env

__all__ = ["Worker"]


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
        self._vector = False  # a vector env: CALL/GET_ATTR/SET_ATTR answer per sub-env
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
        self._vector = request.get("vector") is not None
        self.env, description = make_env(request)
        return [P.OK, description]

    def _reset(self, seed: Any, options: Any) -> list[Any]:
        obs, info = self.env.reset(seed=seed, options=options)
        reply = [P.OK, obs, info]
        return reply if self._shm is None else self._via_shm(reply)

    def _shm_setup(self, nbytes: int) -> list[Any]:
        """Put batched observations in a shared memfd from now on; reply with its fd.

        The host maps the same memory through ``/proc/<our pid>/fd/<fd>``. A memfd has no
        name in any filesystem: nothing can leak when either side dies.
        """
        import fcntl
        import mmap

        import numpy

        if nbytes == 0:  # the host could not map it: back to the pipe
            self._shm = None
            return [P.OK, None]
        space = self.env.observation_space
        shape, dtype = tuple(space.shape), numpy.dtype(space.dtype)
        if int(numpy.prod(shape)) * dtype.itemsize != nbytes:
            raise ValueError(f"observations take {shape} x {dtype}, not {nbytes} bytes")
        fd = os.memfd_create("rlmesh-obs", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, nbytes)
        # Sealed at its size: the env shares this process and could otherwise shrink the
        # file under the host's mapping, and the host's next read of it would die of SIGBUS.
        # The host refuses a memfd without these seals.
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, P.SHM_SEALS)
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

    def _space(self, which: str, path: Sequence[Any]) -> Any:
        """The env's ``which`` space, or the one ``path`` leads to inside it (Dict keys,
        Tuple and OneOf indices)."""
        if which not in ("action", "observation"):
            raise ValueError(f"unknown space {which!r}")
        space = getattr(self.env, f"{which}_space")
        for key in path:
            space = space.spaces[key]
        return space

    def _sample(self, which: str, path: Sequence[Any] = ()) -> list[Any]:
        return [P.OK, self._space(which, path).sample()]

    def _contains(self, which: str, value: Any, path: Sequence[Any] = ()) -> list[Any]:
        return [P.OK, bool(self._space(which, path).contains(value))]

    def _call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> list[Any]:
        if self._vector:
            return [P.OK, self.env.call(name, *args, **kwargs)]
        attribute = _wrapper_attr(self.env, name)
        return [P.OK, attribute(*args, **kwargs) if callable(attribute) else attribute]

    def _get_attr(self, name: str) -> list[Any]:
        if self._vector:
            return [P.OK, self.env.get_attr(name)]
        return [P.OK, _wrapper_attr(self.env, name)]

    def _set_attr(self, name: str, values: Any) -> list[Any]:
        if self._vector:
            self.env.set_attr(name, values)
        elif hasattr(self.env, "set_wrapper_attr"):  # gymnasium >= 1.0
            self.env.set_wrapper_attr(name, values)
        else:
            setattr(self.env.unwrapped, name, values)
        return [P.OK]

    def _close(self) -> list[Any]:
        self._closing = True
        self._close_env()
        return [P.OK]

    def _close_env(self) -> None:
        env, self.env = self.env, None
        if env is not None:
            env.close()


def _wrapper_attr(env: Any, name: str) -> Any:
    """An attribute of the env or the first of its wrappers that has it (``get_wrapper_attr``
    where gymnasium has it)."""
    if hasattr(env, "get_wrapper_attr"):
        return env.get_wrapper_attr(name)
    return getattr(env.unwrapped, name)


OUT_OF_MEMORY_EXIT = 137  # what the kernel's OOM killer leaves (128 + SIGKILL)


def _out_of_memory() -> NoReturn:
    """A sandbox that ran out of memory may be half-updated: end it, as the OOM killer would."""
    with contextlib.suppress(Exception):
        os.write(2, b"rlmesh sandbox: the environment ran out of memory (MemoryError); exiting\n")
    os._exit(OUT_OF_MEMORY_EXIT)
