"""The Ray backend: sandboxes on Ray cluster nodes, behind a frame link or a socket.

``RayBackend`` is a frozen description (picklable, comparable: it rides in ``EnvSpec.kwargs``
and in a pickled face). Its ``start`` places a sandbox on a host actor (``ray_host.Host``):
one actor holds up to ``envs_per_host`` sandboxes, and a new one is created when all are
full; an actor whose last sandbox stops is killed, so nothing is left after close. Host
actors are owned by the driver, so Ray ends them (and they their children) if it exits.

How frames travel (``data_plane="ray"``): the handle is a ``FrameLink``; the core's channel
posts each whole request frame as ``bytes`` in one actor call (``Host.exchange``) and waits
for the reply frame it returns, in the caller's own thread (no relay thread, no socket on
the driver). The driver never decodes a frame outside the core's safe reader, and Ray
carries only ``bytes`` (frames, and reports made by rlmesh's codec), so the driver never
unpickles anything a sandbox wrote. A vector worker's batch is one frame, so one call. With
``data_plane="tcp"`` there is no link: the host actor listens on its node for one connection
that proves itself with a 32-byte token it handed the driver through Ray, and starts the
child on that socket; the core reads and writes it directly, to the child.

Every wait is bounded: placing a host actor by ``placement_timeout`` (then a teaching error
that names the resources asked for and what the cluster has free), a start by the caller's
startup deadline, a stop and a crash report by the handle's ``Timeouts``. A link waits on a
call in slices, so closing the env ends a wait within one even with ``call_timeout=None``.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import math
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from .._config import DEFAULT_TIMEOUTS, Options, Resolved, Timeouts
from .._errors import (
    SandboxBuildError,
    SandboxCrashedError,
    SandboxStartupError,
    SandboxTimeoutError,
)
from .._wire import codec
from .ray_host import ALIVE, SID_BYTES, Host

__all__ = ["DATA_PLANES", "PLACEMENTS", "RayBackend", "RayWorker"]

DATA_PLANES = ("ray", "tcp")
PLACEMENTS = ("pack", "spread")
SLICE = 0.5  # seconds: a link's wait on a call, between looks at whether it should stop
REPORT_WAIT = 5.0  # seconds on top of the child's own bound, for a host's report to arrive
TCP_CONNECT_WAIT = 10.0  # seconds for the tcp data plane's connection


def ray_module() -> Any:
    """``ray``, or an ``ImportError`` that says how to get it."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            "backend=RayBackend(...) needs Ray: pip install 'rlmesh[ray]' (or 'ray')"
        ) from None
    return ray


@dataclass(frozen=True)
class RayBackend:
    """Run sandboxes on a Ray cluster: pass ``backend=RayBackend(...)`` to any face.

    A host actor per group of ``envs_per_host`` sandboxes builds (or reuses) the sandbox venv
    on its node with rlmesh's own cache and starts ordinary sandbox children there; frames
    cross as opaque bytes, never as pickled sandbox data.

    Args:
        address: The cluster to join when Ray is not initialised yet (``ray.init(address)``;
            ``None`` starts a local one). An initialised Ray is used as it is.
        resources: What one host actor reserves, as Ray resources (``{"CPU": 1}``;
            ``"CPU"``/``"GPU"`` and custom resources such as ``{"node:a": 1}``).
        envs_per_host: Sandboxes one host actor holds before another is placed.
        placement: ``"pack"`` (Ray's default placement) or ``"spread"`` (host actors over
            as many nodes as possible).
        max_restarts: Passed to Ray for each host actor (``-1``: without end). The
            sandboxes of a host that died are lost either way and report a crash. A host Ray
            restarts takes new sandboxes again (``auto_restart`` starts the lost ones there)
            while it still holds any; one that stays dead is replaced by a new placement.
        data_plane: ``"ray"`` (one actor call per frame; the host actor relays it to the
            child) or ``"tcp"`` (a token-authenticated socket to the host actor).
        placement_timeout: Seconds to wait for a host actor to be placed and started; then a
            ``SandboxStartupError`` that says what the cluster lacks.
    """

    address: str | None = None
    resources: Mapping[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    envs_per_host: int = 1
    placement: str = "pack"
    max_restarts: int = 0
    data_plane: str = "ray"
    placement_timeout: float = 60.0

    name = "ray"

    def __post_init__(self) -> None:
        if self.address is not None and not isinstance(self.address, str):
            raise TypeError(f"RayBackend(address=...) must be a str or None, not {self.address!r}")
        if not isinstance(self.resources, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            and v >= 0 for k, v in self.resources.items()
        ):  # fmt: skip
            raise TypeError(
                f"RayBackend(resources=...) must map resource names to non-negative numbers, "
                f"like {{'CPU': 1}}, not {self.resources!r}"
            )
        object.__setattr__(self, "resources", dict(sorted(self.resources.items())))
        for name in ("envs_per_host", "max_restarts"):
            value = getattr(self, name)
            low = 1 if name == "envs_per_host" else -1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"RayBackend({name}=...) must be an int >= {low}, not {value!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"RayBackend(placement=...) must be 'pack' or 'spread', not {self.placement!r}"
            )
        if self.data_plane not in DATA_PLANES:
            raise ValueError(
                f"RayBackend(data_plane=...) must be 'ray' (actor calls) or 'tcp' (a socket "
                f"to the host actor), not {self.data_plane!r}"
            )
        timeout = self.placement_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"RayBackend(placement_timeout=...) must be positive, not {timeout!r}")
        if importlib.util.find_spec("ray") is None:
            ray_module()

    def __hash__(self) -> int:
        return hash((self.address, tuple(self.resources.items()), self.envs_per_host,
                     self.placement, self.max_restarts, self.data_plane))  # fmt: skip

    async def start(self, options: Options, resolved: Resolved, label: str) -> RayWorker:
        """Place the sandbox on a host actor, build or reuse its venv there, start it."""
        deadline = anyio.current_effective_deadline()
        budget = options.startup_timeout
        if not math.isinf(deadline):
            budget = deadline - anyio.current_time()
        started: list[RayWorker] = []
        try:
            return await anyio.to_thread.run_sync(
                _start, self, options, resolved, label, max(budget, 0.001), started
            )
        except BaseException:  # cancelled after the thread made a worker: do not leave it
            if started:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(started[0].stop, 0.0)
            raise


# -- host actors -----------------------------------------------------------------------------


class _HostSlot:
    """A host actor (once placed) and the sandboxes it holds or is about to."""

    def __init__(self) -> None:
        self.actor: Any = None
        self.where: dict[str, Any] = {}
        self.used = 0
        self.dead = False
        self.stale = False  # its actor died and Ray may restart it: ask it before reuse
        self.placed = threading.Event()  # set when placing ended, placed or failed

    def lost(self, restartable: bool) -> None:
        """Its actor died: Ray restarts it (``max_restarts``) or it is gone for good."""
        if restartable:
            self.stale = True
        else:
            self.dead = True


class _Pool:
    """The host actors of one ``RayBackend`` in this process."""

    def __init__(self, backend: RayBackend) -> None:
        self.backend = backend
        self.hosts: list[_HostSlot] = []
        self.lock = threading.Lock()

    def acquire(self, timeout: float) -> _HostSlot:
        """A host with room for one more sandbox, placing a new one when all are full; a
        host being placed counts, so concurrent starts fill it instead of placing more."""
        end = time.monotonic() + timeout
        while True:
            with self.lock:
                free = [h for h in self.hosts if not h.dead and h.used < self.backend.envs_per_host]
                new = not free
                host = _HostSlot() if new else free[0]
                if new:
                    self.hosts.append(host)
                host.used += 1
            if new:
                try:
                    self._place(host, min(timeout, self.backend.placement_timeout), timeout)
                except BaseException:
                    self.release(host)
                    raise
                finally:
                    host.placed.set()
                return host
            placed = host.placed.wait(max(end - time.monotonic(), 0))
            if placed and not host.dead and self._revived(host, end):
                return host
            self.release(host)
            if time.monotonic() >= end:
                raise SandboxTimeoutError(
                    f"no Ray host actor was placed within {timeout:g} s (startup_timeout)"
                )

    def _revived(self, host: _HostSlot, end: float) -> bool:
        """Whether a host whose actor died (``stale``) answers again, restarted by Ray; one
        that does not within ``placement_timeout`` is dead. Its new place is in ``where``."""
        if not host.stale:
            return True
        ray = ray_module()
        wait = max(min(self.backend.placement_timeout, end - time.monotonic()), 0.001)
        try:
            host.where = codec.decode(ray.get(host.actor.ready.remote(), timeout=wait))
        except Exception:  # not within the wait, or its restarts are used up
            host.dead = True
            return False
        host.stale = False
        return True

    def _place(self, host: _HostSlot, timeout: float, startup: float) -> None:
        ray = ray_module()
        backend = self.backend
        resources = dict(backend.resources)
        options: dict[str, Any] = {
            "num_cpus": resources.pop("CPU", 0),
            "num_gpus": resources.pop("GPU", 0),
            "resources": resources,
            "max_concurrency": 4 * backend.envs_per_host + 4,
            "max_restarts": backend.max_restarts,
        }
        if backend.placement == "spread":
            options["scheduling_strategy"] = "SPREAD"
        actor = _actor_class().options(**options).remote()
        try:
            where = codec.decode(ray.get(actor.ready.remote(), timeout=timeout))
        except ray.exceptions.GetTimeoutError:
            host.dead = True
            ray.kill(actor)
            raise SandboxStartupError(_unplaced(ray, backend, timeout, startup)) from None
        except ray.exceptions.RayError as exc:
            host.dead = True
            ray.kill(actor)
            raise SandboxStartupError(f"a Ray host actor failed to start: {exc}") from None
        host.actor, host.where = actor, where

    def release(self, host: _HostSlot, *, graceful: bool = True) -> None:
        """One sandbox less on ``host``; the last one out kills the actor (after stopping
        its children, if ``graceful``: otherwise they end when the actor's pipes close)."""
        with self.lock:
            host.used -= 1
            if host.used > 0:
                return
            with contextlib.suppress(ValueError):
                self.hosts.remove(host)
        if host.actor is None:
            return  # never placed
        ray = ray_module()
        if graceful and not host.dead and ray.is_initialized():
            with contextlib.suppress(Exception):
                ray.get(host.actor.shutdown.remote(), timeout=DEFAULT_TIMEOUTS.kill_wait)
        with contextlib.suppress(Exception):
            ray.kill(host.actor)


def _unplaced(ray: Any, backend: RayBackend, timeout: float, startup: float) -> str:
    with contextlib.suppress(Exception):
        free = {k: round(v, 3) for k, v in sorted(ray.available_resources().items())
                if not k.startswith(("node:", "memory", "object_store"))}  # fmt: skip
    free_text = f"; the cluster has free: {free}" if "free" in locals() else ""
    what = "placement_timeout" if timeout < startup else "startup_timeout"
    return (
        f"no Ray node could place a sandbox host actor with resources {dict(backend.resources)} "
        f"within {timeout:g} s ({what}){free_text}. Close sandboxes you no longer use, ask "
        f"for less (RayBackend(resources={{'CPU': 0.5}})), put more sandboxes on each host "
        f"(envs_per_host=...), or add nodes to the cluster"
    )


_pools: dict[RayBackend, _Pool] = {}
_pools_lock = threading.Lock()
_actor_classes: list[Any] = []


def _pool(backend: RayBackend) -> _Pool:
    with _pools_lock:
        pool = _pools.get(backend)
        if pool is None:
            pool = _pools[backend] = _Pool(backend)
        return pool


def _actor_class() -> Any:
    """``ray_host.Host`` as a Ray actor class (made once per process).

    ``exchange`` records no Ray task events: one per step would reach the GCS, a single
    process for the whole cluster (measured: 13-16 us of GCS CPU per step with them, 3-4
    without), and bury the dashboard's task list in steps. Control calls keep theirs."""
    with _pools_lock:
        if not _actor_classes:
            ray = ray_module()
            # Ray < 2.10 has no such option (its ray.method asserts on unknown names)
            with contextlib.suppress(AssertionError, TypeError, ValueError):
                ray.method(enable_task_events=False)(Host.exchange)
            _actor_classes.append(ray.remote(Host))
        return _actor_classes[0]


def _connect(backend: RayBackend, budget: float) -> Any:
    """Ray, initialised: joins ``backend.address`` (after a bounded look that something
    listens there: Ray itself retries an unreachable cluster for minutes), or starts a
    local cluster."""
    ray = ray_module()
    if not ray.is_initialized():
        _reachable(backend.address, min(budget, TCP_CONNECT_WAIT))
        ray.init(address=backend.address)
    return ray


def _reachable(address: str | None, timeout: float) -> None:
    """Raise ``SandboxStartupError`` unless ``host:port`` (or ``ray://host:port``) accepts a
    connection within ``timeout`` s; other forms (``None``, ``"auto"``) are Ray's to find."""
    if address is None:
        return
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SandboxStartupError(
            f"no Ray cluster answers at {address!r} ({exc}); start one there "
            "(ray start --head), fix RayBackend(address=...), or pass address=None for a "
            "local cluster"
        ) from None


# -- the worker handle -----------------------------------------------------------------------


def _start(
    backend: RayBackend,
    options: Options,
    resolved: Resolved,
    label: str,
    budget: float,
    started: list[RayWorker],
) -> RayWorker:
    """``RayBackend.start``, blocking (in a worker thread), within ``budget`` seconds."""
    begun = time.monotonic()
    ray = _connect(backend, budget)
    pool = _pool(backend)
    host = pool.acquire(budget)
    try:
        left = max(budget - (time.monotonic() - begun), 0.001)
        values = {name: value for name, value in options.items() if name != "backend"}
        conn = None
        try:
            listener = 0
            if backend.data_plane == "tcp":
                plane = codec.decode(ray.get(host.actor.listen.remote(), timeout=left))
                listener = int(plane["id"])
            call = host.actor.start.remote(values, resolved, label, left, listener)
            if listener:
                conn = _connect_tcp(host, plane, label, left)
            report = codec.decode(ray.get(call, timeout=left + REPORT_WAIT))
        except ray.exceptions.GetTimeoutError:
            raise SandboxTimeoutError(
                f"the Ray host on node {host.where.get('ip')} did not start the sandbox for "
                f"{label!r} within startup_timeout={options.startup_timeout:g} s"
            ) from None
        except ray.exceptions.RayError as exc:
            host.lost(backend.max_restarts != 0)
            raise SandboxStartupError(
                f"the Ray host actor for {label!r} died while starting it: {exc}", source=label
            ) from None
        if "error" in report:
            raise _start_error(report, label, host.where)
    except BaseException:
        if conn is not None:
            conn.close()
        pool.release(host)
        raise
    worker = RayWorker(pool, host, int(report["id"]), label, report, options.timeouts, conn)
    started.append(worker)
    worker.begin()
    return worker


def _connect_tcp(host: _HostSlot, plane: dict[str, Any], label: str, left: float) -> socket.socket:
    """The tcp data plane's connection to the host, token sent."""
    address = (str(host.where.get("ip")), int(plane["port"]))
    try:
        conn = socket.create_connection(address, timeout=min(left, TCP_CONNECT_WAIT))
    except OSError as exc:
        raise SandboxStartupError(
            f"the driver could not reach the Ray host of {label!r} at {address[0]}:"
            f"{address[1]} for data_plane='tcp' ({exc}); open that node's ports to the "
            "driver, or use data_plane='ray'",
            source=label,
        ) from None
    try:
        conn.sendall(bytes(plane["token"]))
        conn.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        conn.close()
        raise
    return conn


def _start_error(report: dict[str, Any], label: str, where: dict[str, Any]) -> Exception:
    message = f"on Ray node {where.get('ip')}: {report['message']}"
    kind = report["error"]
    if kind == "SandboxBuildError":
        return SandboxBuildError(message, source=label)
    if kind == "SandboxTimeoutError":
        return SandboxTimeoutError(f"the sandbox for {label!r} was not ready {message}")
    return SandboxStartupError(f"the sandbox for {label!r} could not start {message}", source=label)


class RayWorker:
    """A sandbox on a Ray host actor, as the core holds it (a ``WorkerHandle``).

    ``data_plane="ray"``: the worker is its own ``FrameLink`` (``link``): each request frame
    is one ``Host.exchange`` call, made by the thread that waits for the reply, so a step
    costs one actor call and no hop through another thread. ``data_plane="tcp"``: the core
    reads and writes the socket to the child (``to_child``/``from_child``), with no link.
    """

    def __init__(
        self,
        pool: _Pool,
        host: _HostSlot,
        sid: int,
        label: str,
        report: dict[str, Any],
        timeouts: Timeouts,
        conn: socket.socket | None = None,
    ) -> None:
        self.label = label
        self.pid: int | None = None  # the child runs on another node's pid space
        self.remote_pid = int(report["pid"])
        self.timeouts = timeouts
        self.details: dict[str, Any] = {
            "backend": "ray", **report["details"], "node": host.where.get("node"),
            "node_ip": host.where.get("ip"), "remote_pid": self.remote_pid,
        }  # fmt: skip
        self._pool = pool
        self._host = host
        self._sid = sid
        self._address = sid.to_bytes(SID_BYTES, "little")  # in front of each frame
        self._conn = conn  # tcp: the connection to the child
        self.to_child = self.from_child = -1 if conn is None else conn.fileno()
        self.link: RayWorker | None = self if conn is None else None
        self._calls: collections.deque[Any] = collections.deque()  # exchanges posted
        self._replies: dict[Any, bytes] = {}  # exchanges whose reply is in, not yet taken
        self._closing = threading.Event()
        self._host_error: str | None = None  # the host actor died: Ray's words
        self._code: int | None = None
        self._reported: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def begin(self) -> None:
        """Ask for the greeting (the link's first reply); the tcp data plane has no link."""
        if self.link is not None:
            self.post(b"")

    @property
    def returncode(self) -> int | None:
        return self._code

    # -- FrameLink ---------------------------------------------------------------------------

    def post(self, frame: bytes) -> None:
        ref = None
        if self._host_error is None and not self._closing.is_set():
            try:
                ref = self._host.actor.exchange.remote(self._address + frame)
            except Exception as exc:  # Ray is gone (shut down), or the actor is
                self._lost(exc)
        with self._lock:
            self._calls.append(ref)

    def wait(self, timeout: float | None) -> bool:
        ray = ray_module()
        with self._lock:
            ref = self._calls[0] if self._calls else None
            if ref is None or ref in self._replies:
                return True  # nothing posted, or the host is lost: take() says so
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = SLICE if end is None else min(SLICE, max(end - time.monotonic(), 0))
            try:
                reply = bytes(ray.get(ref, timeout=wait))
            except ray.exceptions.GetTimeoutError:
                if self._closing.is_set():
                    return True  # take() reports the end
                if end is not None and time.monotonic() >= end:
                    return False
                continue
            except ray.exceptions.RayError as exc:
                self._lost(exc)
                return True
            with self._lock:
                if self._calls and self._calls[0] is ref:
                    self._replies[ref] = reply
            return True

    def take(self) -> tuple[bytes, bool]:
        with self._lock:
            ref = self._calls.popleft() if self._calls else None
            reply = self._replies.pop(ref, None) if ref is not None else None
        if not reply:
            return b"", False  # the host is lost, or the worker is being stopped
        return reply[1:], reply[0] == ALIVE

    def _lost(self, exc: BaseException) -> None:
        text = str(exc).strip()
        self._host_error = text.splitlines()[0] if text else repr(exc)
        self._host.lost(self._pool.backend.max_restarts != 0)

    # -- WorkerHandle ------------------------------------------------------------------------

    def _call(self, method: str, *args: Any, timeout: float) -> bytes | None:
        """One control call to the host; ``None`` if its reply did not come in ``timeout``."""
        ray = ray_module()
        ref = getattr(self._host.actor, method).remote(self._sid, *args)
        try:
            return bytes(ray.get(ref, timeout=timeout))
        except ray.exceptions.GetTimeoutError:
            return None

    def output_tail(self) -> str:
        if self._reported is not None:
            return str(self._reported.get("tail", ""))
        with contextlib.suppress(Exception):
            data = self._call("tail", timeout=self.timeouts.output_wait + REPORT_WAIT)
            if data is not None:
                return str(codec.decode(data))
        return ""

    def whom(self) -> str:
        return f"on Ray node {self.details.get('node_ip')}, pid {self.remote_pid}"

    def crashed_error(self, what: str, *, wait: float | None = None) -> SandboxCrashedError:
        where = self.whom()
        report: dict[str, Any] = {}
        if self._host_error is None:  # the report call finds a dead host out, too
            report = self._report(what, self.timeouts.crash_wait if wait is None else wait)
        if self._host_error is not None:
            return SandboxCrashedError(
                f"the sandbox for {self.label!r} ({where}) was lost during {what}: its Ray host "
                f"actor died ({self._host_error}); start a new env, or pass auto_restart=True "
                "(RayBackend(max_restarts=...) lets Ray restart the host)",
                source=self.label,
            )
        if report.get("gone") and report.get("restarted"):
            self._host.lost(True)  # the next start asks where the restarted host runs
            return SandboxCrashedError(
                f"the sandbox for {self.label!r} ({where}) was lost during {what}: its Ray host "
                "actor died and Ray restarted it (max_restarts) without its sandboxes; start a "
                "new env, or pass auto_restart=True (the new sandbox goes to the restarted host)",
                source=self.label,
            )
        from .process import describe_exit

        code = report.get("exit_code")
        self._code = code
        return SandboxCrashedError(
            f"the sandbox for {self.label!r} ({where}) died during {what}: {describe_exit(code)}",
            source=self.label,
            exit_code=code,
            stderr_tail=str(report.get("tail", "")),
        )

    def _report(self, what: str, wait: float) -> dict[str, Any]:
        if self._reported is None:
            report: dict[str, Any] = {}
            ray = ray_module()
            bound = wait + self.timeouts.output_wait + REPORT_WAIT
            try:
                data = self._call("report", what, wait, timeout=bound)
                if data is not None:
                    report = codec.decode(data)
            except ray.exceptions.RayError as exc:  # the host died too (tcp: only now seen)
                self._lost(exc)
            except Exception:  # an undecodable report, Ray shut down: report what is known
                pass
            self._reported = report
        return self._reported

    def peer_fd_path(self, fd: int) -> str | None:
        return None  # the worker's memory is on another node: no shared memory

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self._host.actor.kill.remote(self._sid)

    def abandon(self) -> None:
        self.kill()
        self._hang_up()
        self._finish(0.0, wait=False)

    def stop(self, grace: float | None = None) -> int | None:
        self._hang_up()
        return self._finish(grace, wait=True)

    def _hang_up(self) -> None:
        """Waits on the link end within a slice; the child sees end-of-file on tcp."""
        self._closing.set()
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)  # every dup of the core's fd sees it

    def _finish(self, grace: float | None, *, wait: bool) -> int | None:
        with self._lock:
            if self._stopped:
                return self._code
            self._stopped = True
        t = self.timeouts
        bound = (t.stop_grace if grace is None else grace) + t.term_grace + t.kill_wait
        if wait and self._host_error is None:
            with contextlib.suppress(Exception):
                data = self._call("stop", grace, timeout=bound + t.drain_wait + REPORT_WAIT)
                if data is not None:
                    code = codec.decode(data)
                    if self._code is None and isinstance(code, int):
                        self._code = code
        else:
            with contextlib.suppress(Exception):
                self._host.actor.stop.remote(self._sid, 0.0)
        if self._conn is not None:
            self._conn.close()
        self._pool.release(self._host, graceful=wait)
        return self._code
