"""The vector faces: ``SandboxVectorEnv`` (a real ``gymnasium.vector.VectorEnv``) and
``AsyncSandboxVectorEnv``.

Side by side, over one ``VectorCore`` each (lifecycle, worker info, request split, reply
join, failure booking): they differ only where they wait. Every call sends to all its workers,
then collects from all, so the workers step in parallel; ``step_async``/``step_wait`` let a
learner compute meanwhile. ``SandboxVectorEnv`` starts its workers through the shared
blocking portal and talks to their pipes directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio
import gymnasium as gym

from ._core.channels import AsyncChannel, async_channel, blocking_channel
from ._core.face import AsyncFace, VectorFace, public_face
from ._core.lifecycle import State, reraise
from ._core.portal import portal_call
from ._core.spec import spec_from_arguments
from ._core.startup import (
    discard,
    discard_all,
    host_env_spec,
    reply_values,
    start_sandbox,
    start_vector_sandboxes,
)
from ._core.vector import VectorCore
from ._errors import SandboxError
from ._wire import protocol as P

__all__ = ["AsyncSandboxVectorEnv", "SandboxVectorEnv"]

_T = TypeVar("_T")
_ASYNC_HINT = (
    "use 'await AsyncSandboxVectorEnv.create(...)' or 'async with AsyncSandboxVectorEnv(...) "
    "as env'"
)


@public_face(vector=True)
class SandboxVectorEnv(VectorFace, gym.vector.VectorEnv[Any, Any, Any]):
    """``num_envs`` copies of an environment in ``num_workers`` sandbox processes.

    A real ``gymnasium.vector.VectorEnv``. Each worker runs a Gymnasium vector env of its
    share of the sub-envs; a step of the batch is one round trip per worker. Semantics are
    Gymnasium's: batched spaces, ``metadata["autoreset_mode"]``, ``final_obs``/``final_info``
    and ``_key`` masks in infos, ``reset(options={"reset_mask": ...})``.

    {options}
    """

    _core: VectorCore

    def __init__(self, source: str, **options: Any) -> None:
        core = self._core = VectorCore(spec_from_arguments(source, options, vector=True), "")
        sandboxes = portal_call(start_vector_sandboxes, core.spec, core.workers, undo=discard_all)
        core.install(self, sandboxes)
        self._channels = [blocking_channel(s.child, s.reader) for s in core.sandboxes]
        self._timeout = core.timeouts.call
        self.num_envs = core.num_envs
        self.single_observation_space = core.single_observation_space
        self.single_action_space = core.single_action_space
        self.observation_space = core.observation_space
        self.action_space = core.action_space
        self.metadata = core.metadata
        self.autoreset_mode = core.autoreset_mode
        self.render_mode = core.render_mode
        self.spec = host_env_spec(core.sandboxes[0])
        try:
            self._setup_shm()
        except BaseException:
            self.close()
            raise

    def _setup_shm(self) -> None:
        core = self._core
        for index, payload in enumerate(core.shm_requests()):
            if payload is not None:
                channel = self._channels[index]
                undo = core.attach_shm(index, channel.request(payload, "shm setup"))
                if undo is not None:
                    reply_values(channel.request(undo, "shm setup"), 2)

    @property
    def np_random_seed(self) -> tuple[Any, ...]:  # type: ignore[override]
        """The seed of every sub-env's random generator, as Gymnasium's vector envs give it
        (after ``reset(seed=42)``: ``(42, 43, ...)``)."""
        return self.get_attr("np_random_seed")

    def _guard(self, what: str, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except SandboxError as exc:
            reraise(self._core.failed(exc, what), exc)

    def _exchange(self, payloads: Sequence[bytes | None], what: str, *, send: bool = True,
                  receive: bool = True) -> list[Any]:  # fmt: skip
        """Send to and/or receive from the workers whose payload is not ``None``."""
        core = self._core
        if send:
            core.life.check_ready(what)
        chosen = [index for index, payload in enumerate(payloads) if payload is not None]

        def run() -> list[Any]:
            channels, timeout = self._channels, self._timeout
            if send:
                for index in chosen:
                    core.at = index
                    channels[index].send(payloads[index] or b"", what, timeout)
            got: list[Any] = [None] * len(channels)
            if receive:
                for index in chosen:
                    core.at = index
                    got[index] = channels[index].receive(what, timeout)
            return got

        return self._guard(what, run)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset sub-envs (all, or those in ``options["reset_mask"]``)."""
        super().reset(seed=seed if isinstance(seed, int) else None)
        core = self._core
        restarted = sorted(core.dead) if core.life.wants_restart() else []
        if restarted:
            self._restart(restarted)
        obs, infos = core.join_reset(self._exchange(core.reset_requests(seed, options), "reset()"))
        return obs, core.restarted_infos(infos, restarted) if restarted else infos

    def _restart(self, indices: list[int]) -> None:
        """Replace the stopped workers with fresh ones (``auto_restart``); keep the others."""
        core = self._core
        for index in indices:
            core.sandboxes[index].child.stop(core.timeouts.abort_grace)
            vector, label = core.workers[index]
            sandbox = portal_call(start_sandbox, core.spec, vector, label, undo=discard)
            core.replace(self, index, sandbox)
            self._channels[index] = blocking_channel(sandbox.child, sandbox.reader)
        core.restarted(indices)
        self._setup_shm()

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every sub-env with its action; batched results."""
        core = self._core
        return core.join_step(self._exchange(core.step_requests(actions), "step()"))

    def step_async(self, actions: Any) -> None:
        """Send the actions and return at once; ``step_wait()`` collects the results."""
        core = self._core
        self._exchange(core.step_requests(actions), "step_async()", receive=False)
        core.life.begin_pending()

    def step_wait(self) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The results of the last ``step_async()``."""
        core = self._core
        core.life.end_pending()
        everyone: list[bytes | None] = [b""] * len(self._channels)
        return core.join_step(self._exchange(everyone, "step_wait()", send=False))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call a method of every sub-env; one (safely encoded) result per sub-env."""
        core = self._core
        replies = self._exchange(core.call_requests(name, args, kwargs), f"call({name!r})")
        return core.join_results(replies)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """An attribute of every sub-env."""
        core = self._core
        replies = self._exchange(core.get_attr_requests(name), f"get_attr({name!r})")
        return core.join_results(replies)

    def set_attr(self, name: str, values: Any) -> None:
        """Set an attribute on every sub-env (a list gives one value per sub-env)."""
        core = self._core
        core.join_none(self._exchange(core.set_attr_requests(name, values), f"set_attr({name!r})"))

    def render(self) -> tuple[Any, ...] | None:
        """Render every sub-env."""
        core = self._core
        return core.join_tuples(self._exchange(core.render_requests(), "render()"))

    def close(self, **kwargs: Any) -> None:
        """Close every worker. Idempotent; safe after a failure."""
        core: VectorCore | None = getattr(self, "_core", None)
        if core is None or not core.sandboxes:  # the constructor failed
            return
        pending = core.life.pending
        before = core.begin_close()
        if before is State.CLOSED:
            return
        if before is State.READY and not pending:
            goodbye = core.encoder.encode([P.CLOSE])
            with contextlib.suppress(SandboxError):  # stop() below makes sure
                for channel in self._channels:
                    channel.send(goodbye, "close()", core.timeouts.close)
                for channel in self._channels:
                    channel.receive("close()", core.timeouts.close)
        for sandbox in core.sandboxes:
            sandbox.child.stop()
        core.detach()

    @property
    def closed(self) -> bool:
        return self._core.life.state is State.CLOSED

    @closed.setter
    def closed(self, value: bool) -> None:
        pass  # gymnasium's VectorEnv sets it; our state is authoritative

    def __del__(self) -> None:
        pass  # the finalizers stop the workers; VectorEnv.__del__ would call close()

    def __enter__(self) -> SandboxVectorEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        core = self._core
        return (
            f"<SandboxVectorEnv {core.label!r} num_envs={core.num_envs} "
            f"workers={len(core.sizes)} {core.life.state.value}>"
        )


def _started(attribute: str, doc: str | None = None) -> Any:
    return property(lambda self: getattr(self._core.started(), attribute), doc=doc)


@public_face(vector=True)
class AsyncSandboxVectorEnv(VectorFace, AsyncFace):
    """``num_envs`` copies of an environment in ``num_workers`` sandbox processes, driven
    with ``await``.

    Each worker runs a Gymnasium vector env of its share of the sub-envs; a step of the batch
    is one round trip per worker. Semantics are Gymnasium's: batched spaces,
    ``metadata["autoreset_mode"]``, ``final_obs``/``final_info`` and ``_key`` masks in infos,
    ``reset(options={"reset_mask": ...})``.

    {options}
    """

    _core: VectorCore

    def __init__(self, source: str, **options: Any) -> None:
        spec = spec_from_arguments(source, options, vector=True)
        self._core = VectorCore(spec, _ASYNC_HINT)
        self._life = self._core.life
        self._channels: list[AsyncChannel] = []

    async def start(self) -> None:
        """Start the workers of an env built with the constructor (``create`` does this)."""
        core = self._core
        self._life.check_startable()
        core.install(self, await start_vector_sandboxes(core.spec, core.workers))
        self._channels = [async_channel(s.child, s.reader) for s in core.sandboxes]
        self._env_spec = host_env_spec(core.sandboxes[0])
        try:
            await self._setup_shm()
        except BaseException:
            await self.aclose()
            raise

    async def _setup_shm(self) -> None:
        core = self._core
        for index, payload in enumerate(core.shm_requests()):
            if payload is not None:
                channel = self._channels[index]
                undo = core.attach_shm(index, await channel.request(payload, "shm setup"))
                if undo is not None:
                    reply_values(await channel.request(undo, "shm setup"), 2)

    num_envs = _started("num_envs", "Sub-envs in all.")
    single_observation_space = _started("single_observation_space")
    single_action_space = _started("single_action_space")
    observation_space = _started("observation_space")
    action_space = _started("action_space")
    metadata = _started("metadata")
    autoreset_mode = _started("autoreset_mode", "The ``gymnasium.vector.AutoresetMode``.")
    render_mode = _started("render_mode")

    @property
    def spec(self) -> Any:
        self._core.started()
        return self._env_spec

    async def _exchange(self, payloads: Sequence[bytes | None], what: str, *,
                        send: bool = True, receive: bool = True) -> list[Any]:  # fmt: skip
        """Send to and/or receive from the workers whose payload is not ``None``."""
        core = self._core
        if send:
            core.life.check_ready(what)
        chosen = [index for index, payload in enumerate(payloads) if payload is not None]
        channels, timeout = self._channels, core.timeouts.call
        try:
            if send:
                for index in chosen:
                    core.at = index
                    await channels[index].send(payloads[index] or b"", what)
            got: list[Any] = [None] * len(channels)
            if receive:
                for index in chosen:
                    core.at = index
                    got[index] = await channels[index].receive(what, timeout)
            return got
        except SandboxError as exc:
            reraise(core.failed(exc, what), exc)

    async def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset sub-envs (all, or those in ``options["reset_mask"]``)."""
        core = self._core.started()
        restarted = sorted(core.dead) if core.life.wants_restart() else []
        if restarted:
            await self._restart(restarted)
        payloads = core.reset_requests(seed, options)
        obs, infos = core.join_reset(await self._exchange(payloads, "reset()"))
        return obs, core.restarted_infos(infos, restarted) if restarted else infos

    async def _restart(self, indices: list[int]) -> None:
        """Replace the stopped workers with fresh ones (``auto_restart``); keep the others."""
        core = self._core
        for index in indices:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    core.sandboxes[index].child.stop, core.timeouts.abort_grace
                )
            self._channels[index].close()
            vector, label = core.workers[index]
            sandbox = await start_sandbox(core.spec, vector, label)
            core.replace(self, index, sandbox)
            self._channels[index] = async_channel(sandbox.child, sandbox.reader)
        core.restarted(indices)
        await self._setup_shm()

    async def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every sub-env with its action; batched results, as Gymnasium returns them."""
        core = self._core.started()
        return core.join_step(await self._exchange(core.step_requests(actions), "step()"))

    async def step_async(self, actions: Any) -> None:
        """Send the actions and return at once; ``step_wait()`` collects the results."""
        core = self._core.started()
        await self._exchange(core.step_requests(actions), "step_async()", receive=False)
        core.life.begin_pending()

    async def step_wait(self) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The results of the last ``step_async()``."""
        core = self._core
        core.life.end_pending()
        everyone: list[bytes | None] = [b""] * len(self._channels)
        return core.join_step(await self._exchange(everyone, "step_wait()", send=False))

    async def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call a method of every sub-env; one (safely encoded) result per sub-env."""
        core = self._core.started()
        replies = await self._exchange(core.call_requests(name, args, kwargs), f"call({name!r})")
        return core.join_results(replies)

    async def get_attr(self, name: str) -> tuple[Any, ...]:
        """An attribute of every sub-env."""
        core = self._core.started()
        replies = await self._exchange(core.get_attr_requests(name), f"get_attr({name!r})")
        return core.join_results(replies)

    async def set_attr(self, name: str, values: Any) -> None:
        """Set an attribute on every sub-env (a list gives one value per sub-env)."""
        core = self._core.started()
        payloads = core.set_attr_requests(name, values)
        core.join_none(await self._exchange(payloads, f"set_attr({name!r})"))

    async def render(self) -> tuple[Any, ...] | None:
        """Render every sub-env."""
        core = self._core.started()
        return core.join_tuples(await self._exchange(core.render_requests(), "render()"))

    async def aclose(self) -> None:
        """Close every worker. Idempotent; safe after a failure."""
        core = self._core
        pending = core.life.pending
        before = core.begin_close()
        if before in (State.CLOSED, State.CREATED):
            return
        with anyio.CancelScope(shield=True):
            if before is State.READY and not pending:
                goodbye = core.encoder.encode([P.CLOSE])
                with contextlib.suppress(SandboxError), anyio.move_on_after(core.timeouts.close):
                    for channel in self._channels:
                        await channel.send(goodbye, "close()")
                    for channel in self._channels:
                        await channel.receive("close()", core.timeouts.close)
            for channel in self._channels:
                channel.close()
            for sandbox in core.sandboxes:
                await anyio.to_thread.run_sync(sandbox.child.stop)
            core.detach()

    def __repr__(self) -> str:
        core = self._core
        return (
            f"<AsyncSandboxVectorEnv {core.label!r} num_envs={core.num_envs} "
            f"workers={len(core.sizes)} {core.life.state.value}>"
        )
