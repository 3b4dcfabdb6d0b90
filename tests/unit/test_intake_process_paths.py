"""The intake process's cheaper paths: the relay link's calls (one sleeping task each, no
Event), the DKIM body hash only when a key may sign, and the 250 of a queued message."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from zonemta.conf import config_from_dict
from zonemta.dkim.bodyhash import relaxed_body_hash
from zonemta.engine.bus import EventBus
from zonemta.engine.ids import QueueIdGenerator
from zonemta.engine.intake.reception import Envelope, Intake
from zonemta.engine.intake.routing import Router
from zonemta.engine.processes.pipe import Frame, PipeError
from zonemta.inbound.intake_worker import RelayGone, RelayLink, build_intake
from zonemta.inbound.session import queued_reply
from zonemta.store import BodyWriter, MessageRecord, NewDelivery
from zonemta.transport.smtp import server as smtp
from zonemta.transport.smtp.errors import LocalProtocolError
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.smtp.server_events import DATA_END, DATA_START
from zonemta.transport.smtp.server_states import (
    COMMAND_STATES,
    SEQUENCE_REFUSALS,
    Verb,
    sequence_refusal,
)


class _Pipe:
    def __init__(self) -> None:
        self.sent: list[Frame] = []

    def send(self, frame: Frame) -> None:
        self.sent.append(frame)


def _link() -> tuple[RelayLink, _Pipe]:
    pipe = _Pipe()
    return RelayLink(pipe), pipe  # type: ignore[arg-type]


class _Frame(Frame):
    def __init__(self, rid: int) -> None:
        self.rid = rid


async def test_a_call_returns_its_answer_and_calls_are_numbered() -> None:
    link, pipe = _link()
    results: dict[int, Any] = {}

    async def call(key: int) -> None:
        results[key] = await link.call(_Frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 1)
        nursery.start_soon(call, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(f.rid for f in pipe.sent) == [1, 2]  # type: ignore[attr-defined]
        first, second = pipe.sent
        link.answer(second.rid, "b")  # type: ignore[attr-defined]
        link.answer(first.rid, "a")  # type: ignore[attr-defined]
    assert {results[1], results[2]} == {"a", "b"}
    assert results[1] != results[2]
    with pytest.raises(PipeError):
        link.answer(first.rid, "late")  # type: ignore[attr-defined]


async def test_a_cancelled_call_is_forgotten() -> None:
    link, pipe = _link()
    with trio.move_on_after(1) as scope:
        await link.call(_Frame)
    assert scope.cancelled_caught
    with pytest.raises(PipeError):
        link.answer(pipe.sent[0].rid, None)  # type: ignore[attr-defined]
    # Cancelled, then answered before it ran: woken once (by the cancellation).
    outcome: list[str] = []

    async def call(scope: trio.CancelScope) -> None:
        with scope:
            outcome.append(await link.call(_Frame))
        outcome.append("cancelled" if scope.cancelled_caught else "?")

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        nursery.start_soon(call, scope)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        link.answer(pipe.sent[-1].rid, "late")  # type: ignore[attr-defined]
    assert outcome == ["cancelled"]


async def test_closing_the_link_fails_the_calls_in_progress_and_later_ones() -> None:
    link, pipe = _link()
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await link.call(_Frame)
        except RelayGone as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        link.answer(pipe.sent[0].rid, "answered")  # type: ignore[attr-defined]
        link.close()  # before the answered task ran: it fails too, as with an Event
    assert len(errors) == 2
    with pytest.raises(RelayGone):
        await link.call(_Frame)


class _Body(BodyWriter):
    def __init__(self) -> None:
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)

    async def abort(self) -> None:
        pass


class _Store:
    def __init__(self) -> None:
        self.records: list[MessageRecord] = []

    def new_body(self, message_id: str) -> BodyWriter:
        return _Body()

    async def commit_message(
        self, message: MessageRecord, body: BodyWriter, deliveries: Sequence[NewDelivery]
    ) -> None:
        self.records.append(message)


BODY = b"Hello  there \r\n\r\nsecond\tline\r\n\r\n"


async def _stored_bh(body_hash: bool | None) -> str:
    store = _Store()
    kwargs = {} if body_hash is None else {"body_hash": body_hash}
    intake = Intake(
        store,
        Router(config_from_dict({})),
        EventBus(),
        ids=QueueIdGenerator(time.time),
        clock=time.time,
        **kwargs,  # type: ignore[arg-type]
    )
    reception = intake.begin(Envelope("a@b.test", ("c@d.test",), "feeder"))
    await reception.feed(b"Subject: x\r\n\r\n" + BODY[:7])
    await reception.feed(BODY[7:])
    await reception.commit()
    (record,) = store.records
    return record.meta.dkim_bh


async def test_the_body_hash_is_stored_unless_no_key_may_sign() -> None:
    assert await _stored_bh(None) == relaxed_body_hash(BODY)
    assert await _stored_bh(True) == relaxed_body_hash(BODY)
    assert await _stored_bh(False) == ""


@pytest.mark.parametrize(
    ("dkim", "hashed"),
    [
        ({}, False),
        ({"enabled": False, "keys": {"example.com": {"selector": "s", "private_key": "k"}}}, False),
        ({"keys": {"example.com": {"selector": "s", "private_key": "k"}}}, True),
    ],
)
def test_an_intake_process_hashes_bodies_when_a_key_may_sign(
    dkim: dict[str, Any], hashed: bool
) -> None:
    link, _ = _link()
    intake = build_intake(config_from_dict({"dkim": dkim}), link)
    assert intake.body_hash is hashed


def _at_data_end() -> smtp.SMTPServerConnection:
    conn = smtp.SMTPServerConnection(smtp.ServerSettings(hostname="relay.test", max_size=1 << 20))
    conn.receive_data(b"HELO c\r\nMAIL FROM:<a@b.test>\r\n")
    assert isinstance(conn.next_event(), smtp.Helo)
    assert isinstance(conn.next_event(), smtp.MailFrom)
    conn.respond(Reply(250, ("ok",)))
    conn.receive_data(b"RCPT TO:<c@d.test>\r\n")
    assert isinstance(conn.next_event(), smtp.RcptTo)
    conn.respond(Reply(250, ("ok",)))
    conn.receive_data(b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), smtp.DataStart)
    assert isinstance(conn.next_event(), smtp.DataChunk)
    assert isinstance(conn.next_event(), smtp.DataEnd)
    return conn


@pytest.mark.parametrize("queue_id", ["019abc2d4e5f6001a3f09c", "x", "0" * 40])
def test_respond_queued_is_respond_with_the_queued_reply(queue_id: str) -> None:
    reply = Reply(250, (f"Message queued as {queue_id}",), "2.0.0")
    assert queued_reply(queue_id) == reply.to_bytes()
    slow, fast = _at_data_end(), _at_data_end()
    slow._errors = fast._errors = 3
    slow.respond(reply)
    fast.respond_queued(queued_reply(queue_id))
    assert fast.data_to_send() == slow.data_to_send()
    assert vars(fast).keys() == vars(slow).keys()
    for name, value in vars(slow).items():
        if name not in ("_out", "_inbox", "_line_buf"):
            assert getattr(fast, name) == value, name
    assert fast.state is slow.state is smtp.SessionState.READY
    assert isinstance(fast.next_event(), smtp.Noop)


def test_respond_queued_refuses_what_is_not_a_pending_data_end_or_a_250_line() -> None:
    conn = smtp.SMTPServerConnection(smtp.ServerSettings(hostname="relay.test", max_size=1 << 20))
    with pytest.raises(LocalProtocolError):
        conn.respond_queued(b"250 ok\r\n")
    conn = _at_data_end()
    for wire in (b"251 ok\r\n", b"250 ok", b"250 ok\n", b"250-a\r\n250 b\r\n", b"250ok\r\n"):
        with pytest.raises(LocalProtocolError):
            conn.respond_queued(wire)
    conn.respond_queued(b"250 ok\r\n")
    assert conn.data_to_send().endswith(b"250 ok\r\n")


def test_the_sequence_table_by_state_is_sequence_refusal() -> None:
    for state in COMMAND_STATES:
        for verb in Verb:
            assert SEQUENCE_REFUSALS[state][verb] is sequence_refusal(state, verb)
    assert set(SEQUENCE_REFUSALS) == set(COMMAND_STATES)


def test_closed_follows_the_state() -> None:
    conn = smtp.SMTPServerConnection(smtp.ServerSettings(hostname="relay.test", max_size=1 << 20))
    assert not conn.closed
    conn.receive_data(b"HELO c\r\nMAIL FROM:<a@b.test>\r\n")
    while conn.next_event() is not smtp.NEED_DATA:
        assert conn.closed is (conn.state is smtp.SessionState.CLOSED)
        if conn._pending is not None:
            conn.respond(Reply(250, ("ok",)))
    conn.receive_data(b"QUIT\r\n")
    assert isinstance(conn.next_event(), smtp.Quit)
    assert conn.closed and conn.state is smtp.SessionState.CLOSED
    eof = smtp.SMTPServerConnection(smtp.ServerSettings(hostname="relay.test", max_size=1 << 20))
    eof.receive_data(b"")
    assert isinstance(eof.next_event(), smtp.ConnectionClosed)
    assert eof.closed


def test_with_nothing_buffered_a_command_state_needs_data_or_sees_the_end() -> None:
    conn = smtp.SMTPServerConnection(smtp.ServerSettings(hostname="relay.test", max_size=1 << 20))
    assert conn.next_event() is smtp.NEED_DATA
    conn.receive_data(b"HE")
    assert conn.next_event() is smtp.NEED_DATA  # a partial line stays buffered
    conn.receive_data(b"LO c\r\n")
    assert isinstance(conn.next_event(), smtp.Helo)
    assert conn.next_event() is smtp.NEED_DATA
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), smtp.ConnectionClosed)


def test_the_events_without_fields_are_shared_and_equal_to_new_ones() -> None:
    assert smtp.DataStart() == DATA_START and isinstance(DATA_START, smtp.DataStart)
    assert smtp.DataEnd() == DATA_END and isinstance(DATA_END, smtp.DataEnd)


def test_the_relay_networks_answer_is_remembered_per_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from zonemta.inbound import listener
    from zonemta.inbound.interfaces import interface_settings
    from zonemta.transport.interface import in_networks

    config = config_from_dict({"smtp": {"feeder": {"relay_networks": ["192.0.2.0/24"]}}})
    settings = interface_settings(config, "feeder")
    link, _ = _link()
    service = listener.SmtpInterfaceService(settings, build_intake(config, link))
    monkeypatch.setattr(listener, "RELAY_ALLOWED_CACHE", 3)
    addresses = ["192.0.2.7", "198.51.100.1", "::ffff:192.0.2.9", "127.0.0.1", "nonsense", ""]
    for _ in range(2):
        for address in addresses:
            assert service.relay_allowed(address) is in_networks(address, settings.relay_networks)
            assert len(service._relay_allowed) <= 3


class _KeepBody(_Body):
    def __init__(self) -> None:
        super().__init__()
        self.data = b""

    async def write(self, chunk: bytes) -> None:
        await super().write(chunk)
        self.data += chunk


class _KeepStore(_Store):
    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[_KeepBody] = []

    def new_body(self, message_id: str) -> BodyWriter:
        self.bodies.append(_KeepBody())
        return self.bodies[-1]


def _reference_split(chunks: list[bytes], max_header: int) -> tuple[bytes | None, bytes, bytes]:
    """What Reception.feed did before its first-chunk shortcut: (headers or None, body
    written, head left over)."""
    from zonemta.engine.intake.reception import is_header_block, split_header_block

    head = bytearray()
    headers: bytes | None = None
    body = b""
    for chunk in chunks:
        if not chunk:
            continue
        if headers is None:
            head += chunk
            split = split_header_block(bytes(head))
            if split is None:
                if len(head) > max_header:
                    headers = b""
                    body += bytes(head)
                    head.clear()
                continue
            block, rest = split
            head.clear()
            if is_header_block(block):
                headers = block
                body += rest
            else:
                headers = b""
                body += block + b"\r\n" + rest
        else:
            body += chunk
    return headers, body, bytes(head)


_PIECES = [b"Subject: x\r\n", b"\r\n", b"body line\r\n", b"not a header\r\n", b" folded\r\n", b"X"]


@settings(max_examples=300)
@given(
    st.lists(st.sampled_from(_PIECES), max_size=12),
    st.lists(st.integers(1, 40), max_size=8),
    st.sampled_from([8, 30, 1024]),
)
async def test_reception_splits_the_header_block_as_before_in_any_chunking(
    pieces: list[bytes], cuts: list[int], max_header: int
) -> None:
    content = b"".join(pieces)
    chunks, start = [], 0
    for cut in cuts:
        chunks.append(content[start : start + cut])
        start += cut
    chunks.append(content[start:])
    store = _KeepStore()
    intake = Intake(
        store,
        Router(config_from_dict({})),
        EventBus(),
        ids=QueueIdGenerator(time.time),
        clock=time.time,
        body_hash=False,
    )
    reception = intake.begin(Envelope("a@b.test", ("c@d.test",), "feeder"), max_header=max_header)
    for chunk in chunks:
        await reception.feed(chunk)
    headers, body, head = _reference_split(chunks, max_header)
    assert reception._headers == headers
    assert store.bodies[0].data == body
    assert bytes(reception._head) == head
