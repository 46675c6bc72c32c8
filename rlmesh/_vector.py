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
import mmap
import os
from typing import Any

import numpy as np
from gymnasium.spaces import Box
from gymnasium.vector.utils import batch_space

from . import _batch
from . import _protocol as P
from ._sandbox import Sandbox, reply_values
from ._spaces import OpaqueSpace

__all__ = ["VectorCore", "check_vector_options"]

_MODES = ("sync", "async")
SHM_MIN = 64 * 1024  # bytes of a worker's observation batch from which shared memory pays


def check_vector_options(
    num_envs: int, num_workers: int, vectorization_mode: str, autoreset_mode: Any
) -> tuple[list[int], str | None]:
    """Validate the vector options; return the shard sizes and the autoreset mode's value."""
    sizes = _batch.shard_sizes(num_envs, num_workers)
    if vectorization_mode not in _MODES:
        raise ValueError(
            f"vectorization_mode must be 'sync' or 'async' (how each sandbox runs its share "
            f"of sub-envs), not {vectorization_mode!r}"
        )
    if autoreset_mode is None:
        return sizes, None
    from gymnasium.vector import AutoresetMode

    try:
        return sizes, AutoresetMode(getattr(autoreset_mode, "value", autoreset_mode)).value
    except ValueError:
        names = ", ".join(repr(m.value) for m in AutoresetMode)
        raise ValueError(
            f"autoreset_mode must be an AutoresetMode or one of {names}, not {autoreset_mode!r}"
        ) from None


def _batched(space: Any, n: int) -> Any:
    try:
        return batch_space(space, n)
    except (TypeError, NotImplementedError, ValueError):
        if isinstance(space, OpaqueSpace):
            return OpaqueSpace(space.name, f"{n} x {space.description}")
        raise


class VectorCore:
    """Spaces, metadata and the pure split/join of requests for a set of worker sandboxes."""

    def __init__(
        self,
        sandboxes: list[Sandbox],
        sizes: list[int],
        label: str,
        vectorization_mode: str = "sync",
        autoreset_mode: str | None = None,
    ) -> None:
        from gymnasium.vector import AutoresetMode

        self.sandboxes = sandboxes
        self.sizes = sizes
        self.ranges = _batch.bounds(sizes)
        self.label = label
        first = sandboxes[0]
        self.num_envs = sum(sizes)
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = _batched(first.observation_space, self.num_envs)
        self.action_space = _batched(first.action_space, self.num_envs)
        metadata = dict(first.metadata)
        if "autoreset_mode" in metadata:
            metadata["autoreset_mode"] = AutoresetMode(metadata["autoreset_mode"])
        self.metadata = metadata
        self.render_mode = first.render_mode
        self.encoder = P.RequestEncoder()
        self._last_obs: list[Any] = []  # per worker: observations of the last reply
        self._shm: list[Any] = [None] * len(sizes)  # per worker: (mmap, ndarray view) or None
        self._mode, self._autoreset = vectorization_mode, autoreset_mode
        self.dead: set[int] = set()  # workers stopped after a failure, for auto_restart
        self.at = 0  # the worker the current send or receive is talking to

    def worker(self, index: int) -> tuple[dict[str, Any], str]:
        """The vector request and the label that start worker ``index``."""
        vector = {
            "num_envs": self.sizes[index],
            "vectorization_mode": self._mode,
            "autoreset_mode": self._autoreset,
        }
        if len(self.sizes) == 1:
            return vector, self.label
        return vector, f"{self.label} [worker {index}/{len(self.sizes)}]"

    def replace(self, index: int, sandbox: Sandbox) -> None:
        """Put a fresh sandbox in worker ``index``'s place (after ``auto_restart``)."""
        entry = self._shm[index]
        if entry is not None:
            self._shm[index] = None
            with contextlib.suppress(BufferError):
                entry[0].close()
        self.sandboxes[index] = sandbox
        self.dead.discard(index)

    def restarted_infos(self, infos: dict[str, Any], indices: list[int]) -> dict[str, Any]:
        """Mark the sub-envs of restarted workers in ``infos`` (Gymnasium's mask style)."""
        flags = np.zeros(self.num_envs, dtype=bool)
        for index in indices:
            start, stop = self.ranges[index]
            flags[start:stop] = True
        return {**infos, "rlmesh_restarted": flags, "_rlmesh_restarted": np.ones_like(flags)}

    def reset_requests(self, seed: Any, options: Any) -> list[bytes | None]:
        """One payload per worker; ``None`` for a worker that ``reset_mask`` leaves alone."""
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
        parts = _batch.split(actions, self.ranges)
        return [self.encoder.encode([P.STEP, part]) for part in parts]

    # -- shared memory for large observations ---------------------------------------------

    def shm_requests(self) -> list[bytes | None]:
        """``SHM_SETUP`` for each worker whose observation batch is large enough to gain
        (and whose buffer is not mapped yet)."""
        space = self.single_observation_space
        if type(space) is not Box or self.sandboxes[0].spec.isolation == "bwrap":
            return [None] * len(self.sizes)  # bwrap: the worker's pid is not ours to map
        item = int(np.prod(space.shape)) * np.dtype(space.dtype).itemsize
        return [
            self.encoder.encode([P.SHM_SETUP, size * item])
            if size * item >= SHM_MIN and self._shm[index] is None
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
        pid = self.sandboxes[index].child.pid
        try:
            fd = os.open(f"/proc/{pid}/fd/{int(fd_number)}", os.O_RDWR | os.O_CLOEXEC)
            try:
                mapping = mmap.mmap(fd, nbytes)
            finally:
                os.close(fd)  # the mapping outlives the fd
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
                values = reply_values(self._from_shm(index, reply), 3)
                obs_parts.append(values[1])
                infos.append(values[2])
        self._last_obs = obs_parts
        return _batch.concat(obs_parts), _batch.merge_infos(infos, self.sizes)

    def join_step(self, replies: list[list[Any]]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        replies = [reply_values(self._from_shm(i, r), 6) for i, r in enumerate(replies)]
        self._last_obs = [r[1] for r in replies]
        return (
            _batch.concat([r[1] for r in replies]),
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

    def join_tuples(self, replies: list[list[Any]]) -> Any:
        """Per-sub-env results (call, get_attr, render) joined into one tuple."""
        values = [reply_values(reply, 2)[1] for reply in replies]
        if all(value is None for value in values):
            return None
        joined: list[Any] = []
        for value in values:
            joined.extend(value)
        return tuple(joined)

    def join_none(self, replies: list[list[Any]]) -> None:
        for reply in replies:
            reply_values(reply, 1)
