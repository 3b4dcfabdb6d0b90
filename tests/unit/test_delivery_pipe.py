"""The relay ↔ delivery process pipe: frame codec, the framed stream over a real socket
pair, the blacklist mirror and the refusal of sending hooks."""

from __future__ import annotations

import pickle
import struct

import pytest
import trio

from zonemta.conf import ConfigError
from zonemta.engine.hooks import Hooks
from zonemta.engine.processes.delivery_process import check_hooks
from zonemta.engine.processes.delivery_worker import BlacklistMirror
from zonemta.engine.processes.pipe import MAX_FRAME, FrameDecoder, FramedPipe, PipeError, encode
from zonemta.statemachine import DeliveryState

FRAMES = [
    ("ready",),
    ("attempt", 1, "default", {"meta": [1, 2]}, b"\x00" * 5000, frozenset({"10.0.0.1"})),
    ("fire", 1, "resolve", None, None, None, None, {"hosts": ["mx.test"]}),
    ("done", 1, "accepted", "250 ok", None, "mx.test", "127.0.0.2", {"default": (3, 1)}),
    ("chunk", 7, None),
    ("state", DeliveryState.LOCKED),
]


def test_frames_decode_fed_whole_and_byte_by_byte() -> None:
    data = b"".join(encode(frame) for frame in FRAMES)
    assert FrameDecoder().feed(data) == FRAMES
    decoder = FrameDecoder()
    out = []
    for index in range(len(data)):
        out += decoder.feed(data[index : index + 1])
    assert out == FRAMES


def test_a_frame_split_across_reads_waits_for_its_end() -> None:
    data = encode(FRAMES[1])
    decoder = FrameDecoder()
    assert decoder.feed(data[:3]) == []  # not even the whole length
    assert decoder.feed(data[3:-1]) == []
    assert decoder.feed(data[-1:] + encode(("ready",))) == [FRAMES[1], ("ready",)]


def test_garbage_is_refused() -> None:
    with pytest.raises(PipeError, match="larger than"):
        FrameDecoder().feed(struct.pack("!I", MAX_FRAME + 1))
    payload = pickle.dumps(["not", "a", "tuple"])
    with pytest.raises(PipeError, match="not a frame: list"):
        FrameDecoder().feed(struct.pack("!I", len(payload)) + payload)
    with pytest.raises(PipeError, match="undecodable"):
        FrameDecoder().feed(struct.pack("!I", 3) + b"abc")
    empty = pickle.dumps(())
    with pytest.raises(PipeError, match="not a frame"):
        FrameDecoder().feed(struct.pack("!I", len(empty)) + empty)


async def test_framed_pipe_over_a_socket_pair_sends_in_order_then_eof() -> None:
    left, right = trio.socket.socketpair()
    sender = FramedPipe(trio.SocketStream(left))
    receiver = FramedPipe(trio.SocketStream(right))
    big = ("chunk", 1, b"y" * (1 << 20))  # larger than one read
    received = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.run_writer)
        for frame in FRAMES:
            sender.send(frame)
        sender.send(big)
        sender.close_after_sending()
        async for frame in receiver.frames():
            received.append(frame)
    assert received == [*FRAMES, big]


def test_blacklist_mirror_keeps_the_latest_snapshot_per_domain() -> None:
    mirror = BlacklistMirror()
    assert mirror.disabled_for("a.test") == frozenset()
    mirror.update("a.test", frozenset({"10.0.0.1"}))
    mirror.update("b.test", frozenset({"10.0.0.2"}))
    assert mirror.disabled_for("a.test") == {"10.0.0.1"}
    mirror.update("a.test", frozenset())  # expired in the relay meanwhile
    assert mirror.disabled_for("a.test") == frozenset()
    assert mirror.disabled_for("b.test") == {"10.0.0.2"}


def test_sending_hooks_are_refused_only_with_delivery_processes() -> None:
    async def hook(*_: object) -> None:
        return None

    hooks = Hooks()
    hooks.rcpt_to.append(hook)  # an intake hook is fine either way
    check_hooks(hooks, 2)
    hooks.fetch.append(hook)
    hooks.send_headers.append(hook)
    check_hooks(hooks, 0)
    with pytest.raises(ConfigError) as raised:
        check_hooks(hooks, 1)
    assert "config.delivery.processes" in str(raised.value)
    assert "fetch, send_headers" in str(raised.value)
