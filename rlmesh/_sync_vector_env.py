"""``SandboxVectorEnv``: a real ``gymnasium.vector.VectorEnv`` over sandbox workers.

Startup goes through the shared blocking portal; every call talks to the workers' pipes
directly (send to all, then collect from all, so workers step in parallel).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from . import _protocol as P
from ._errors import SandboxError
from ._portal import portal_call
from ._sandbox import (
    CLOSE_TIMEOUT,
    State,
    closed_error,
    host_env_spec,
    is_fatal,
    reply_values,
    start_sandbox,
    start_vector_sandboxes,
)
from ._spec import DEFAULT_STARTUP_TIMEOUT, spec_from_arguments
from ._transport import BlockingChannel
from ._vector import VectorCore, check_vector_options

__all__ = ["SandboxVectorEnv"]


class SandboxVectorEnv(gym.vector.VectorEnv[Any, Any, Any]):
    """``num_envs`` copies of an environment in ``num_workers`` sandbox processes.

    A real ``gymnasium.vector.VectorEnv``; takes the same arguments as
    ``AsyncSandboxVectorEnv`` (see there). ``step_async``/``step_wait`` let a learner compute
    while the workers step.
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
        self._state = State.CREATED
        sizes, autoreset = check_vector_options(
            num_envs, num_workers, vectorization_mode, autoreset_mode
        )
        spec = spec_from_arguments(source, locals())
        self._label = spec.label
        self._reason: str | None = None
        self._timeout = spec.call_timeout
        self._pending = False
        self.restarts = 0  # workers replaced by auto_restart
        sandboxes = portal_call(start_vector_sandboxes, spec, sizes, vectorization_mode, autoreset)
        self._spec_options = spec
        self._core = core = VectorCore(sandboxes, sizes, spec.label, vectorization_mode, autoreset)
        self._channels = [BlockingChannel(s.child, s.reader) for s in sandboxes]
        self._finalizers = [weakref.finalize(self, s.child.abandon) for s in sandboxes]
        self.num_envs = core.num_envs
        self.single_observation_space = core.single_observation_space
        self.single_action_space = core.single_action_space
        self.observation_space = core.observation_space
        self.action_space = core.action_space
        self.metadata = core.metadata
        self.render_mode = core.render_mode
        self.spec = host_env_spec(sandboxes[0])
        self._state = State.READY
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
    def state(self) -> State:
        return self._state

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids."""
        return [s.child.pid for s in self._core.sandboxes]

    def _guard(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except SandboxError as exc:
            if is_fatal(exc):
                self._state = State.BROKEN
                self._reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                core = self._core
                failed = [core.at] if self._spec_options.auto_restart else range(len(core.sizes))
                for index in failed:  # auto_restart keeps the healthy workers for later
                    core.sandboxes[index].child.abandon()
                    core.dead.add(index)
            raise

    def _send(self, payloads: list[bytes], what: str) -> None:
        if self._state is not State.READY:
            raise closed_error(self._label, self._state, self._reason)
        if self._pending:
            raise RuntimeError(f"{what} while a step_async() awaits its step_wait()")

        def send() -> None:
            for index, (channel, payload) in enumerate(zip(self._channels, payloads, strict=True)):
                self._core.at = index
                channel.send(payload, what, self._timeout)

        self._guard(send)

    def _receive(self, what: str) -> list[list[Any]]:
        def receive() -> list[list[Any]]:
            replies = []
            for index, channel in enumerate(self._channels):
                self._core.at = index
                replies.append(channel.receive(what, self._timeout))
            return replies

        return self._guard(receive)  # type: ignore[no-any-return]

    def _exchange(self, payloads: list[bytes], what: str) -> list[list[Any]]:
        self._send(payloads, what)
        return self._receive(what)

    def _exchange_some(self, payloads: list[bytes | None], what: str) -> list[Any]:
        """Like ``_exchange``, skipping workers whose payload is ``None`` (reply ``None``)."""
        if self._state is not State.READY:
            raise closed_error(self._label, self._state, self._reason)
        if self._pending:
            raise RuntimeError(f"{what} while a step_async() awaits its step_wait()")
        chosen = [(i, p) for i, p in enumerate(payloads) if p is not None]

        def run() -> list[Any]:
            for index, payload in chosen:
                self._core.at = index
                self._channels[index].send(payload, what, self._timeout)
            got: list[Any] = [None] * len(self._channels)
            for index, _ in chosen:
                self._core.at = index
                got[index] = self._channels[index].receive(what, self._timeout)
            return got

        return self._guard(run)  # type: ignore[no-any-return]

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset sub-envs (all, or those in ``options["reset_mask"]``)."""
        super().reset(seed=seed if isinstance(seed, int) else None)
        core = self._core
        restarted = sorted(core.dead) if self._spec_options.auto_restart else []
        if restarted and self._state is State.BROKEN:
            self._restart(restarted)
        obs, infos = core.join_reset(
            self._exchange_some(core.reset_requests(seed, options), "reset()")
        )
        return obs, core.restarted_infos(infos, restarted) if restarted else infos

    def _restart(self, indices: list[int]) -> None:
        """Replace the stopped workers with fresh ones (``auto_restart``); keep the others."""
        core = self._core
        for index in indices:
            core.sandboxes[index].child.stop(0.5)
            self._finalizers[index].detach()
            vector, label = core.worker(index)
            sandbox = portal_call(start_sandbox, self._spec_options, vector, label)
            core.replace(index, sandbox)
            self._channels[index] = BlockingChannel(sandbox.child, sandbox.reader)
            self._finalizers[index] = weakref.finalize(self, sandbox.child.abandon)
        self._state, self._reason = State.READY, None
        self.restarts += len(indices)
        self._setup_shm()

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every sub-env with its action; batched results."""
        core = self._core
        return core.join_step(self._exchange(core.step_requests(actions), "step()"))

    def step_async(self, actions: Any) -> None:
        """Send the actions and return at once; ``step_wait()`` collects the results."""
        self._send(self._core.step_requests(actions), "step_async()")
        self._pending = True

    def step_wait(self) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The results of the last ``step_async()``."""
        if not self._pending:
            raise RuntimeError("step_wait() without a step_async() before it")
        self._pending = False
        return self._core.join_step(self._receive("step_wait()"))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call a method of every sub-env; one (safely encoded) result per sub-env."""
        core = self._core
        replies = self._exchange(core.call_requests(name, args, kwargs), f"call({name!r})")
        result = core.join_tuples(replies)
        return result if result is not None else (None,) * self.num_envs  # type: ignore[no-any-return]

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """An attribute of every sub-env."""
        core = self._core
        result = core.join_tuples(self._exchange(core.get_attr_requests(name), "get_attr()"))
        return result if result is not None else (None,) * self.num_envs  # type: ignore[no-any-return]

    def set_attr(self, name: str, values: Any) -> None:
        """Set an attribute on every sub-env (a list gives one value per sub-env)."""
        core = self._core
        core.join_none(self._exchange(core.set_attr_requests(name, values), "set_attr()"))

    def render(self) -> tuple[Any, ...] | None:
        """Render every sub-env."""
        core = self._core
        return core.join_tuples(self._exchange(core.render_requests(), "render()"))  # type: ignore[no-any-return]

    def close(self, **kwargs: Any) -> None:
        """Close every worker. Idempotent; safe after a failure."""
        state = getattr(self, "_state", State.CLOSED)
        if state in (State.CLOSED, State.CREATED):
            self._state = State.CLOSED
            return
        if state is State.READY and not self._pending:
            close = [self._core.encoder.encode([P.CLOSE])] * len(self._channels)
            with contextlib.suppress(SandboxError):  # stop() below makes sure
                for channel, payload in zip(self._channels, close, strict=True):
                    channel.send(payload, "close()", CLOSE_TIMEOUT)
                for channel in self._channels:
                    channel.receive("close()", CLOSE_TIMEOUT)
        self._state = State.CLOSED
        for sandbox in self._core.sandboxes:
            sandbox.child.stop()
        self._core.release_shm()
        for finalizer in self._finalizers:
            finalizer.detach()

    @property
    def closed(self) -> bool:  # type: ignore[override]
        return self._state is State.CLOSED

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
        return (
            f"<SandboxVectorEnv {self._label!r} num_envs={self.num_envs} "
            f"workers={len(self._channels)} {self._state.value}>"
        )
