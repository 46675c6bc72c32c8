"""Framing and the worker loop, without processes: the worker runs in-process over a socket pair."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codec import same

from rlmesh import ProtocolError, RemoteEnvError
from rlmesh._wire import protocol as P
from rlmesh._wire.codec import Encoder, decode, encode
from rlmesh._worker import Worker


def frame(value: Any) -> bytes:
    payload = encode(value)
    return P.frame_header(len(payload)) + payload


def test_frames_split_and_joined_anywhere() -> None:
    stream = P.MAGIC + frame([P.OK, 1]) + frame([P.OK, np.arange(3)]) + frame([P.OK, "x"])
    for cut in range(1, len(stream)):
        reader = P.FrameReader()
        payloads = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        values = [decode(p)[1] for p in payloads]
        assert values[0] == 1 and values[1].tolist() == [0, 1, 2] and values[2] == "x"
        assert reader.buffered == 0


def test_junk_before_magic_is_skipped_but_bounded() -> None:
    reader = P.FrameReader()
    assert reader.feed(b"Welcome banner\n" + P.MAGIC + frame([P.OK])) != []
    reader = P.FrameReader()
    with pytest.raises(ProtocolError, match="before the worker started"):
        reader.feed(b"x" * (P.MAX_PREAMBLE + 1))


def test_oversized_frames_are_a_protocol_error() -> None:
    reader = P.FrameReader(expect_magic=False, max_frame=100)
    with pytest.raises(ProtocolError, match="over the 100-byte limit"):
        reader.feed(P.frame_header(101))
    with pytest.raises(ValueError, match="frame limit"):
        P.frame_header(P.MAX_FRAME + 1)


@pytest.mark.parametrize("message", [b"\xc1", encode("not a list"), encode([]), encode(["x"])])
def test_malformed_messages(message: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        P.decode_message(message)


def test_version_mismatch_names_both_sides_and_the_fix() -> None:
    text = P.version_mismatch({"protocol": 99, "rlmesh": "9.9"}, host_rlmesh="0.1")
    assert text is not None
    assert "protocol 99 (rlmesh 9.9)" in text and f"protocol {P.PROTOCOL_VERSION}" in text
    assert "rlmesh_package" in text
    assert P.version_mismatch({"protocol": P.PROTOCOL_VERSION}, host_rlmesh="0.1") is None


def test_requests_fall_back_to_cloudpickle_only_when_needed() -> None:
    encoder = P.RequestEncoder()
    assert P.decode_message(encoder.encode([P.STEP, 1])) == [P.STEP, 1]
    pickled = P.decode_message(encoder.encode([P.MAKE, {"fn": lambda x: x}]))
    assert pickled[0] == P.PICKLED and isinstance(pickled[1], bytes)


class InProcessWorker:
    """A Worker served in a thread over a socket pair: the real loop, no child process."""

    def __init__(self) -> None:
        self.host, child = socket.socketpair()
        self.worker = Worker(child.recv, child.sendall)
        self.thread = threading.Thread(target=self._serve, args=(child,), daemon=True)
        self.thread.start()
        self.reader = P.FrameReader()
        self.encoder = P.RequestEncoder()
        self.hello = self.receive()

    def _serve(self, child: socket.socket) -> None:
        try:
            self.worker.serve()
        finally:
            child.close()

    def receive(self) -> list[Any]:
        while True:
            data = self.host.recv(1 << 16)
            if not data:
                raise EOFError
            payloads = self.reader.feed(data)
            if payloads:
                assert len(payloads) == 1
                return P.decode_message(payloads[0])

    def call(self, *message: Any) -> list[Any]:
        payload = self.encoder.encode(list(message))
        self.host.sendall(P.frame_header(len(payload)) + payload)
        return self.receive()


@pytest.fixture
def worker() -> Iterator[InProcessWorker]:
    w = InProcessWorker()
    yield w
    w.host.close()
    w.thread.join(5)
    assert not w.thread.is_alive()


def make_request(env_id: str, **kwargs: Any) -> dict[str, Any]:
    return {"source": {"kind": "gym", "id": env_id}, "imports": [], "render_mode": None,
            "kwargs": kwargs}  # fmt: skip


def test_worker_serves_an_episode_like_gymnasium(worker: InProcessWorker) -> None:
    assert worker.hello[0] == P.HELLO
    assert worker.hello[1]["protocol"] == P.PROTOCOL_VERSION
    assert worker.hello[1]["gymnasium"] == gym.__version__
    made = worker.call(P.MAKE, make_request("CartPole-v1"))
    space = {"type": "Discrete", "n": 2, "start": 0, "dtype": "<i8"}
    assert made[0] == P.OK and made[1]["action_space"] == space
    assert made[1]["spec"]["max_episode_steps"] == 500
    local = gym.make("CartPole-v1")
    ok, obs, info = worker.call(P.RESET, 3, None)
    expected, _ = local.reset(seed=3)
    assert np.array_equal(obs, expected) and obs.dtype == expected.dtype
    for action in [0, 1, 1, 0]:
        _ok, obs, reward, terminated, _truncated, _info = worker.call(P.STEP, action)
        e_obs, e_reward, e_term, _e_trunc, _ = local.step(action)
        assert np.array_equal(obs, e_obs) and reward == e_reward and terminated == e_term
    assert worker.call(P.CLOSE) == [P.OK]


def test_worker_reports_errors_and_keeps_serving(worker: InProcessWorker) -> None:
    reply = worker.call(P.MAKE, make_request("NoSuchEnv-v0"))
    assert reply[0] == P.ERROR and "NoSuchEnv" in reply[2] and "Traceback" in reply[3]
    with pytest.raises(RemoteEnvError, match="NameNotFound"):
        P.raise_for_reply(reply, 2)
    assert worker.call(P.MAKE, make_request("CartPole-v1"))[0] == P.OK
    reply = worker.call(P.SPACE_SAMPLE, "nonsense")
    assert reply[0] == P.ERROR and "unknown space" in reply[2]
    assert worker.call(P.SPACE_CONTAINS, "action", 1) == [P.OK, True]
    assert worker.call(P.SPACE_CONTAINS, "action", 7) == [P.OK, False]


def test_worker_unpickles_host_callables(worker: InProcessWorker) -> None:
    request = make_request("CartPole-v1", max_episode_steps=2)
    request["kwargs"]["disable_env_checker"] = True
    request["extra"] = lambda: None  # forces the cloudpickle path
    reply = worker.call(P.MAKE, request)
    assert reply[0] == P.OK and reply[1]["spec"]["max_episode_steps"] == 2


# Packed step replies: the hot path's form of [OK, obs, reward, terminated, truncated, info].

OBS = np.linspace(-1, 1, 4, dtype=np.float32)
PACKED_CASES = [
    (OBS, 1.0, False, False, {}),  # CartPole
    (OBS, -3, True, True, {"lives": 3, "pos": (1, 2)}),
    (OBS, 2**63 - 1, False, True, {}),
    (OBS, np.float64(-0.25), np.False_, np.True_, {"x": np.int64(5)}),
    (OBS, np.float32(0.1), np.True_, False, {"nested": {"a": [1.5, None]}}),
    (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), float("inf"), True, False, {}),
    (np.zeros((0, 3), dtype=np.int16), 0.0, False, False, {}),
    (OBS, 1.0, False, False, {"obj": object()}),  # travels as a RemoteObject
]


def packer_for(obs: np.ndarray) -> Any:
    encoder = Encoder(opaque=True)
    encoder.encode(obs)  # the worker packs a reset's observation first
    return P.step_packer(encoder)


@pytest.mark.parametrize("values", PACKED_CASES)
def test_packed_step_replies_decode_exactly_as_the_ok_list(values: tuple[Any, ...]) -> None:
    frame = packer_for(values[0])(*values)
    assert frame is not None and frame[4] == P.PACKED_STEP
    assert P.HEADER.unpack_from(frame)[0] == len(frame) - 4
    packed = P.decode_message(frame[4:])
    full = P.decode_message(Encoder(opaque=True).encode([P.OK, *values]))
    assert same(packed, full)
    assert packed[1].flags.writeable


@pytest.mark.parametrize(
    "values",
    [
        (OBS, True, False, False, {}),  # a bool reward stays a bool
        (OBS, np.int64(1), False, False, {}),
        (OBS, 2**64, False, False, {}),  # beyond int64: the full encoder's BIGINT
        (OBS, 1.0, 1, False, {}),  # an int flag stays an int
        (OBS, 1.0, False, False, {"big": 2**70}),  # the full encoder's BIGINT
        (OBS, 1.0, False, False, None),
        (OBS.astype(np.float64), 1.0, False, False, {}),  # a dtype not packed before
        (OBS.reshape(2, 2), 1.0, False, False, {}),  # a shape not packed before
        ([0.0, 1.0], 1.0, False, False, {}),
        (np.int64(3), 1.0, False, False, {}),
    ],
)
def test_step_results_outside_the_packed_form_take_the_ok_list(values: tuple[Any, ...]) -> None:
    assert packer_for(OBS)(*values) is None


def test_a_failed_info_pack_leaves_the_encoder_clean() -> None:
    encoder = Encoder(opaque=True)
    encoder.encode(OBS)
    pack = P.step_packer(encoder)
    assert pack(OBS, 1.0, False, False, {"big": [1, 2**70]}) is None
    assert decode(encoder.encode([P.OK, 1]))[1] == 1  # nothing half-packed is left over


def test_malformed_packed_step_replies_are_protocol_errors() -> None:
    payload = packer_for(OBS)(OBS, 1.0, False, False, {"a": 1})[4:]
    for cut in range(len(payload)):  # every truncation
        with pytest.raises(ProtocolError):
            P.decode_message(payload[:cut])
    with pytest.raises(ProtocolError):
        P.decode_message(payload + b"\x00")  # the array's size no longer matches
    for index, byte in [(1, 0xFF), (2, 4)]:  # unknown flags, unknown reward kind
        with pytest.raises(ProtocolError):
            P.decode_message(payload[:index] + bytes([byte]) + payload[index + 1 :])
    not_a_dict = encode([1])
    bad_info = payload[:12] + P.HEADER.pack(len(not_a_dict)) + not_a_dict + payload[20:]
    with pytest.raises(ProtocolError):
        P.decode_message(bad_info)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_packed_step_reply_fuzz_only_raises_protocol_error(tail: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        P.decode_message(bytes([P.PACKED_STEP]) + tail)


def scripted_worker(chunks: list[bytes]) -> list[bytes]:
    """Serve ``chunks`` as successive reads; return the reply payloads (HELLO excluded)."""
    pending = iter(chunks)
    written = bytearray()
    Worker(lambda _size: next(pending, b""), written.extend).serve()
    return P.FrameReader().feed(bytes(written))[1:]


def test_the_worker_frames_requests_split_joined_and_repeated_anyhow() -> None:
    step = {a: frame([P.STEP, a]) for a in (0, 1)}
    # A frame whose last bytes equal a STEP frame: read apart from its start, they must
    # not be taken for a step.
    decoy = frame([P.SPACE_CONTAINS, "action", b"\x00" * 5 + step[1]])
    chunks = [
        frame([P.MAKE, make_request("CartPole-v1")]),
        frame([P.RESET, 7, None]),
        step[1],
        step[1],  # a repeat: the worker's frame cache
        step[0][:2],
        step[0][2:],
        step[0] + step[1],
        decoy[: -len(step[1])],
        step[1],
        step[0],
        frame([P.CLOSE]),
    ]
    payloads = scripted_worker(chunks)
    replies = [P.decode_message(payload) for payload in payloads]
    packed = [payload[0] == P.PACKED_STEP for payload in payloads]
    assert packed == [False, False, True, True, True, True, True, False, True, False]
    local = gym.make("CartPole-v1")
    expected_obs, _ = local.reset(seed=7)
    assert np.array_equal(replies[1][1], expected_obs)
    steps = [r for r in replies[2:] if len(r) == 6]
    assert len(steps) == 6
    for action, reply in zip([1, 1, 0, 0, 1, 0], steps, strict=True):
        obs, reward, terminated, truncated, info = local.step(action)
        assert same(reply[1:], [obs, reward, terminated, truncated, info])
    assert replies[-3] == [P.OK, False]  # the decoy: a bytes value is no action of CartPole's
    assert replies[-1] == [P.OK]
