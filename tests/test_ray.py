"""The Ray backend (issue 15) on a local Ray cluster bound to loopback: one cluster per
session (``ray_session``, in conftest), fractional resources so several host actors fit on 2 cores.

What is checked: seeded trajectories through Ray equal the local backend's (single and
vector, sync, asyncio and trio, the three autoreset modes, 2 hosts x 4 envs); the driver
never unpickles what a sandbox wrote; crashes of a child and of a host actor; timeouts;
oversubscription; the venv cache shared by host actors and across Ray sessions; nothing
left after close or after the driver exits.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode
from processes import aclose_during_a_step, close_during_a_step, wait_gone
from ray_cluster import start_ray
from sandbox_options import TEST_ENVS

from rlmesh import (
    ProtocolError,
    SandboxClosedError,
    SandboxCrashedError,
    SandboxStartupError,
    SandboxTimeoutError,
)
from rlmesh.numpy import (
    AsyncSandboxEnv,
    AsyncSandboxVectorEnv,
    SandboxEnv,
    SandboxVectorEnv,
    State,
)

ray = pytest.importorskip("ray")  # the nox tests session installs the ray extra

from rlmesh.ray import RayBackend  # noqa: E402

pytestmark = [pytest.mark.sandbox, pytest.mark.ray]

FAULTY = "rlmesh_test/Faulty-v0"
HOST = {"CPU": 0.1}
ONE_PER_HOST = RayBackend(resources=HOST)
PLANES = ["ray", "tcp"]
STEPS = 40
@pytest.mark.skipif(not os.environ.get("RLMESH_TEST_CONFINED"), reason="nox confines it")
def test_the_cluster_sees_loopback_alone(ray_session: Any) -> None:
    """Under ``nox -s tests`` these tests run in a network namespace with only ``lo``."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    assert [line.split(":")[0].strip() for line in lines] == ["lo"]
    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"


def wait_until(what: Callable[[], bool], timeout: float) -> bool:
    """Whether ``what()`` holds within ``timeout`` s (Ray frees resources asynchronously)."""
    end = time.monotonic() + timeout
    while not what():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def cpus_free() -> bool:
    return bool(ray.available_resources().get("CPU", 0) >= 2.0 - 1e-6)


@pytest.fixture
def no_leftovers(ray_session: Any) -> Iterator[None]:
    """After the test, every host actor's CPU share is back: no actor is left."""
    yield
    assert wait_until(cpus_free, 15.0), ray.available_resources()


def play_single(env: Any, seed: int) -> list[Any]:
    steps = [env.reset(seed=seed)]
    for t in range(STEPS):
        out = env.step(t % 2)
        steps.append(out)
        if out[2] or out[3]:
            steps.append(env.reset())
    return steps


async def aplay_single(env: Any, seed: int) -> list[Any]:
    steps = [await env.reset(seed=seed)]
    for t in range(STEPS):
        out = await env.step(t % 2)
        steps.append(out)
        if out[2] or out[3]:
            steps.append(await env.reset())
    return steps


_local: dict[Any, list[Any]] = {}


def local_single() -> list[Any]:
    if "single" not in _local:
        with SandboxEnv("CartPole-v1") as env:
            _local["single"] = play_single(env, 7)
            _local["key"] = env.sandbox.venv_key
    return _local["single"]


def same(a: Any, b: Any) -> bool:
    return bool(data_equivalence(a, b))


# -- equal trajectories ----------------------------------------------------------------------


def test_seeded_single_trajectory_equals_the_local_backends(no_leftovers: None) -> None:
    expected = local_single()
    with SandboxEnv("CartPole-v1", backend=ONE_PER_HOST) as env:
        assert env.sandbox.backend == "ray"
        assert env.sandbox.venv_key == _local["key"]  # backend= is not in the cache key
        assert env.pid is None  # the worker's pid is another node's
        assert same(play_single(env, 7), expected)


def test_steps_record_no_ray_task_events_and_control_calls_do(no_leftovers: None) -> None:
    """A task event per step would reach the GCS (one process for the cluster) and bury the
    dashboard's task list. After the steps, a control call (``tail``) runs on the same
    actor, and its event is flushed after any the steps made."""

    def count(name: str) -> int:
        return sum(event.get("name") == name for event in ray.timeline())

    tails = count("tail")
    with SandboxEnv("CartPole-v1", backend=ONE_PER_HOST) as env:
        env.reset(seed=0)
        for t in range(20):
            env.step(t % 2)
        env._core.sandbox.child.output_tail()
        assert wait_until(lambda: count("tail") > tails, 30.0), "no task event came at all"
    assert count("exchange") == 0


def test_a_users_ray_task_runs_a_sandbox_through_ray_backend(no_leftovers: None) -> None:
    """Rollout workers are often Ray tasks or actors themselves: inside one, RayBackend uses
    the Ray it runs in and places its host actor from there (and removes it at close)."""

    def rollout(backend: RayBackend) -> list[Any]:
        with SandboxEnv("CartPole-v1", backend=backend) as env:
            return play_single(env, 7)

    expected = local_single()
    this = sys.modules[__name__]  # not importable on Ray's workers: send its code along
    ray.cloudpickle.register_pickle_by_value(this)
    try:
        task = ray.remote(num_cpus=0.1)(rollout)
        assert same(ray.get(task.remote(ONE_PER_HOST), timeout=120), expected)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(this)


@pytest.mark.anyio
async def test_seeded_async_single_trajectory_equals_the_local_backends(
    no_leftovers: None,
) -> None:
    expected = await anyio.to_thread.run_sync(local_single)
    async with AsyncSandboxEnv("CartPole-v1", backend=ONE_PER_HOST) as env:
        assert same(await aplay_single(env, 7), expected)


def play_vector(env: Any, mode: AutoresetMode) -> list[Any]:
    steps = [env.reset(seed=3)]
    for t in range(STEPS):
        out = env.step(np.array([(t + i) % 2 for i in range(8)]))
        steps.append(out)
        done = out[2] | out[3]
        if mode is AutoresetMode.DISABLED and done.any():  # the caller resets what ended
            steps.append(env.reset(options={"reset_mask": done}))
    return steps


async def aplay_vector(env: Any, mode: AutoresetMode) -> list[Any]:
    steps = [await env.reset(seed=3)]
    for t in range(STEPS):
        out = await env.step(np.array([(t + i) % 2 for i in range(8)]))
        steps.append(out)
        done = out[2] | out[3]
        if mode is AutoresetMode.DISABLED and done.any():
            steps.append(await env.reset(options={"reset_mask": done}))
    return steps


def local_vector(mode: AutoresetMode) -> list[Any]:
    if mode not in _local:
        with SandboxVectorEnv("CartPole-v1", num_envs=8, num_workers=2,
                              autoreset_mode=mode) as env:  # fmt: skip
            _local[mode] = play_vector(env, mode)
    return _local[mode]


def host_actors(env: Any) -> set[str]:
    return {s.child._host.actor._actor_id.hex() for s in env._core.sandboxes}


MODES = list(AutoresetMode)


def test_seeded_vector_batches_equal_the_local_backends_on_two_hosts(
    no_leftovers: None,
) -> None:
    mode = AutoresetMode.NEXT_STEP
    with SandboxVectorEnv("CartPole-v1", num_envs=8, num_workers=2, autoreset_mode=mode,
                          backend=ONE_PER_HOST) as env:  # fmt: skip
        assert len(host_actors(env)) == 2  # 2 hosts x 4 envs
        assert same(play_vector(env, mode), local_vector(mode))


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
async def test_seeded_async_vector_batches_equal_the_local_backends(
    mode: AutoresetMode, no_leftovers: None
) -> None:
    expected = await anyio.to_thread.run_sync(local_vector, mode)
    async with AsyncSandboxVectorEnv("CartPole-v1", num_envs=8, num_workers=2,
                                     autoreset_mode=mode, backend=ONE_PER_HOST) as env:  # fmt: skip
        assert len(host_actors(env)) == 2
        assert env.metadata["autoreset_mode"] is mode
        assert same(await aplay_vector(env, mode), expected)


def test_envs_per_host_puts_workers_on_one_host_actor(no_leftovers: None) -> None:
    backend = RayBackend(resources=HOST, envs_per_host=2)
    with SandboxVectorEnv("CartPole-v1", num_envs=4, num_workers=2, backend=backend) as env:
        assert len(host_actors(env)) == 1
        env.reset(seed=1)
        env.step(np.zeros(4, dtype=np.int64))


# -- safety ----------------------------------------------------------------------------------


@pytest.fixture
def pickle_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every buffer the driver unpickles from here on (pickle, cloudpickle, Ray's own)."""
    import cloudpickle
    import ray.cloudpickle

    seen: list[bytes] = []
    for module in {pickle, cloudpickle, ray.cloudpickle}:
        real = module.loads

        def spy(data: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            seen.append(bytes(data))
            return _real(data, *args, **kwargs)

        monkeypatch.setattr(module, "loads", spy)
    return seen


class _NeedsPickle:
    pass


def test_a_hostile_envs_bytes_never_reach_pickle_loads_on_the_driver(
    no_leftovers: None, pickle_calls: list[bytes]
) -> None:
    sys.path.insert(0, TEST_ENVS["packages"][0])
    try:
        from rlmesh_test_envs import evil_pickle
    finally:
        sys.path.remove(TEST_ENVS["packages"][0])
    evil = evil_pickle()
    marker = Path("/tmp/rlmesh-evil-was-unpickled")
    marker.unlink(missing_ok=True)
    with SandboxEnv(FAULTY, mode="evilbytes", backend=ONE_PER_HOST, **TEST_ENVS) as env:
        env.reset()
        for _ in range(3):
            *_, info = env.step(0)
    assert info["pickle"] == evil  # it crossed, as bytes
    with SandboxEnv(FAULTY, mode="evilframe", backend=ONE_PER_HOST, **TEST_ENVS) as env:
        env.reset()
        with pytest.raises(ProtocolError):
            env.step(0)  # a pickle where a msgpack frame belongs
    assert not marker.exists()
    assert not [data for data in pickle_calls if evil in data]
    # the spies are live: a value Ray has to pickle is seen
    ray.get(ray.put(_NeedsPickle()))
    assert pickle_calls


# -- crashes, timeouts, oversubscription -----------------------------------------------------


def test_a_crashed_child_is_the_usual_error_and_auto_restart_replaces_it(
    no_leftovers: None,
) -> None:
    with SandboxEnv(FAULTY, mode="exit", backend=ONE_PER_HOST, auto_restart=True,
                    **TEST_ENVS) as env:  # fmt: skip
        env.reset()
        with pytest.raises(SandboxCrashedError) as caught:
            env.step(0)
        assert caught.value.exit_code == 3
        assert "goodbye from the env" in caught.value.stderr_tail
        node_ip = ray.nodes()[0]["NodeManagerAddress"]
        assert f"on Ray node {node_ip}, pid {env._core.sandbox.child.remote_pid}" in str(
            caught.value
        )
        assert env.state is State.BROKEN
        _, info = env.reset()
        assert info["rlmesh_restarted"] is True and env.restarts == 1


@pytest.mark.parametrize("plane", PLANES)
def test_a_dead_host_actor_is_a_crash_and_auto_restart_places_a_new_one(
    no_leftovers: None, plane: str
) -> None:
    """On tcp too: the child speaks to the driver, but ends with the host actor that reads
    its output, and the driver's error names the host."""
    backend = RayBackend(resources=HOST, data_plane=plane)
    with SandboxEnv("CartPole-v1", backend=backend, auto_restart=True) as env:
        env.reset(seed=1)
        worker = env._core.sandbox.child
        remote_pid = worker.remote_pid
        os.kill(worker._host.where["pid"], signal.SIGKILL)  # a crash: Ray cleans nothing up
        assert wait_gone(remote_pid, 10.0), "the child outlived its host actor"
        with pytest.raises(SandboxCrashedError, match="Ray host actor died"):
            env.step(0)
        _, info = env.reset(seed=1)
        assert info["rlmesh_restarted"] is True
        env.step(0)


def test_a_host_actor_that_ray_restarts_takes_new_sandboxes_and_old_ids_reach_nothing(
    no_leftovers: None,
) -> None:
    """max_restarts: Ray restarts a host actor killed under two sandboxes. Each reports the
    loss; a replacement goes to the restarted actor (no new placement), and the first
    sandbox's id, from before the restart, does not reach the replacement's child (a new
    incarnation's ids start at a random point: both would have been 1)."""
    backend = RayBackend(resources=HOST, envs_per_host=2, max_restarts=1)
    with (
        SandboxEnv("CartPole-v1", backend=backend) as first,
        SandboxEnv("CartPole-v1", backend=backend, auto_restart=True) as second,
    ):
        first.reset(seed=0)
        second.reset(seed=0)
        host = first._core.sandbox.child._host
        assert second._core.sandbox.child._host is host
        old_pid, old_epoch = host.where["pid"], host.where["epoch"]
        children = [env._core.sandbox.child.remote_pid for env in (first, second)]
        os.kill(old_pid, signal.SIGKILL)
        assert all(wait_gone(pid, 10.0) for pid in children), "a child outlived its host"
        with pytest.raises(SandboxCrashedError, match="Ray host actor died"):
            second.step(0)
        _, info = second.reset(seed=0)
        assert info["rlmesh_restarted"] is True
        assert second._core.sandbox.child._host is host, "a new host was placed"
        assert host.where["pid"] != old_pid and host.where["epoch"] != old_epoch
        assert second._core.sandbox.child.details["remote_pid"] not in children
        second.step(0)
        with pytest.raises(SandboxCrashedError, match="Ray restarted it"):
            first.step(0)
        second.step(1)


def test_auto_restart_replaces_only_the_crashed_vector_worker_on_ray(no_leftovers: None) -> None:
    with SandboxVectorEnv(FAULTY, num_envs=4, num_workers=2, auto_restart=True,
                          backend=ONE_PER_HOST, **TEST_ENVS) as env:  # fmt: skip
        env.reset(seed=0)
        before = [s.child.remote_pid for s in env._core.sandboxes]
        env.set_attr("mode", ["ok", "ok", "exit", "ok"])
        with pytest.raises(SandboxCrashedError, match=r"\[worker 1/2\]"):
            env.step(np.zeros(4, dtype=np.int64))
        obs, infos = env.reset(seed=1)
        after = [s.child.remote_pid for s in env._core.sandboxes]
        assert after[0] == before[0] and after[1] != before[1]
        assert infos["rlmesh_restarted"].tolist() == [False, False, True, True]
        assert env.step(np.zeros(4, dtype=np.int64))[0].shape == (4, 2)


def test_call_timeout_stops_a_stuck_sandbox(no_leftovers: None) -> None:
    with SandboxEnv(FAULTY, mode="sleep", backend=ONE_PER_HOST, call_timeout=1.0,
                    **TEST_ENVS) as env:  # fmt: skip
        env.reset()
        remote_pid = env._core.sandbox.child.remote_pid
        begun = time.monotonic()
        with pytest.raises(SandboxTimeoutError) as caught:
            env.step(0)
        assert time.monotonic() - begun < 5
        assert env.state is State.BROKEN
        assert f", pid {remote_pid}) did not answer step() within 1 s" in str(caught.value)
        assert "on Ray node " in str(caught.value) and "pid None" not in str(caught.value)
        assert wait_gone(remote_pid, 10.0), "the timed-out child was not killed"




@pytest.mark.parametrize("plane", PLANES)
def test_close_from_another_thread_ends_a_step_in_flight(no_leftovers: None, plane: str) -> None:
    backend = RayBackend(resources=HOST, data_plane=plane)
    env = SandboxEnv(FAULTY, mode="sleep", factor=600, backend=backend, **TEST_ENVS)
    env.reset()
    remote_pid = env._core.sandbox.child.remote_pid
    errors = close_during_a_step(env, 15.0)
    assert len(errors) == 1 and isinstance(errors[0], SandboxClosedError), errors
    assert wait_gone(remote_pid, 10.0)


@pytest.mark.anyio
async def test_aclose_from_another_task_ends_a_step_in_flight(no_leftovers: None) -> None:
    """On the link (the ray plane); the tcp plane's channel is the local one's."""
    env = await AsyncSandboxEnv.create(FAULTY, mode="sleep", factor=600, backend=ONE_PER_HOST,
                                       **TEST_ENVS)  # fmt: skip
    await env.reset()
    seen = await aclose_during_a_step(env, 20)
    assert len(seen) == 1 and "in flight" in str(seen[0])


@pytest.mark.anyio
async def test_a_cancelled_step_leaves_the_stream_in_step(no_leftovers: None) -> None:
    """The reply to a cancelled call is drained before the next call's: it stays queued on
    the link, because the abandoned wait took nothing."""
    async with AsyncSandboxEnv(FAULTY, mode="sleep", factor=0.5, backend=ONE_PER_HOST,
                               **TEST_ENVS) as env:  # fmt: skip
        await env.reset()
        *_, first = await env.step(0)
        with anyio.move_on_after(0.05):
            await env.step(0)  # cancelled while the env sleeps
        *_, info = await env.step(0)  # the stale reply was drained first
        assert info["t"] == first["t"] + 2
        obs, info = await env.reset(options={"after": "cancel"})
        assert info == {"options": {"after": "cancel"}}


def test_an_address_where_no_cluster_answers_fails_at_once() -> None:
    """Ray itself retries an unreachable cluster for minutes; rlmesh looks first (in a
    fresh process: this one has joined the session's cluster already)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed below: nothing listens there
    code = textwrap.dedent(f"""
        import time
        from rlmesh import SandboxStartupError
        from rlmesh.numpy import SandboxEnv
        from rlmesh.ray import RayBackend
        begun = time.monotonic()
        try:
            SandboxEnv("CartPole-v1", backend=RayBackend(address="127.0.0.1:{port}"))
        except SandboxStartupError as exc:
            print(round(time.monotonic() - begun, 3), exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    took, _, message = done.stdout.partition(" ")
    assert f"no Ray cluster answers at '127.0.0.1:{port}'" in message
    assert "ray start --head" in message
    assert float(took) < 10


def test_oversubscription_is_a_teaching_error_after_the_timeout(no_leftovers: None) -> None:
    backend = RayBackend(resources={"CPU": 5}, placement_timeout=2.0)
    begun = time.monotonic()
    with pytest.raises(SandboxStartupError, match=r"no Ray node could place.*'CPU': 5") as caught:
        SandboxEnv("CartPole-v1", backend=backend)
    assert time.monotonic() - begun < 10
    assert "the cluster has free" in str(caught.value) and "envs_per_host" in str(caught.value)


def test_close_leaves_no_process_and_no_actor(no_leftovers: None) -> None:
    env = SandboxEnv("CartPole-v1", backend=ONE_PER_HOST)
    env.reset()
    remote_pid = env._core.sandbox.child.remote_pid
    env.close()
    env.close()
    assert wait_gone(remote_pid, 5.0)
    assert wait_until(cpus_free, 15.0)


@pytest.mark.parametrize("plane", PLANES)
def test_an_env_dropped_unclosed_leaves_nothing(no_leftovers: None, plane: str) -> None:
    import gc

    env = SandboxEnv("CartPole-v1", backend=RayBackend(resources=HOST, data_plane=plane))
    env.reset()
    remote_pid = env._core.sandbox.child.remote_pid
    del env
    gc.collect()
    assert wait_gone(remote_pid, 10.0), "the sandbox outlived its garbage-collected env"


@pytest.mark.parametrize("plane", PLANES)
def test_a_driver_that_exits_without_closing_leaves_nothing(ray_session: Any, plane: str) -> None:
    address = ray.get_runtime_context().gcs_address
    code = textwrap.dedent(f"""
        import os, sys, ray
        ray.init(address={address!r}, log_to_driver=False)
        from rlmesh.numpy import SandboxEnv
        from rlmesh.ray import RayBackend
        env = SandboxEnv("CartPole-v1",
                         backend=RayBackend(resources={HOST!r}, data_plane={plane!r}))
        env.reset()
        print(env._core.sandbox.child.remote_pid, flush=True)
        os._exit(0)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    remote_pid = int(done.stdout.split()[-1])
    assert wait_gone(remote_pid, 30.0), "the sandbox outlived its driver"
    assert wait_until(cpus_free, 30.0)


# -- the cache -------------------------------------------------------------------------------


def test_two_host_actors_build_a_venv_once_and_a_new_ray_session_reuses_it(
    no_leftovers: None,
) -> None:
    from rlmesh._backends import venv
    from rlmesh._core.spec import make_spec

    packages = ["gymnasium>=1.0.0"]  # a requirement set no other test uses: its own venv
    spec = make_spec("CartPole-v1", packages=packages)
    key = venv.venv_key(venv.key_inputs(spec.options, spec.source.resolve(spec.options)))
    final = venv._cache.venvs_dir() / key
    if final.exists():
        assert venv._cache.discard(final)
    with SandboxVectorEnv("CartPole-v1", num_envs=2, num_workers=2, packages=packages,
                          backend=ONE_PER_HOST) as env:  # fmt: skip
        assert len(host_actors(env)) == 2
        keys = {s.child.details["venv_key"] for s in env._core.sandboxes}
        built = (final / venv._cache.MARKER).read_text()
    assert keys == {key}
    assert not list(final.parent.glob(f".tmp-{key}-*"))
    ray.shutdown()  # a new Ray session, same machine and cache
    start_ray()
    with SandboxEnv("CartPole-v1", packages=packages, backend=ONE_PER_HOST) as env:
        assert env.sandbox.venv_key == key
    assert (final / venv._cache.MARKER).read_text() == built  # reused, not rebuilt


# -- options ---------------------------------------------------------------------------------


def test_a_face_with_a_ray_backend_pickles_to_an_equivalent_one(no_leftovers: None) -> None:
    with SandboxEnv("CartPole-v1", backend=ONE_PER_HOST) as env:
        again = pickle.loads(pickle.dumps(env))
        with again:
            assert again.sandbox.backend == "ray"
            assert same(again.reset(seed=2), env.reset(seed=2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"data_plane": "grpc"}, "data_plane"),
        ({"placement": "everywhere"}, "placement"),
        ({"envs_per_host": 0}, "envs_per_host"),
        ({"resources": {"CPU": -1}}, "resources"),
        ({"placement_timeout": 0}, "placement_timeout"),
    ],
)
def test_bad_ray_backend_arguments_say_what_is_wrong(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        RayBackend(**kwargs)


def test_backend_must_be_a_backend() -> None:
    with pytest.raises(TypeError, match=r"backend must be None .*rlmesh.ray.RayBackend"):
        SandboxEnv("CartPole-v1", backend="ray")


def test_backend_is_host_only_and_not_in_the_cache_key() -> None:
    from rlmesh._backends import venv
    from rlmesh._core.spec import make_spec

    plain, on_ray = make_spec("CartPole-v1"), make_spec("CartPole-v1", backend=ONE_PER_HOST)
    assert venv.key_inputs(plain.options, plain.source.resolve(plain.options)) == (
        venv.key_inputs(on_ray.options, on_ray.source.resolve(on_ray.options))
    )
    assert pickle.loads(pickle.dumps(ONE_PER_HOST)) == ONE_PER_HOST


# -- the tcp data plane ----------------------------------------------------------------------

TCP = RayBackend(resources=HOST, data_plane="tcp")


def test_tcp_data_plane_trajectory_equals_the_local_backends(no_leftovers: None) -> None:
    expected = local_single()
    with SandboxEnv("CartPole-v1", backend=TCP) as env:
        assert same(play_single(env, 7), expected)


@pytest.mark.anyio
async def test_tcp_data_plane_vector_batches_equal_the_local_backends(
    no_leftovers: None,
) -> None:
    mode = AutoresetMode.SAME_STEP
    expected = await anyio.to_thread.run_sync(local_vector, mode)
    async with AsyncSandboxVectorEnv("CartPole-v1", num_envs=8, num_workers=2,
                                     autoreset_mode=mode, backend=TCP) as env:  # fmt: skip
        assert same(await aplay_vector(env, mode), expected)


def test_tcp_crash_is_the_usual_error(no_leftovers: None) -> None:
    with SandboxEnv(FAULTY, mode="exit", backend=TCP, **TEST_ENVS) as env:
        env.reset()
        with pytest.raises(SandboxCrashedError) as caught:
            env.step(0)
        assert caught.value.exit_code == 3 and "goodbye" in caught.value.stderr_tail


def test_the_tcp_listener_takes_only_the_token_holder() -> None:
    import socket
    import threading

    from rlmesh._backends import ray_host

    token = os.urandom(ray_host.TOKEN_BYTES)
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    taken: list[Any] = []
    serve = threading.Thread(target=lambda: taken.append(ray_host.accept(listener, token, 20)))
    serve.start()
    with socket.create_connection(address, timeout=10) as stranger:
        stranger.sendall(b"x" * ray_host.TOKEN_BYTES)
        assert stranger.recv(1) == b""  # turned away
    with socket.create_connection(address, timeout=10) as driver:
        driver.sendall(token + b"request")
        serve.join(10)
        (conn,) = taken
        assert conn is not None and conn.recv(7, socket.MSG_WAITALL) == b"request"
        conn.sendall(b"reply")
        assert driver.recv(5, socket.MSG_WAITALL) == b"reply"
        conn.close()
    listener.close()
    with socket.create_server(("127.0.0.1", 0)) as idle:  # nobody comes: None, in time
        assert ray_host.accept(idle, token, 0.2) is None
