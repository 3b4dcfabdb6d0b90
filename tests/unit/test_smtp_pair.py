"""Our sans-IO client session paired with our sans-IO server, in memory: no sockets, no trio.

``Pair`` moves the client's bytes to the server and the server's back, in pieces when asked,
until the client has an event; ``ServerPeer`` drives ``SMTPServerConnection`` with a test
policy, records the messages it accepts, and can refuse EHLO or hide PIPELINING (the server
has no setting for either, so the peer wraps it). The helpers serve the fuzz test too.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable

import attrs
import pytest

from zonemta.transport.smtp.client import NEED_DATA as CLIENT_NEED_DATA
from zonemta.transport.smtp.client_events import (
    ClientEvent,
    Closed,
    Envelope,
    Ready,
    RecipientStatus,
    SendBody,
    Stage,
    TransactionDone,
    TransactionResult,
    UpgradeTLS,
)
from zonemta.transport.smtp.client_session import SMTPClientSession
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.smtp.server import (
    NEED_DATA,
    ConnectionClosed,
    DataAbort,
    DataChunk,
    DataEnd,
    Event,
    MailFrom,
    RcptTo,
    Rset,
    ServerSettings,
    SMTPServerConnection,
    StartTLS,
)

OK = Reply(250, ("Ok",), "2.0.0")
QUEUED = Reply(250, ("queued",), "2.0.0")
Policy = Callable[[Event], Reply]
EHLO_UNKNOWN = Reply(502, ("Error: command not recognized",), "5.5.2").to_bytes()


def accept_all(event: Event) -> Reply:
    return QUEUED if isinstance(event, DataEnd) else OK


def refusing(answers: dict[str, Reply], data: Reply = QUEUED) -> Policy:
    """Answer MAIL/RCPT for the addresses in ``answers`` with their reply, the rest 250;
    the end of data with ``data``."""

    def policy(event: Event) -> Reply:
        if isinstance(event, (MailFrom, RcptTo)):
            return answers.get(event.address, OK)
        return data

    return policy


@attrs.frozen
class Delivered:
    mail_from: str
    recipients: tuple[str, ...]
    body: bytes


class ServerPeer:
    """The sans-IO server behind a test policy (``policy`` answers MailFrom, RcptTo, DataEnd)."""

    def __init__(
        self,
        policy: Policy = accept_all,
        *,
        refuse_ehlo: bool = False,
        pipelining: bool = True,
        settings: ServerSettings | None = None,
    ) -> None:
        self.conn = SMTPServerConnection(
            settings or ServerSettings("mx.test", 0, max_header_size=0, starttls_available=True)
        )
        self.policy = policy
        self.pipelining = pipelining
        self.events: list[Event] = []
        self.delivered: list[Delivered] = []
        self.closed = False
        self._hello_line: bytearray | None = bytearray() if refuse_ehlo else None
        self._mail: str | None = None
        self._rcpts: list[str] = []
        self._body: list[bytes] = []
        self._out = bytearray()
        self._take()

    def receive(self, data: bytes) -> None:
        """Bytes from the client (``b""``: EOF)."""
        if self._hello_line is not None and data:
            # Until the first line that is not EHLO, answer EHLO like a pre-ESMTP server.
            self._hello_line += data
            while (end := self._hello_line.find(b"\n")) >= 0:
                line = bytes(self._hello_line[: end + 1])
                if not line.upper().startswith(b"EHLO"):
                    data, self._hello_line = bytes(self._hello_line), None
                    break
                del self._hello_line[: end + 1]
                self._out += EHLO_UNKNOWN
            else:
                return
        self.conn.receive_data(data)
        self._run()

    def output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _take(self) -> None:
        out = self.conn.data_to_send()
        if not self.pipelining:
            out = out.replace(b"250-PIPELINING\r\n", b"")
        self._out += out

    def _run(self) -> None:
        while not self.closed:
            event = self.conn.next_event()
            self._take()
            if event is NEED_DATA:
                return
            assert isinstance(event, Event)
            self.events.append(event)
            if isinstance(event, (MailFrom, RcptTo, DataEnd)):
                self._answer(event)
            elif isinstance(event, DataChunk):
                self._body.append(event.data)
            elif isinstance(event, (Rset, DataAbort)):
                self._reset()
            elif isinstance(event, StartTLS):
                self.conn.tls_started()  # TLS in memory: the same bytes, a fresh session
                self._reset()
            elif isinstance(event, ConnectionClosed):
                self.closed = True
            self._take()

    def _answer(self, event: MailFrom | RcptTo | DataEnd) -> None:
        reply = self.policy(event)
        self.conn.respond(reply)
        if isinstance(event, MailFrom) and reply.is_positive:
            self._mail = event.address
        elif isinstance(event, RcptTo) and reply.is_positive:
            self._rcpts.append(event.address)
        elif isinstance(event, DataEnd):
            if reply.is_positive:
                assert self._mail is not None
                body = b"".join(self._body)
                self.delivered.append(Delivered(self._mail, tuple(self._rcpts), body))
            self._reset()

    def _reset(self) -> None:
        self._mail, self._rcpts, self._body = None, [], []


def pieces(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes in turn (cycled; >= 1 each)."""
    out = []
    cycle = itertools.cycle([max(1, n) for n in sizes] or [len(data) or 1])
    while data:
        n = next(cycle)
        out.append(data[:n])
        data = data[n:]
    return out


class Pair:
    """A client session and a ``ServerPeer`` connected in memory."""

    def __init__(
        self,
        server: ServerPeer,
        *,
        to_server: Iterable[int] = (),
        to_client: Iterable[int] = (),
        name: str = "relay.test",
    ) -> None:
        self.client = SMTPClientSession(name)
        self.server = server
        self.to_server = list(to_server)
        self.to_client = list(to_client)
        self.sent: list[bytes] = []  # what the client wrote, per write
        self._inbound: collections.deque[bytes] = collections.deque()
        self._eof_sent = False

    def flush(self) -> None:
        data = self.client.data_to_send()
        if data:
            self.sent.append(data)
            for piece in pieces(data, self.to_server):
                self.server.receive(piece)

    def event(self) -> ClientEvent:
        """Move bytes both ways until the client has an event."""
        client = self.client
        while True:
            event = client.next_event()
            self.flush()
            if event is not CLIENT_NEED_DATA:
                assert isinstance(event, ClientEvent)
                return event
            if not self._inbound:
                self._inbound.extend(pieces(self.server.output(), self.to_client))
            if self._inbound:
                client.receive_data(self._inbound.popleft())
            elif self.server.closed and not self._eof_sent:
                self._eof_sent = True
                client.receive_data(b"")
            else:
                raise AssertionError(f"stuck in {client.state.name}: nobody has anything to say")

    def ready(self) -> Ready:
        event = self.event()
        assert isinstance(event, Ready), event
        return event

    def transaction(self, envelope: Envelope, content: list[bytes]) -> TransactionResult:
        self.client.start_transaction(envelope)
        event = self.event()
        if isinstance(event, SendBody):
            for chunk in content:
                self.client.send_body(chunk)
                self.flush()
            self.client.end_body()
            event = self.event()
        assert isinstance(event, TransactionDone), event
        return event.result

    def quit(self) -> Closed:
        self.client.quit()
        event = self.event()
        assert isinstance(event, Closed), event
        return event


def sent_body(content: list[bytes]) -> bytes:
    """What the server delivers for ``content``: the same, ending in CRLF."""
    body = b"".join(content)
    return body if not body or body.endswith(b"\r\n") else body + b"\r\n"


def outcomes(result: TransactionResult) -> list[tuple[str, RecipientStatus, Stage, int]]:
    return [(o.recipient, o.status, o.stage, o.reply.code) for o in result.outcomes]


ACCEPTED = RecipientStatus.ACCEPTED
TEMP = RecipientStatus.TEMP_FAILED
PERM = RecipientStatus.PERM_FAILED
BODY = [b"Subject: pair\r\n\r\n", b"hello\r\n"]
FOUR = Envelope("s@origin.test", ("a@x.test", "b@x.test", "c@x.test", "d@x.test"), 40)
REFUSALS = {
    "b@x.test": Reply(550, ("no such user",), "5.1.1"),
    "c@x.test": Reply(451, ("try later",), "4.3.0"),
}

# --- the session ------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [(), (1,), (3, 7)])
def test_ehlo_then_quit(cut: tuple[int, ...]) -> None:
    pair = Pair(ServerPeer(), to_server=cut, to_client=cut)
    ready = pair.ready()
    assert ready.extended and ready.extensions.pipelining and ready.extensions.starttls
    closed = pair.quit()
    assert closed.reply is not None and closed.reply.code == 221
    assert pair.server.closed and pair.client.closed


def test_helo_fallback_against_a_server_that_refuses_ehlo() -> None:
    pair = Pair(ServerPeer(refuse_ehlo=True))
    ready = pair.ready()
    assert not ready.extended and not ready.extensions.pipelining
    assert pair.sent[:2] == [b"EHLO relay.test\r\n", b"HELO relay.test\r\n"]
    result = pair.transaction(FOUR, BODY)
    assert result.accepted == FOUR.recipients
    # Lock-step without PIPELINING: one command per write until the content.
    assert pair.sent[2:8] == [
        b"MAIL FROM:<s@origin.test>\r\n",
        *[f"RCPT TO:<{r}>\r\n".encode() for r in FOUR.recipients],
        b"DATA\r\n",
    ]
    assert pair.server.delivered == [Delivered("s@origin.test", FOUR.recipients, b"".join(BODY))]


def test_starttls_in_memory_then_ehlo_again() -> None:
    pair = Pair(ServerPeer())
    assert pair.ready().extensions.starttls
    pair.client.start_tls()
    assert isinstance(pair.event(), UpgradeTLS)
    assert pair.server.conn.tls_active  # the server side did its "handshake"
    pair.client.tls_started()
    ready = pair.ready()
    assert ready.tls and not ready.extensions.starttls
    assert pair.transaction(FOUR, BODY).accepted == FOUR.recipients


# --- transactions -----------------------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("cut", [(), (1,), (5, 2)])
def test_multi_recipient_transaction_with_some_refused(
    pipelining: bool, cut: tuple[int, ...]
) -> None:
    pair = Pair(ServerPeer(refusing(REFUSALS), pipelining=pipelining), to_server=cut, to_client=cut)
    assert pair.ready().extensions.pipelining is pipelining
    result = pair.transaction(FOUR, BODY)
    assert outcomes(result) == [
        ("a@x.test", ACCEPTED, Stage.FINAL, 250),
        ("b@x.test", PERM, Stage.RCPT, 550),
        ("c@x.test", TEMP, Stage.RCPT, 451),
        ("d@x.test", ACCEPTED, Stage.FINAL, 250),
    ]
    assert pair.server.delivered == [
        Delivered("s@origin.test", ("a@x.test", "d@x.test"), b"".join(BODY))
    ]
    if pipelining:  # one write for the whole group (RFC 2920)
        group = pair.sent[1]
        assert group.startswith(b"MAIL") and group.count(b"\r\n") == 6
        assert group.endswith(b"DATA\r\n")


@pytest.mark.parametrize(
    "content",
    [
        [b".\r\n"],
        [b"..\r\n", b".", b"\r\n", b"...more\r\n"],
        [b"line\r\n.\r\n", b"after the fake end\r\n"],
        [b"no final line ending\r\n.", b"x"],
        [b".starts", b" with a dot"],
        [b"\r\n.\r\n"],
        [],
    ],
)
def test_dot_stuffing_round_trip(content: list[bytes]) -> None:
    pair = Pair(ServerPeer(), to_server=(3,))
    pair.ready()
    result = pair.transaction(Envelope("", ("a@x.test",), 10), content)
    assert result.accepted == ("a@x.test",)
    assert [d.body for d in pair.server.delivered] == [sent_body(content)]


def test_rset_then_a_second_transaction() -> None:
    everyone_refused = {r: Reply(550, ("no",), "5.1.1") for r in FOUR.recipients[:2]}
    pair = Pair(ServerPeer(refusing(everyone_refused)))
    pair.ready()
    first = pair.transaction(Envelope("s@origin.test", FOUR.recipients[:2], 5), BODY)
    assert [o.status for o in first.outcomes] == [PERM, PERM]
    assert not first.body_sent
    assert pair.sent[-1] == b"RSET\r\n"
    assert isinstance(pair.server.events[-1], Rset)
    second = pair.transaction(Envelope("t@origin.test", FOUR.recipients[2:], 5), [b"two\r\n"])
    assert second.accepted == FOUR.recipients[2:]
    assert pair.server.delivered == [Delivered("t@origin.test", FOUR.recipients[2:], b"two\r\n")]
    assert pair.quit().reply == Reply(221, ("Bye",), "2.0.0")


def test_refused_sender_pipelined_against_our_server() -> None:
    pair = Pair(ServerPeer(refusing({"s@origin.test": Reply(553, ("bad sender",), "5.7.1")})))
    pair.ready()
    result = pair.transaction(FOUR, BODY)
    assert {(o.stage, o.reply.code) for o in result.outcomes} == {(Stage.MAIL, 553)}
    assert result.data is not None and result.data.code == 503  # our server: no MAIL first
    assert pair.client.usable and pair.server.delivered == []
    assert pair.transaction(Envelope("", ("a@x.test",), 1), [b"ok\r\n"]).accepted == ("a@x.test",)


def test_refused_content_then_a_second_transaction() -> None:
    pair = Pair(ServerPeer(refusing({}, data=Reply(554, ("spam",), "5.7.1"))))
    pair.ready()
    result = pair.transaction(FOUR, BODY)
    assert {(o.status, o.stage, o.reply.code) for o in result.outcomes} == {
        (PERM, Stage.FINAL, 554)
    }
    assert result.body_sent and pair.client.usable
    pair.server.policy = accept_all
    assert pair.transaction(FOUR, BODY).accepted == FOUR.recipients


def test_server_closing_with_421_in_the_middle() -> None:
    closing = {"b@x.test": Reply(421, ("shutting down",), "4.3.2")}
    pair = Pair(ServerPeer(refusing(closing)))
    pair.ready()
    result = pair.transaction(FOUR, BODY)
    assert outcomes(result) == [
        ("a@x.test", TEMP, Stage.RCPT, 421),
        ("b@x.test", TEMP, Stage.RCPT, 421),
        ("c@x.test", TEMP, Stage.RCPT, 421),
        ("d@x.test", TEMP, Stage.RCPT, 421),
    ]
    assert pair.client.closed and pair.server.closed and pair.server.delivered == []
