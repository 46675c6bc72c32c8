"""Hardening of what crosses the boundary: nesting depth, shared memory, large replies,
spaces and vector envs against Gymnasium's own behaviour (issue 11, items 1, 2, 19-27).

The pure tests (codec, framing, batching, spaces) run without processes; the others drive
real sandboxes, marked ``sandbox`` (and ``faults`` for hostile envs). docs/reliability.md
("Hardening: wire, spaces and vector envs") points at these tests.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode
from hypothesis import given, settings
from hypothesis import strategies as st
from sandbox_options import ENVS_PACKAGE, TEST_ENVS

from rlmesh import ProtocolError, RemoteEnvError, SandboxClosedError
from rlmesh._core import batch
from rlmesh._core.vector import map_sealed
from rlmesh._wire import protocol as P
from rlmesh._wire.codec import (
    FROZENSET,
    MAX_DEPTH,
    TUPLE,
    Encoder,
    NestingError,
    RemoteObject,
    decode,
)
from rlmesh._wire.spaces import OpaqueSpace, space_from_data, space_to_data
from rlmesh.numpy import AsyncSandboxVectorEnv, SandboxEnv, SandboxVectorEnv, State

FAULTY = "rlmesh_test/Faulty-v0"
sandbox = pytest.mark.sandbox
faults = pytest.mark.faults


def same(a: Any, b: Any) -> bool:
    return bool(data_equivalence(a, b, exact=True))


@pytest.fixture(scope="module")
def host_envs() -> Iterator[Any]:
    """The test envs registered in this process too, for Gymnasium's reference envs; gone
    again afterwards (other tests check envs that only a sandbox can make)."""
    known, added = set(gym.registry), ENVS_PACKAGE not in sys.path
    imported = "rlmesh_test_envs" in sys.modules
    if added:
        sys.path.insert(0, ENVS_PACKAGE)
    try:
        import rlmesh_test_envs

        yield rlmesh_test_envs
    finally:
        if added:
            sys.path.remove(ENVS_PACKAGE)
        if not imported:
            del sys.modules["rlmesh_test_envs"]
            for env_id in set(gym.registry) - known:
                del gym.registry[env_id]


def run_host(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as a host of its own, so that a host crash is an exit status here."""
    code = f"TEST_ENVS = {json.dumps(TEST_ENVS)}\n" + textwrap.dedent(script)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )


# -- 1. nesting depth ------------------------------------------------------------------------


def forged_reply(codes: list[int]) -> bytes:
    """An OK reply whose value nests the extension types ``codes`` (outermost last), made
    by hand as a hostile sandbox could."""
    data = msgpack.packb([])
    for code in codes:
        data = msgpack.packb([msgpack.ExtType(code, data)])
    return msgpack.packb([P.OK, msgpack.ExtType(TUPLE, data)])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([TUPLE, FROZENSET]), max_size=400))
def test_forged_replies_of_any_depth_decode_or_are_a_protocol_error(codes: list[int]) -> None:
    payload = forged_reply(codes)
    if len(codes) + 1 <= MAX_DEPTH:
        assert P.decode_message(payload)[0] == P.OK
    else:
        with pytest.raises(ProtocolError, match=f"more than {MAX_DEPTH} levels deep"):
            P.decode_message(payload)


def test_a_forged_reply_thousands_deep_is_a_protocol_error_not_a_crash() -> None:
    # In a host of its own: before the bound, this decode died of SIGSEGV.
    result = run_host(
        """
        import msgpack
        from rlmesh import ProtocolError
        from rlmesh._wire.protocol import decode_message

        data = msgpack.packb([])
        for _ in range(3000):
            data = msgpack.packb([msgpack.ExtType(3, data)])
        try:
            decode_message(msgpack.packb([101, msgpack.ExtType(3, data)]))
        except ProtocolError as exc:
            print("ProtocolError:", exc)
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ProtocolError" in result.stdout and "levels deep" in result.stdout


def test_lists_nested_past_msgpacks_limit_are_a_protocol_error_that_says_so() -> None:
    deep = b"\x90"  # []
    for _ in range(2000):
        deep = b"\x91" + deep  # [...]
    with pytest.raises(ProtocolError, match="nested deeper than msgpack's limit"):
        P.decode_message(b"\x92" + msgpack.packb(P.OK) + deep)  # [OK, [[[...]]]]


_KINDS = ["tuple", "list", "dict", "frozenset"]


def nest(kinds: list[str]) -> Any:
    value: Any = 0
    for kind in kinds:
        if kind == "tuple":
            value = (value, 1)
        elif kind == "list":
            value = [value]
        elif kind == "dict":
            value = {"k": value}
        else:  # a frozenset holds only hashable values
            value = frozenset([value]) if hashable(value) else (value,)
    return value


def hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def cut(value: Any, room: int) -> Any:
    """What the child's encoder makes of ``value``: deeper than ``room`` extension levels,
    a ``RemoteObject``."""
    if isinstance(value, (tuple, frozenset)):
        if room == 0:
            return RemoteObject(f"builtins.{type(value).__name__}", repr(value)[:1000])
        return type(value)(cut(item, room - 1) for item in value)
    if isinstance(value, list):
        return [cut(item, room) for item in value]
    if isinstance(value, dict):
        return {key: cut(item, room) for key, item in value.items()}
    return value


def ext_depth(value: Any) -> int:
    if isinstance(value, (tuple, frozenset)):
        return 1 + max(ext_depth(item) for item in value)
    if isinstance(value, list):
        return max((ext_depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return max((ext_depth(item) for item in value.values()), default=0)
    return 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_KINDS), max_size=300))
def test_encoding_any_depth_is_bounded_on_both_sides(kinds: list[str]) -> None:
    value = nest(kinds)
    child = decode(Encoder(opaque=True).encode(value))
    assert child == cut(value, MAX_DEPTH)
    if ext_depth(value) <= MAX_DEPTH:
        assert decode(Encoder().encode(value)) == value
    else:
        with pytest.raises(NestingError, match=f"more than {MAX_DEPTH} levels deep"):
            Encoder().encode(value)


def test_deep_object_arrays_and_sets_are_cut_too() -> None:
    value: Any = 1
    for level in range(100):
        if level % 2:
            array = np.empty(1, dtype=object)
            array[0] = value
            value = array
        else:
            value = (value,)
    out = decode(Encoder(opaque=True).encode({"v": value}))["v"]
    for _ in range(MAX_DEPTH):
        out = out[0]
    assert isinstance(out, RemoteObject)
    with pytest.raises(NestingError):
        Encoder().encode(value)
    with pytest.raises(NestingError):  # the request encoder does not fall back to a pickle
        P.RequestEncoder().encode([P.STEP, value])


def test_a_space_description_nested_too_deep_is_a_value_error() -> None:
    data: dict[str, Any] = {"type": "Discrete", "n": 2, "start": 0}
    for _ in range(MAX_DEPTH):
        data = {"type": "Tuple", "spaces": [data]}
    space_from_data(data)
    with pytest.raises(ValueError, match="nested more than"):
        space_from_data({"type": "Tuple", "spaces": [data]})


@sandbox
@faults
def test_an_info_holding_a_deep_tuple_arrives_cut_and_the_env_goes_on() -> None:
    with SandboxEnv(FAULTY, mode="deep", factor=300, **TEST_ENVS) as env:
        env.reset(seed=0)
        for t in (1, 2):
            info = env.step(0)[4]
            assert info["t"] == t
            deep = info["deep"]
            for _ in range(MAX_DEPTH):
                assert type(deep) is tuple and len(deep) == 1
                deep = deep[0]
            assert isinstance(deep, RemoteObject) and deep.type_name == "builtins.tuple"
        assert env.state is State.READY


@sandbox
@faults
def test_a_forged_deep_reply_from_the_env_is_a_protocol_error() -> None:
    with SandboxEnv(FAULTY, mode="deepframe", **TEST_ENVS) as env:
        env.reset()
        with pytest.raises(ProtocolError, match="levels deep"):
            env.step(0)
        assert env.state is State.BROKEN


# -- 2. shared memory that the env shrinks ---------------------------------------------------


def memfd(nbytes: int, seals: int | None) -> int:
    import fcntl

    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if seals is not None else 0)
    fd = os.memfd_create("rlmesh-test", flags)
    os.ftruncate(fd, nbytes)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def test_only_a_sealed_memfd_of_the_right_size_is_mapped(tmp_path: Path) -> None:
    import fcntl

    opened = []
    try:
        for seals in (None, 0, fcntl.F_SEAL_GROW, fcntl.F_SEAL_SHRINK):
            fd = memfd(4096, seals)
            opened.append(fd)
            with pytest.raises(OSError, match="not sealed"):
                map_sealed(f"/proc/self/fd/{fd}", 4096)
        fd = memfd(8192, P.SHM_SEALS)
        opened.append(fd)
        with pytest.raises(OSError, match="holds 8192 bytes, not 4096"):
            map_sealed(f"/proc/self/fd/{fd}", 4096)
        mapping = map_sealed(f"/proc/self/fd/{fd}", 8192)
        view = np.ndarray((8192,), np.uint8, buffer=mapping)
        assert not view.flags.writeable  # the host only reads the worker's observations
        del view
        mapping.close()
        plain = tmp_path / "plain"
        plain.write_bytes(b"\0" * 4096)
        with pytest.raises(OSError, match="not sealed"):
            map_sealed(str(plain), 4096)
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        with pytest.raises(OSError, match="not sealed"):  # and opening it did not block
            map_sealed(str(fifo), 4096)
    finally:
        for fd in opened:
            os.close(fd)


@sandbox
@faults
def test_an_env_that_shrinks_the_shared_memory_cannot_kill_the_host() -> None:
    # In a host of its own: before the seals, its next read died of SIGBUS (exit -7).
    result = run_host(
        """
        import numpy as np
        from rlmesh.numpy import SandboxVectorEnv

        with SandboxVectorEnv("rlmesh_test/Shrinking-v0", num_envs=2, **TEST_ENVS) as env:
            assert env._core.shm_workers == [0], env._core.shm_workers
            env.reset(seed=0)
            for step in range(3):
                obs, _, _, _, infos = env.step(np.array([1, 2]))
                assert obs.shape == (2, 210, 160, 3) and obs[0, 0, 0, 0] == 1
                print("shrink:", infos["shrink"][0])
        print("host alive")
        """
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert "host alive" in result.stdout
    assert "shrink: refused: Operation not permitted" in result.stdout, result.stdout


# -- 19. an unknown autoreset_mode starts nothing ---------------------------------------------


def child_pids() -> set[int]:
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        pids.update(int(pid) for pid in (task / "children").read_text().split())
    return pids


def cache_entries() -> set[str]:
    root = Path(os.environ["RLMESH_CACHE_DIR"])
    return {str(p.relative_to(root)) for p in root.glob("*/*")}


@pytest.mark.anyio
async def test_an_unknown_autoreset_mode_starts_no_process_and_builds_no_venv() -> None:
    options = {"num_envs": 2, "autoreset_mode": "sometimes", "packages": ["six==1.16.0"]}
    children, entries = child_pids(), cache_entries()
    with pytest.raises(ValueError, match="autoreset_mode must be an AutoresetMode or one of"):
        SandboxVectorEnv("CartPole-v1", **options)
    with pytest.raises(ValueError, match="autoreset_mode must be an AutoresetMode"):
        await AsyncSandboxVectorEnv.create("CartPole-v1", **options)
    with pytest.raises(ValueError, match="autoreset_mode must be an AutoresetMode"):
        async with AsyncSandboxVectorEnv("CartPole-v1", **options):
            pass
    assert child_pids() - children == set()  # no new process
    assert cache_entries() - entries == set()  # no new venv, lock or build directory


# -- 20. a large reply costs the host about its size -----------------------------------------


def status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert match is not None
    return int(match.group(1))


def peak_growth(call: Any) -> tuple[Any, int]:
    """``call()``'s result and how far it raised this process's resident memory (bytes)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status_kib("VmRSS")
    result = call()
    return result, (status_kib("VmHWM") - before) * 1024


@sandbox
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_a_64_mib_reply_costs_the_host_well_under_twice_its_size(dtype: str) -> None:
    size = 64 << 20
    with SandboxEnv("rlmesh_test/Big-v0", nbytes=size, dtype=dtype, **TEST_ENVS) as env:
        (obs, _), grown = peak_growth(lambda: env.reset(seed=0))  # the msgpack OK list
        assert obs.nbytes == size and obs.dtype == dtype and obs[-1] == 1
        assert grown < 1.5 * size, f"reset: {grown / size:.2f}x"
        obs[0] = 7  # the caller's own, writable
        del obs
        step, grown = peak_growth(lambda: env.step(0))  # the packed step reply
        assert step[0].nbytes == size and step[0][-1] == 2
        assert grown < 1.5 * size, f"step: {grown / size:.2f}x"


def test_large_frames_are_assembled_in_place_in_any_pieces() -> None:
    payloads = [b"small", bytes(range(256)) * (P.BIG_FRAME // 256 + 3), b"", b"tail"]
    stream = b"".join(P.frame_header(len(p)) + p for p in payloads)
    for piece in (1 << 16, 4093, len(stream)):
        reader = P.FrameReader(expect_magic=False)
        got: list[Any] = []
        for start in range(0, len(stream), piece):
            got.extend(reader.feed(stream[start : start + piece]))
        assert got == payloads and reader.buffered == 0
        assert type(got[1]) is bytearray  # handed over, not copied again


def test_a_large_array_is_decoded_in_place_and_is_the_callers() -> None:
    obs = np.arange(1 << 18, dtype=np.float32).reshape(512, 512)
    payload = bytearray(Encoder(opaque=True).encode([P.OK, obs, {"t": (1, 2)}]))
    message = P.decode_message(payload)
    assert message[0] == P.OK and message[2] == {"t": (1, 2)}
    assert same(message[1], obs) and message[1].flags.writeable
    packer = P.step_packer(encoder := Encoder(opaque=True))
    encoder.encode(obs)  # the packer needs the array's header once
    frame = packer(obs, 1.0, False, True, {})
    step = P.decode_message(bytearray(frame[4:]))
    assert same(step[1], obs) and step[1:5][1:] == [1.0, False, True]
    with pytest.raises(ProtocolError):  # a truncated rest is still an error
        P.decode_message(payload[:-3])


# -- 21. dtypes of Discrete spaces ----------------------------------------------------------


def travel(space: Any) -> Any:
    return space_from_data(decode(Encoder(opaque=True).encode(space_to_data(space))))


def test_discrete_spaces_keep_their_dtype() -> None:
    for space in (spaces.Discrete(3, dtype=np.int32), spaces.Discrete(4, start=2, dtype="u1")):
        out = travel(space)
        assert out == space and out.dtype == space.dtype
        sample = out.sample()
        assert type(sample) is space.dtype.type and space.contains(sample)


@sandbox
def test_discrete_int32_observations_and_actions_stay_int32(host_envs: Any) -> None:
    with SandboxEnv("rlmesh_test/Int32-v0", **TEST_ENVS) as env:
        twin = host_envs.Int32Env()
        assert env.observation_space == twin.observation_space
        assert env.action_space == twin.action_space
        obs, _ = env.reset(seed=1)
        assert type(obs) is np.int32 and obs in env.observation_space
        action = env.action_space.sample()
        assert type(action) is np.int32
        obs = env.step(action)[0]
        assert type(obs) is np.int32 and obs in env.observation_space
    with SandboxVectorEnv("rlmesh_test/Int32-v0", num_envs=3, num_workers=2, **TEST_ENVS) as env:
        assert env.observation_space.dtype == np.int32
        obs, _ = env.reset(seed=1)
        assert obs.dtype == np.int32 and obs in env.observation_space
        obs = env.step(env.action_space.sample())[0]
        assert obs.dtype == np.int32 and obs in env.observation_space


# -- 22. spaces that batch as tuples, over several workers ----------------------------------


def test_tuple_batches_are_cut_and_joined_per_sub_env() -> None:
    text = spaces.Text(5)
    ranges = batch.bounds([2, 1])
    assert batch.split(("ab", "c", "de"), ranges, text) == [("ab", "c"), ("de",)]
    assert batch.concat([("ab", "c"), ("de",)], text) == ("ab", "c", "de")
    mixed = spaces.Dict({"m": text, "x": spaces.Box(0, 1, (2,))})
    joined = batch.concat(
        [{"m": ("a", "b"), "x": np.zeros((2, 2))}, {"m": ("c",), "x": np.ones((1, 2))}], mixed
    )
    assert joined["m"] == ("a", "b", "c") and joined["x"].shape == (3, 2)
    pair = spaces.Tuple((spaces.Discrete(2), text))
    parts = batch.split((np.array([0, 1, 1]), ("a", "b", "c")), ranges, pair)
    assert same(parts[1], (np.array([1]), ("c",)))
    assert same(batch.concat(parts, pair), (np.array([0, 1, 1]), ("a", "b", "c")))


@sandbox
@pytest.mark.parametrize("action", ["text", "sequence", "custom"])
def test_tuple_batched_spaces_over_two_workers_match_gymnasium(
    action: str, host_envs: Any
) -> None:
    ref = gym.make_vec("rlmesh_test/Kinds-v0", num_envs=3, vectorization_mode="sync",
                       action=action)  # fmt: skip
    with SandboxVectorEnv("rlmesh_test/Kinds-v0", num_envs=3, num_workers=2, action=action,
                          **TEST_ENVS) as env:  # fmt: skip
        got, want = env.reset(seed=3), ref.reset(seed=3)
        assert same(got, want), (got, want)
        assert all(isinstance(m, str) for m in got[0]["mission"])
        ref.action_space.seed(3)
        for _ in range(12):
            actions = ref.action_space.sample()
            got, want = env.step(actions), ref.step(actions)
            assert same(got, want), (got, want)
    ref.close()


# -- 23. reset_mask checked for the whole batch ----------------------------------------------


@sandbox
def test_a_bad_reset_mask_is_refused_as_gymnasium_does_over_two_workers() -> None:
    ref = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": AutoresetMode.DISABLED})  # fmt: skip
    ref.reset(seed=0)
    masks = [
        np.zeros(4, dtype=bool),  # resets nothing
        np.ones(3, dtype=bool),  # the wrong length (a worker's share, even)
        np.ones(5, dtype=bool),
        np.array([1, 0, 0, 1]),  # not bools
        [True, False, False, False],  # not an array
    ]
    with SandboxVectorEnv("CartPole-v1", num_envs=4, num_workers=2,
                          autoreset_mode=AutoresetMode.DISABLED) as env:  # fmt: skip
        env.reset(seed=0)
        for mask in masks:
            with pytest.raises(Exception) as expected:
                ref.reset(options={"reset_mask": mask})
            with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
                env.reset(options={"reset_mask": mask})
        good = np.array([False, False, True, False])
        got = env.reset(options={"reset_mask": good})
        assert same(got, ref.reset(options={"reset_mask": good}))
    ref.close()


# -- 24, 26. Gymnasium's vector attributes ---------------------------------------------------


@sandbox
@pytest.mark.anyio
async def test_np_random_seed_and_autoreset_mode_are_gymnasiums() -> None:
    ref = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    with SandboxVectorEnv("CartPole-v1", num_envs=3, num_workers=2) as env:
        assert env.autoreset_mode is ref.autoreset_mode is AutoresetMode.NEXT_STEP
        env.reset(seed=42)
        ref.reset(seed=42)
        assert env.np_random_seed == ref.np_random_seed == (42, 43, 44)
    ref.close()
    async with AsyncSandboxVectorEnv("CartPole-v1", num_envs=2,
                                     autoreset_mode="SameStep") as aenv:  # fmt: skip
        assert aenv.autoreset_mode is AutoresetMode.SAME_STEP
        assert aenv.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP


# -- 25. an env error in vectorization_mode="async" ------------------------------------------


@sandbox
@faults
def test_an_env_error_in_async_mode_breaks_the_vector_env_with_a_clear_error() -> None:
    options = {"num_envs": 2, "vectorization_mode": "async", "mode": "raise", **TEST_ENVS}
    with SandboxVectorEnv(FAULTY, **options) as env:
        env.reset(seed=0)
        env.step(np.zeros(2, dtype=np.int64))
        with pytest.raises(RemoteEnvError, match="boom at step 2") as caught:
            env.step(np.zeros(2, dtype=np.int64))
        if sys.version_info >= (3, 11):  # exception notes
            assert "vectorization_mode='sync'" in "\n".join(caught.value.__notes__)
        assert env.state is State.BROKEN
        with pytest.raises(SandboxClosedError, match="AsyncVectorEnv shuts down a sub-env"):
            env.step(np.zeros(2, dtype=np.int64))
    with SandboxVectorEnv(FAULTY, auto_restart=True, **options) as env:
        env.reset(seed=0)
        env.step(np.zeros(2, dtype=np.int64))
        with pytest.raises(RemoteEnvError, match="boom at step 2"):
            env.step(np.zeros(2, dtype=np.int64))
        _, infos = env.reset(seed=0)
        assert infos["rlmesh_restarted"].all() and env.restarts == 1
        env.step(np.zeros(2, dtype=np.int64))


# -- 27. opaque spaces ------------------------------------------------------------------------


def test_opaque_spaces_of_two_sandboxes_are_equal(host_envs: Any) -> None:
    first, second = host_envs.MissionSpace(), host_envs.MissionSpace()
    assert repr(first) != repr(second)  # memory addresses
    one, other = travel(first), travel(second)
    assert isinstance(one, OpaqueSpace) and one == other and hash(one) == hash(other)
    assert " at 0x" not in one.description
    assert one.describes(second) and not one.describes(spaces.Discrete(2))


@sandbox
def test_opaque_spaces_check_and_sample_through_the_sandbox_inside_a_dict(host_envs: Any) -> None:
    from rlmesh.testing import check_sandbox_env

    make = lambda: SandboxEnv("rlmesh_test/Mission-v0", **TEST_ENVS)  # noqa: E731
    vector = gym.vector.SyncVectorEnv([make, make])  # compares the two envs' spaces
    try:
        mission = vector.envs[0].observation_space["mission"]
        assert isinstance(mission, OpaqueSpace)
        assert mission.contains("open the door") and not mission.contains("fly")
        assert mission.sample() in host_envs.MissionSpace.MISSIONS
        sample = vector.envs[0].observation_space.sample()
        assert sample in vector.envs[0].observation_space
        obs, _ = vector.reset(seed=0)
        assert obs["mission"][0] in host_envs.MissionSpace.MISSIONS
    finally:
        vector.close()
    report = check_sandbox_env("rlmesh_test/Mission-v0", seeds=(0,), **TEST_ENVS)
    assert report.compared


def test_infos_nested_past_the_join_limit_are_a_protocol_error_not_a_recursion_error() -> None:
    """Two workers' infos, each a dict nested 1000 deep (msgpack decodes that; joining it
    recursed past Python's limit)."""
    from rlmesh import ProtocolError
    from rlmesh._core.batch import MAX_INFO_DEPTH, merge_infos

    def nested(depth: int) -> dict:
        info: dict = {"x": np.zeros(1)}
        for _ in range(depth):
            info = {"k": info}
        return info

    with pytest.raises(ProtocolError, match="nested more than 64 dicts deep"):
        merge_infos([nested(1000), nested(1000)], [1, 1])
    joined = merge_infos([nested(MAX_INFO_DEPTH), nested(MAX_INFO_DEPTH)], [1, 1])
    for _ in range(MAX_INFO_DEPTH):
        joined = joined["k"]
    assert joined["x"].shape == (2,)
