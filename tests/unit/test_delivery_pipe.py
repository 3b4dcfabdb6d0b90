"""The relay ↔ child process pipe: frame codec (typed frames), the framed stream over a real
socket pair, frame matching on both sides, the blacklist mirror and the refusal of sending
hooks."""

from __future__ import annotations

import pickle
import struct

import pytest
import trio

from zonemta.conf import ConfigError
from zonemta.engine.bus import Event, EventBus
from zonemta.engine.delivery.machine import DeliveryMachine
from zonemta.engine.delivery.outcome import Outcome
from zonemta.engine.hooks import Hooks
from zonemta.engine.processes.delivery_process import (
    DeliveryProcess,
    _Lost,
    _Pending,
    check_hooks,
)
from zonemta.engine.processes.delivery_worker import BlacklistMirror, ForwardingMachine
from zonemta.engine.processes.frames import (
    Admit,
    Attempt,
    Chunk,
    Done,
    Fired,
    More,
    Ready,
    Reply,
    RowOutcome,
    Stats,
)
from zonemta.engine.processes.pipe import (
    MAX_FRAME,
    Frame,
    FrameDecoder,
    FramedPipe,
    PipeError,
    encode,
)
from zonemta.statemachine import DeliveryState as S
from zonemta.statemachine import FailureCategory, Trigger
from zonemta.store import Delivery, FixedRoute, MessageMeta, MessageRecord, RowState

ROW = Delivery("m1", 0, "a@x.test", "x.test", "default", RowState.LOCKED, 0, 1.0, 1.0)
MESSAGE = MessageRecord(
    "m1",
    "s@y.test",
    b"Subject: hi\r\n",
    5000,
    1.0,
    MessageMeta(helo="h.test", routes={1: FixedRoute(mx="mx.test")}, extra={"meta": [1, 2]}),
)
ROW2 = Delivery("m1", 1, "b@x.test", "x.test", "default", RowState.LOCKED, 1, 1.0, 1.0)

FRAMES: list[Frame] = [
    Ready(),
    Attempt(
        1,
        "default",
        (ROW, ROW2),
        MESSAGE,
        b"\x00" * 5000,
        {"x.test": frozenset({"10.0.0.1"})},
        (S.LOCKED, S.DEFERRED),
    ),
    Fired(1, 1, Trigger.RESOLVE, None, None, None, {"hosts": ["mx.test"]}),
    Done(
        1,
        (RowOutcome(Outcome(Trigger.ACCEPTED, "250 ok"), "mx.test", "127.0.0.2"),),
        {"default": (3, 1)},
    ),
    Done(
        2,
        (
            RowOutcome(
                Outcome(Trigger.TRANSIENT_FAILURE, "451 later", FailureCategory.GREYLIST),
                None,
                None,
            ),
        ),
        {},
    ),
    Chunk(7, 2, None),
    More(7, 2),
    Admit(3, "feeder", "127.0.0.1"),
    Reply(3, None),
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
    assert decoder.feed(data[-1:] + encode(Ready())) == [FRAMES[1], Ready()]


def test_garbage_is_refused() -> None:
    with pytest.raises(PipeError, match="larger than"):
        FrameDecoder().feed(struct.pack("!I", MAX_FRAME + 1))
    payload = pickle.dumps(["not", "a", "frame"])
    with pytest.raises(PipeError, match="not a frame: list"):
        FrameDecoder().feed(struct.pack("!I", len(payload)) + payload)
    with pytest.raises(PipeError, match="undecodable"):
        FrameDecoder().feed(struct.pack("!I", 3) + b"abc")
    old_style = pickle.dumps(("ready",))  # the tuples of old: not frames any more
    with pytest.raises(PipeError, match="not a frame: tuple"):
        FrameDecoder().feed(struct.pack("!I", len(old_style)) + old_style)


async def test_framed_pipe_over_a_socket_pair_sends_in_order_then_eof() -> None:
    left, right = trio.socket.socketpair()
    sender = FramedPipe(trio.SocketStream(left))
    receiver = FramedPipe(trio.SocketStream(right))
    big = Chunk(1, 0, b"y" * (1 << 20))  # larger than one read
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


class SentFrames:
    """Stands in for a FramedPipe: keeps what is sent."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def send(self, frame: Frame) -> None:
        self.frames.append(frame)


def test_the_child_machine_starts_where_the_relay_is_and_forwards_triggers() -> None:
    sent = SentFrames()
    machine = ForwardingMachine(ROW2, 5, sent, S.LOCKED, 1)  # type: ignore[arg-type]
    machine.fire(Trigger.RESOLVE, hosts=["mx.test"])
    assert machine.state is S.RESOLVING
    assert sent.frames == [Fired(5, 1, Trigger.RESOLVE, None, None, None, {"hosts": ["mx.test"]})]
    with pytest.raises(AttributeError):
        machine.state = S.QUEUED  # type: ignore[misc]  # only the table moves it


async def test_the_relay_fires_reported_steps_and_takes_the_outcome() -> None:
    bus = EventBus()
    events: list[Event] = []
    bus.add_listener(events.append)
    process = DeliveryProcess(0, None, ["default"], blacklist=None)  # type: ignore[arg-type]
    machine, other = (DeliveryMachine(row, bus, lambda: 1.0) for row in (ROW, ROW2))
    machine.fire(Trigger.LEASE)
    other.fire(Trigger.LEASE)
    inbox, receive = trio.open_memory_channel[More | Done | _Lost](10)
    pending = process._pending[1] = _Pending([machine, other], inbox)
    process.dispatch(Fired(1, 0, Trigger.RESOLVE, "mx.test", "10.0.0.1", None, {"hosts": ["a"]}))
    assert machine.state is S.RESOLVING and machine.local_address == "10.0.0.1"
    assert other.state is S.LOCKED  # each delivery's steps reach its own machine
    assert (events[-1].to_state, events[-1].details, events[-1].seq) == (
        "resolving",
        {"trigger": "resolve", "hosts": ["a"]},
        0,
    )
    process.dispatch(More(1, 0))
    outcome = Outcome(Trigger.TRANSIENT_FAILURE, "451 later", FailureCategory.GREYLIST)
    accepted = Outcome(Trigger.ACCEPTED, "250 ok")
    done = (RowOutcome(outcome, "mx.test", "10.0.0.1"), RowOutcome(accepted, "mx.test", None))
    process.dispatch(Done(1, done, {"default": (3, 1)}))
    assert pending.outcomes == [outcome, accepted]
    assert (other.mx, other.local_address) == ("mx.test", None)
    assert [type(frame) for frame in (receive.receive_nowait(), receive.receive_nowait())] == [
        More,
        Done,
    ]
    process.dispatch(Stats({"default": (4, 2)}))
    assert (process.pools["default"].reuses, process.pools["default"].open_connections) == (4, 2)
    process.dispatch(Fired(9, 0, Trigger.RESOLVE, None, None, None, {}))  # cancelled: ignored
    with pytest.raises(PipeError, match="unknown frame Admit"):
        process.dispatch(Admit(1, "feeder", "127.0.0.1"))


def test_attempt_and_done_frames_hold_a_group_together() -> None:
    with pytest.raises(ValueError, match="at least one delivery"):
        Attempt(1, "default", (), MESSAGE, None, {}, ())
    with pytest.raises(ValueError, match="one state per delivery"):
        Attempt(1, "default", (ROW, ROW2), MESSAGE, None, {}, (S.LOCKED,))
    process = DeliveryProcess(0, None, ["default"], blacklist=None)  # type: ignore[arg-type]
    machine = DeliveryMachine(ROW, EventBus(), lambda: 1.0)
    inbox, _receive = trio.open_memory_channel[More | Done | _Lost](10)
    process._pending[1] = _Pending([machine], inbox)
    two = (RowOutcome(Outcome(Trigger.ACCEPTED, "250 ok"), None, None),) * 2
    with pytest.raises(PipeError, match="2 outcomes for 1 deliveries"):
        process.dispatch(Done(1, two, {}))
