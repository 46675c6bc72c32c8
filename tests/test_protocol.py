"""Framing and the worker loop, without processes: the worker runs in-process over a socket pair."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from rlmesh import ProtocolError, RemoteEnvError
from rlmesh import _protocol as P
from rlmesh._codec import decode, encode
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
    assert made[0] == P.OK and made[1]["action_space"] == {"type": "Discrete", "n": 2, "start": 0}
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
