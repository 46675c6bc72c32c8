"""``AsyncSandboxVectorEnv``: a batch of sub-envs in sandbox workers, driven with ``await``."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from . import _protocol as P
from ._errors import SandboxError
from ._sandbox import (
    CLOSE_TIMEOUT,
    AsyncFace,
    State,
    closed_error,
    host_env_spec,
    is_fatal,
    reply_values,
    start_sandbox,
    start_vector_sandboxes,
)
from ._spec import DEFAULT_STARTUP_TIMEOUT, spec_from_arguments
from ._transport import AsyncChannel
from ._vector import VectorCore, check_vector_options

__all__ = ["AsyncSandboxVectorEnv"]


class AsyncSandboxVectorEnv(AsyncFace):
    """``num_envs`` copies of an environment in ``num_workers`` sandbox processes.

    Each worker runs a Gymnasium vector env of its share of the sub-envs; a step of the batch
    is one round trip per worker. Semantics are Gymnasium's: batched spaces,
    ``metadata["autoreset_mode"]``, ``final_obs``/``final_info`` and ``_key`` masks in infos,
    ``reset(options={"reset_mask": ...})``.

    Args:
        source: A Gymnasium id.
        num_envs: Sub-envs in all.
        num_workers: Sandbox processes to spread them over (for CPU-heavy envs).
        vectorization_mode: How each worker runs its sub-envs: ``"sync"`` (one process) or
            ``"async"`` (Gymnasium's ``AsyncVectorEnv`` inside the sandbox).
        autoreset_mode: A ``gymnasium.vector.AutoresetMode`` (or its value); Gymnasium's
            default when ``None``.
        **options: The sandbox options and ``gymnasium.make`` kwargs, as for
            ``AsyncSandboxEnv``.
    """

    def __init__(
        self,
        source: str,
        *,
        num_envs: int = 1,
        num_workers: int = 1,
        vectorization_mode: str = "sync",
        autoreset_mode: Any = None,
        packages: list[str] | tuple[str, ...] = (),
        imports: list[str] | tuple[str, ...] = (),
        render_mode: str | None = None,
        base_image: str | None = None,
        rlmesh_package: str | None = None,
        trust_remote_code: bool = False,
        allow_unpinned_hf: bool = False,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        call_timeout: float | None = None,
        isolation: str | None = None,
        max_memory: int | None = None,
        max_cpu_seconds: int | None = None,
        auto_restart: bool = False,
        **gym_make_kwargs: Any,
    ) -> None:
        self._sizes, self._autoreset = check_vector_options(
            num_envs, num_workers, vectorization_mode, autoreset_mode
        )
        self._mode = vectorization_mode
        self._spec = spec_from_arguments(source, locals())
        self._state = State.CREATED
        self._reason: str | None = None
        self._core: VectorCore | None = None
        self._channels: list[AsyncChannel] = []
        self._pending = False
        self._timeout = self._spec.call_timeout
        self.restarts = 0  # workers replaced by auto_restart

    async def start(self) -> None:
        """Start the workers of an env built with the constructor (``create`` does this)."""
        if self._state is not State.CREATED:
            raise closed_error(self._spec.label, self._state, "start() was already called")
        sandboxes = await start_vector_sandboxes(
            self._spec, self._sizes, self._mode, self._autoreset
        )
        self._core = VectorCore(
            sandboxes, self._sizes, self._spec.label, self._mode, self._autoreset
        )
        self._channels = [AsyncChannel(s.child, s.reader) for s in sandboxes]
        self._env_spec = host_env_spec(sandboxes[0])
        self._finalizers = [weakref.finalize(self, s.child.abandon) for s in sandboxes]
        self._state = State.READY
        try:
            await self._setup_shm()
        except BaseException:
            await self.aclose()
            raise

    async def _setup_shm(self) -> None:
        core = self._started()
        for index, payload in enumerate(core.shm_requests()):
            if payload is not None:
                channel = self._channels[index]
                undo = core.attach_shm(index, await channel.request(payload, "shm setup"))
                if undo is not None:
                    reply_values(await channel.request(undo, "shm setup"), 2)

    def _started(self) -> VectorCore:
        if self._core is None:
            raise closed_error(self._spec.label, self._state, None)
        return self._core

    num_envs = property(lambda self: self._started().num_envs, doc="Sub-envs in all.")
    single_observation_space = property(lambda self: self._started().single_observation_space)
    single_action_space = property(lambda self: self._started().single_action_space)
    observation_space = property(lambda self: self._started().observation_space)
    action_space = property(lambda self: self._started().action_space)
    metadata = property(lambda self: self._started().metadata)
    render_mode = property(lambda self: self._started().render_mode)

    @property
    def spec(self) -> Any:
        self._started()
        return self._env_spec

    @property
    def state(self) -> State:
        return self._state

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids."""
        return [] if self._core is None else [s.child.pid for s in self._core.sandboxes]

    async def _exchange(self, payloads: list[bytes], what: str) -> list[list[Any]]:
        await self._send(payloads, what)
        return await self._receive(what)

    async def _send(self, payloads: list[bytes], what: str) -> None:
        if self._state is not State.READY:
            raise closed_error(self._spec.label, self._state, self._reason)
        if self._pending:
            raise RuntimeError(f"{what} while a step_async() awaits its step_wait()")
        await self._guard(what, lambda: self._exchange_some(payloads, what, receive=False))

    async def _receive(self, what: str) -> list[list[Any]]:
        everyone: list[bytes | None] = [b""] * len(self._channels)
        return await self._guard(  # type: ignore[no-any-return]
            what, lambda: self._exchange_some(everyone, what, send=False)
        )

    async def _exchange_some(
        self,
        payloads: Sequence[bytes | None],
        what: str,
        *,
        send: bool = True,
        receive: bool = True,
    ) -> list[Any]:
        """Send to and/or receive from the workers whose payload is not ``None``."""
        core = self._started()
        chosen = [index for index, payload in enumerate(payloads) if payload is not None]
        if send:
            for index in chosen:
                core.at = index
                await self._channels[index].send(payloads[index] or b"", what)
        got: list[Any] = [None] * len(self._channels)
        if receive:
            for index in chosen:
                core.at = index
                got[index] = await self._channels[index].receive(what, self._timeout)
        return got

    async def _guard(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await call()
        except SandboxError as exc:
            if is_fatal(exc):
                self._state = State.BROKEN
                self._reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                core = self._started()
                failed = [core.at] if self._spec.auto_restart else range(len(core.sizes))
                for index in failed:  # auto_restart keeps the healthy workers for later
                    core.sandboxes[index].child.abandon()
                    core.dead.add(index)
            raise

    async def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset sub-envs (all, or those in ``options["reset_mask"]``)."""
        core = self._started()
        restarted = sorted(core.dead) if self._spec.auto_restart else []
        if restarted and self._state is State.BROKEN:
            await self._restart(restarted)
        if self._state is not State.READY:
            raise closed_error(self._spec.label, self._state, self._reason)
        if self._pending:
            raise RuntimeError("reset() while a step_async() awaits its step_wait()")
        payloads = core.reset_requests(seed, options)
        replies = await self._guard("reset()", lambda: self._exchange_some(payloads, "reset()"))
        obs, infos = core.join_reset(replies)
        return obs, core.restarted_infos(infos, restarted) if restarted else infos

    async def _restart(self, indices: list[int]) -> None:
        """Replace the stopped workers with fresh ones (``auto_restart``); keep the others."""
        core = self._started()
        for index in indices:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(core.sandboxes[index].child.stop, 0.5)
            self._finalizers[index].detach()
            self._channels[index].close()
            vector, label = core.worker(index)
            sandbox = await start_sandbox(self._spec, vector, label)
            core.replace(index, sandbox)
            self._channels[index] = AsyncChannel(sandbox.child, sandbox.reader)
            self._finalizers[index] = weakref.finalize(self, sandbox.child.abandon)
        self._state, self._reason = State.READY, None
        self.restarts += len(indices)
        await self._setup_shm()

    async def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every sub-env with its action; batched results, as Gymnasium returns them."""
        core = self._started()
        return core.join_step(await self._exchange(core.step_requests(actions), "step()"))

    async def step_async(self, actions: Any) -> None:
        """Send the actions and return at once; ``step_wait()`` collects the results."""
        core = self._started()
        await self._send(core.step_requests(actions), "step_async()")
        self._pending = True

    async def step_wait(self) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The results of the last ``step_async()``."""
        if not self._pending:
            raise RuntimeError("step_wait() without a step_async() before it")
        self._pending = False
        return self._started().join_step(await self._receive("step_wait()"))

    async def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call a method of every sub-env; one (safely encoded) result per sub-env."""
        core = self._started()
        result = core.join_tuples(await self._exchange(core.call_requests(name, args, kwargs),
                                                       f"call({name!r})"))  # fmt: skip
        return result if result is not None else (None,) * core.num_envs  # type: ignore[no-any-return]

    async def get_attr(self, name: str) -> tuple[Any, ...]:
        """An attribute of every sub-env."""
        core = self._started()
        result = core.join_tuples(
            await self._exchange(core.get_attr_requests(name), f"get_attr({name!r})")
        )
        return result if result is not None else (None,) * core.num_envs  # type: ignore[no-any-return]

    async def set_attr(self, name: str, values: Any) -> None:
        """Set an attribute on every sub-env (a list gives one value per sub-env)."""
        core = self._started()
        core.join_none(
            await self._exchange(core.set_attr_requests(name, values), f"set_attr({name!r})")
        )

    async def render(self) -> tuple[Any, ...] | None:
        """Render every sub-env."""
        core = self._started()
        return core.join_tuples(await self._exchange(core.render_requests(), "render()"))  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Close every worker. Idempotent; safe after a failure."""
        if self._state in (State.CLOSED, State.CREATED):
            self._state = State.CLOSED
            return
        core = self._started()
        with anyio.CancelScope(shield=True):
            if self._state is State.READY and not self._pending:
                with contextlib.suppress(SandboxError):  # stop() below makes sure
                    close = [core.encoder.encode([P.CLOSE])] * len(self._channels)
                    with anyio.move_on_after(CLOSE_TIMEOUT):
                        await _send_all(self._channels, close, "close()")
                        await _receive_all(self._channels, "close()", CLOSE_TIMEOUT)
            self._state = State.CLOSED
            for channel in self._channels:
                channel.close()
            for sandbox in core.sandboxes:
                await anyio.to_thread.run_sync(sandbox.child.stop)
            core.release_shm()
            for finalizer in self._finalizers:
                finalizer.detach()

    def __repr__(self) -> str:
        return (
            f"<AsyncSandboxVectorEnv {self._spec.label!r} num_envs={sum(self._sizes)} "
            f"workers={len(self._sizes)} {self._state.value}>"
        )


async def _send_all(channels: list[AsyncChannel], payloads: list[bytes], what: str) -> None:
    for channel, payload in zip(channels, payloads, strict=True):
        await channel.send(payload, what)


async def _receive_all(
    channels: list[AsyncChannel], what: str, timeout: float | None
) -> list[list[Any]]:
    return [await channel.receive(what, timeout) for channel in channels]
