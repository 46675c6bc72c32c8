"""What both vector faces share: options, spaces, and request/reply shaping. No I/O.

A sandboxed vector env is ``num_workers`` sandbox processes, each running a Gymnasium vector
env (``gymnasium.make_vec``) of its share of ``num_envs``. One request per worker per call:
a step of the whole batch costs one round trip per worker, not one per sub-env.

Large Box observations (``SHM_MIN`` bytes or more per worker) skip the pipe: each worker
writes them into a memfd it shares with the host, and the reply says so (``OK_SHM``). A memfd
has no name in ``/dev/shm``, so a crash on either side leaks nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import weakref
from typing import Any

import numpy as np
from gymnasium.spaces import Box
from gymnasium.vector.utils import batch_space

from .._errors import RemoteEnvError, SandboxError
from .._wire import protocol as P
from .._wire.spaces import OpaqueSpace
from . import batch as _batch
from .lifecycle import Event, Lifecycle, State
from .spec import SandboxSpec
from .startup import Sandbox, reply_values

__all__ = ["VectorCore", "map_sealed", "worker_requests"]

SHM_MIN = 64 * 1024  # bytes of a worker's observation batch from which shared memory pays


_F_GET_SEALS = 1034  # Linux's fcntl command (fcntl.F_GET_SEALS from Python 3.8, Linux only)


def map_sealed(path: str, nbytes: int) -> mmap.mmap:
    """Map ``nbytes`` of the worker's memfd at ``path``, read-only.

    The env shares the worker's process, so it can reach the memfd too. Were the file shrunk
    under the mapping, the host's next read of it would die of SIGBUS: only a memfd sealed
    against shrinking and growing (``protocol.SHM_SEALS``) and of the right size is mapped;
    anything else is ``OSError`` (the caller then falls back to the pipe).
    """
    # O_NONBLOCK: what the path names is the env's to choose (a FIFO must not block us).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        try:
            seals = fcntl.fcntl(fd, _F_GET_SEALS)
        except OSError:  # not a memfd (or a kernel without seals)
            seals = 0
        if seals & P.SHM_SEALS != P.SHM_SEALS:
            raise OSError(f"the worker's shared memory is not sealed (seals {seals:#x})")
        size = os.fstat(fd).st_size
        if size != nbytes:
            raise OSError(f"the worker's shared memory holds {size} bytes, not {nbytes}")
        return mmap.mmap(fd, nbytes, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)  # the mapping outlives the fd


def worker_requests(spec: SandboxSpec) -> list[tuple[dict[str, Any], str]]:
    """The vector request and the label that start each worker of ``spec``."""
    options = spec.options
    sizes = _batch.shard_sizes(options.num_envs, options.num_workers)
    requests = []
    for index, size in enumerate(sizes):
        vector = {
            "num_envs": size,
            "vectorization_mode": options.vectorization_mode,
            "autoreset_mode": options.autoreset_mode,
        }
        label = spec.label if len(sizes) == 1 else f"{spec.label} [worker {index}/{len(sizes)}]"
        requests.append((vector, label))
    return requests


def _batched(space: Any, n: int) -> Any:
    try:
        return batch_space(space, n)
    except (TypeError, NotImplementedError, ValueError):
        if isinstance(space, OpaqueSpace):
            return OpaqueSpace(space.name, f"{n} x {space.description}")
        raise


ASYNC_ERROR = (
    "a sub-env raised in vectorization_mode='async', and Gymnasium's AsyncVectorEnv shuts "
    "down a sub-env that raised, so this vector env cannot go on; use "
    "vectorization_mode='sync' to keep going after the env's errors, or auto_restart=True to "
    "replace the worker at the next reset()"
)


class VectorCore:
    """What both vector faces share, without I/O: the lifecycle, the workers' static info,
    spaces and metadata, the split of requests and the join of replies, failure booking.

    Attributes:
        workers: Per worker, the vector request and label that start it.
        sandboxes: The started workers (empty before ``install``).
        dead: Workers stopped after a failure, for ``auto_restart``.
        at: The worker the current send or receive is talking to.
    """

    def __init__(self, spec: SandboxSpec, start_hint: str) -> None:
        self.spec = spec
        self.label = spec.label
        self.life = Lifecycle(spec.label, auto_restart=spec.options.auto_restart,
                              start_hint=start_hint)  # fmt: skip
        self.timeouts = spec.options.timeouts
        self.workers = worker_requests(spec)
        self.sizes: list[int] = [vector["num_envs"] for vector, _ in self.workers]
        self.ranges = _batch.bounds(self.sizes)
        self.num_envs = sum(self.sizes)
        self.encoder = P.RequestEncoder()
        self.sandboxes: list[Sandbox] = []
        self._finalizers: list[weakref.finalize[Any, Any]] = []
        self._last_obs: list[Any] = []  # per worker: observations of the last reply
        self._shm: list[Any] = [None] * len(self.sizes)  # per worker: (mmap, view) or None
        self.dead: set[int] = set()
        self.at = 0

    def install(self, owner: object, sandboxes: list[Sandbox]) -> None:
        """Take the started workers; ``owner`` is the face, whose collection kills them."""
        from gymnasium.vector import AutoresetMode

        self.sandboxes = sandboxes
        self._finalizers = [weakref.finalize(owner, s.child.abandon) for s in sandboxes]
        first = sandboxes[0]
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = _batched(first.observation_space, self.num_envs)
        self.action_space = _batched(first.action_space, self.num_envs)
        metadata = dict(first.metadata)
        if "autoreset_mode" in metadata:
            metadata["autoreset_mode"] = AutoresetMode(metadata["autoreset_mode"])
        self.metadata = metadata
        # As Gymnasium's vector envs have it (TorchRL reads it); a sandbox whose gymnasium
        # predates the attribute steps the way Gymnasium's default does.
        chosen = self.spec.options.autoreset_mode
        self.autoreset_mode = metadata.get("autoreset_mode") or AutoresetMode(
            chosen or AutoresetMode.NEXT_STEP.value
        )
        self.render_mode = first.render_mode
        self.life.fire(Event.STARTED)

    def started(self) -> VectorCore:
        """This core, or the error for a face that was never started."""
        if not self.sandboxes:
            raise self.life.closed_error()
        return self

    def replace(self, owner: object, index: int, sandbox: Sandbox) -> None:
        """Put a fresh sandbox in worker ``index``'s place (after ``auto_restart``)."""
        entry = self._shm[index]
        if entry is not None:
            self._shm[index] = None
            with contextlib.suppress(BufferError):
                entry[0].close()
        self._finalizers[index].detach()
        self._finalizers[index] = weakref.finalize(owner, sandbox.child.abandon)
        self.sandboxes[index] = sandbox
        self.dead.discard(index)

    def restarted(self, indices: list[int]) -> None:
        self.life.restarted(len(indices))

    def failed(self, exc: SandboxError, what: str) -> SandboxError:
        """Book a failed call: a fatal one kills the worker it came from (``auto_restart``
        replaces it at the next reset) or, without ``auto_restart``, every worker.

        With ``vectorization_mode="async"`` an error of the env is fatal too: Gymnasium's
        ``AsyncVectorEnv`` shuts down a sub-env that raised, and the worker cannot go on.
        """
        error: SandboxError = exc
        if (
            isinstance(exc, RemoteEnvError)
            and self.spec.options.vectorization_mode == "async"
            and self.life.state is State.READY
        ):
            self.life.fire(Event.FAILED, f"{type(exc).__name__}: {ASYNC_ERROR}")
            add_note = getattr(exc, "add_note", None)  # Python >= 3.11
            if add_note is not None:
                add_note(ASYNC_ERROR)
            broke = True
        else:
            error, broke = self.life.failed(exc, what)
        if broke:
            failed = [self.at] if self.life.auto_restart else range(len(self.sizes))
            for index in failed:
                self.sandboxes[index].child.abandon()
                self.dead.add(index)
        return error

    def begin_close(self) -> State:
        """Mark the face closed; return the state it was in."""
        return self.life.fire(Event.CLOSED)

    def detach(self) -> None:
        """Release shared memory and stop guarding the workers (they were stopped)."""
        self.release_shm()
        for finalizer in self._finalizers:
            finalizer.detach()

    def restarted_infos(self, infos: dict[str, Any], indices: list[int]) -> dict[str, Any]:
        """Mark the sub-envs of restarted workers in ``infos`` (Gymnasium's mask style)."""
        flags = np.zeros(self.num_envs, dtype=bool)
        for index in indices:
            start, stop = self.ranges[index]
            flags[start:stop] = True
        return {**infos, "rlmesh_restarted": flags, "_rlmesh_restarted": np.ones_like(flags)}

    def reset_requests(self, seed: Any, options: Any) -> list[bytes | None]:
        """One payload per worker; ``None`` for a worker that ``reset_mask`` leaves alone."""
        _batch.check_reset_mask(options, self.num_envs)
        seeds = _batch.split_seeds(seed, self.sizes)
        options_each = _batch.split_options(options, self.sizes)
        payloads: list[bytes | None] = []
        for s, o in zip(seeds, options_each, strict=True):
            skip = len(self.sizes) > 1 and o is not None and not np.any(o["reset_mask"])
            payloads.append(None if skip else self.encoder.encode([P.RESET, s, o]))
        return payloads

    def step_requests(self, actions: Any) -> list[bytes]:
        if not self.action_space.contains(actions):
            raise ValueError(
                f"actions {actions!r:.200} are not in the batched action space "
                f"{self.action_space} of {self.label!r}; env.action_space.sample() gives valid ones"
            )
        parts = _batch.split(actions, self.ranges, self.single_action_space)
        return [self.encoder.encode([P.STEP, part]) for part in parts]

    # -- shared memory for large observations ---------------------------------------------

    def shm_requests(self) -> list[bytes | None]:
        """``SHM_SETUP`` for each worker whose observation batch is large enough to gain
        (whose buffer is not mapped yet, and whose memory the host can reach)."""
        space = self.single_observation_space
        if type(space) is not Box:
            return [None] * len(self.sizes)
        item = int(np.prod(space.shape)) * np.dtype(space.dtype).itemsize
        return [
            self.encoder.encode([P.SHM_SETUP, size * item])
            if size * item >= SHM_MIN
            and self._shm[index] is None
            and self.sandboxes[index].child.peer_fd_path(0) is not None
            else None
            for index, size in enumerate(self.sizes)
        ]

    def attach_shm(self, index: int, reply: list[Any]) -> bytes | None:
        """Map worker ``index``'s shared buffer; on failure return the request that turns it
        off again in the worker."""
        fd_number = reply_values(reply, 2)[1]
        space = self.single_observation_space
        shape = (self.sizes[index], *space.shape)
        nbytes = int(np.prod(shape)) * np.dtype(space.dtype).itemsize
        path = self.sandboxes[index].child.peer_fd_path(int(fd_number))
        try:
            if path is None:  # the worker's fds are not ours to open (bwrap, a container)
                raise OSError("no path to the worker's memory")
            mapping = map_sealed(path, nbytes)
        except (OSError, ValueError, TypeError):
            return self.encoder.encode([P.SHM_SETUP, 0])
        self._shm[index] = (mapping, np.ndarray(shape, dtype=space.dtype, buffer=mapping))
        return None

    @property
    def shm_workers(self) -> list[int]:
        """Indices of the workers whose observations come through shared memory."""
        return [i for i, entry in enumerate(self._shm) if entry is not None]

    def release_shm(self) -> None:
        for index, entry in enumerate(self._shm):
            if entry is not None:
                self._shm[index] = None
                mapping, view = entry
                del view, entry
                with contextlib.suppress(BufferError):
                    mapping.close()

    def _from_shm(self, index: int, reply: list[Any]) -> list[Any]:
        if reply[0] == P.OK_SHM and self._shm[index] is not None:
            return [P.OK, self._shm[index][1].copy(), *reply[2:]]
        return reply

    def join_reset(self, replies: list[list[Any] | None]) -> tuple[Any, dict[str, Any]]:
        """Join reset replies; a skipped worker (``None``) keeps its last observations."""
        obs_parts: list[Any] = []
        infos: list[dict[str, Any]] = []
        for index, reply in enumerate(replies):
            if reply is None:
                obs_parts.append(self._last_obs[index])
                infos.append({})
            else:
                values = self._values(index, self._from_shm(index, reply), 3)
                obs_parts.append(values[1])
                infos.append(values[2])
        self._last_obs = obs_parts
        obs = _batch.concat(obs_parts, self.single_observation_space)
        return obs, _batch.merge_infos(infos, self.sizes)

    def join_step(self, replies: list[list[Any]]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        replies = [self._values(i, self._from_shm(i, r), 6) for i, r in enumerate(replies)]
        self._last_obs = [r[1] for r in replies]
        return (
            _batch.concat([r[1] for r in replies], self.single_observation_space),
            _batch.concat([r[2] for r in replies]),
            _batch.concat([r[3] for r in replies]),
            _batch.concat([r[4] for r in replies]),
            _batch.merge_infos([r[5] for r in replies], self.sizes),
        )

    def call_requests(self, name: str, args: Any, kwargs: Any) -> list[bytes]:
        return [self.encoder.encode([P.CALL, name, list(args), dict(kwargs)])] * len(self.sizes)

    def get_attr_requests(self, name: str) -> list[bytes]:
        return [self.encoder.encode([P.GET_ATTR, name])] * len(self.sizes)

    def set_attr_requests(self, name: str, values: Any) -> list[bytes]:
        return [
            self.encoder.encode([P.SET_ATTR, name, part])
            for part in _batch.split_values(values, self.sizes)
        ]

    def render_requests(self) -> list[bytes]:
        return [self.encoder.encode([P.RENDER])] * len(self.sizes)

    def join_tuples(self, replies: list[list[Any]]) -> tuple[Any, ...] | None:
        """Per-sub-env results (render) joined into one tuple; ``None`` if every worker
        answered ``None``."""
        values = [self._values(i, reply, 2)[1] for i, reply in enumerate(replies)]
        if all(value is None for value in values):
            return None
        joined: list[Any] = []
        for value in values:
            joined.extend(value)
        return tuple(joined)

    def join_results(self, replies: list[list[Any]]) -> tuple[Any, ...]:
        """Per-sub-env results (call, get_attr): one per sub-env, ``None`` where none came."""
        joined = self.join_tuples(replies)
        return (None,) * self.num_envs if joined is None else joined

    def join_none(self, replies: list[list[Any]]) -> None:
        for index, reply in enumerate(replies):
            self._values(index, reply, 1)

    def _values(self, index: int, reply: list[Any], length: int) -> list[Any]:
        """Worker ``index``'s OK reply of ``length`` items, or raise what it stands for; the
        env's own error goes through ``failed`` (fatal in ``vectorization_mode="async"``)."""
        try:
            return reply_values(reply, length)
        except RemoteEnvError as exc:
            self.at = index
            self.failed(exc, "a call")
            raise
