"""SMTPClientSession: the sans-IO client transaction object, driven by byte strings."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.unit.test_smtp_client import CHUNKINGS, EHLO_POSTFIX
from zonemta.transport.smtp.client import NEED_DATA
from zonemta.transport.smtp.client_events import (
    ClientEvent,
    Closed,
    Envelope,
    Ready,
    RecipientStatus,
    SendBody,
    SessionRefused,
    Stage,
    TlsRefused,
    TransactionDone,
    TransactionResult,
    UpgradeTLS,
    Wait,
)
from zonemta.transport.smtp.client_session import SMTPClientSession
from zonemta.transport.smtp.client_states import TRANSITIONS, ClientState, ClientTrigger
from zonemta.transport.smtp.errors import LocalProtocolError, RemoteProtocolError
from zonemta.transport.smtp.reply import Reply

Chunking = Callable[[bytes], list[bytes]]

EHLO_PLAIN = b"250-mx.test\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"  # no PIPELINING
EHLO_PIPELINING = b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"


def step(
    session: SMTPClientSession, data: bytes, chunking: Chunking = lambda d: [d]
) -> tuple[ClientEvent | type[NEED_DATA], bytes]:
    """Feed ``data`` (in pieces) and return the first event and what the session sent."""
    sent = [session.data_to_send()]
    event: ClientEvent | type[NEED_DATA] = session.next_event()
    sent.append(session.data_to_send())
    for piece in chunking(data) if data else []:
        if event is not NEED_DATA:
            break
        session.receive_data(piece)
        event = session.next_event()
        sent.append(session.data_to_send())
    return event, b"".join(sent)


def ready(ehlo: bytes = EHLO_PIPELINING) -> SMTPClientSession:
    session = SMTPClientSession("relay.test")
    event, sent = step(session, b"220 mx.test ESMTP\r\n" + ehlo)
    assert isinstance(event, Ready)
    assert sent == b"EHLO relay.test\r\n"
    return session


def done(event: object) -> TransactionResult:
    assert isinstance(event, TransactionDone), event
    return event.result


def statuses(result: TransactionResult) -> list[tuple[str, RecipientStatus, Stage, int]]:
    return [(o.recipient, o.status, o.stage, o.reply.code) for o in result.outcomes]


A = RecipientStatus.ACCEPTED
TEMP = RecipientStatus.TEMP_FAILED
PERM = RecipientStatus.PERM_FAILED
THREE = Envelope("s@origin.test", ("a@x.test", "b@x.test", "c@x.test"), 12)


# --- greeting, EHLO, HELO ---------------------------------------------------------------------


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_greeting_and_ehlo(chunking: Chunking) -> None:
    session = SMTPClientSession("relay.test")
    assert (session.wait, session.stage) == (Wait.GREETING, Stage.GREETING)
    assert session.data_to_send() == b""  # nothing before the greeting
    event, sent = step(session, b"220 mx.test ESMTP\r\n" + EHLO_POSTFIX, chunking)
    assert sent == b"EHLO relay.test\r\n"
    assert isinstance(event, Ready)
    assert event.extended and not event.tls
    assert event.extensions.pipelining and event.extensions.size == 10240000
    assert session.usable and session.extensions == event.extensions
    assert session.wait is None and session.stage is None
    assert session.reply_count == 2


@pytest.mark.parametrize("code", [500, 502])
def test_helo_fallback_when_ehlo_is_not_recognised(code: int) -> None:
    session = SMTPClientSession("relay.test")
    event, sent = step(session, b"220 old.test\r\n" + f"{code} what?\r\n".encode())
    assert event is NEED_DATA
    assert sent == b"EHLO relay.test\r\nHELO relay.test\r\n"
    assert (session.state, session.stage, session.wait) == (
        ClientState.HELO,
        Stage.EHLO,
        Wait.COMMAND,
    )
    event, _ = step(session, b"250 old.test\r\n")
    assert isinstance(event, Ready)
    assert not event.extended and not event.extensions.pipelining


@pytest.mark.parametrize(
    ("wire", "stage", "code"),
    [
        (b"554 5.7.1 go away\r\n", Stage.GREETING, 554),
        (b"421 busy\r\n", Stage.GREETING, 421),
        (b"220 hi\r\n550 no EHLO for you\r\n", Stage.EHLO, 550),
        (b"220 hi\r\n421 closing\r\n", Stage.EHLO, 421),
        (b"220 hi\r\n502 no\r\n501 bad HELO\r\n", Stage.EHLO, 501),
    ],
)
def test_refused_sessions(wire: bytes, stage: Stage, code: int) -> None:
    session = SMTPClientSession("relay.test")
    event, _ = step(session, wire)
    assert isinstance(event, SessionRefused)
    assert (event.stage, event.reply.code) == (stage, code)
    assert session.closed and not session.usable
    assert session.next_event() == Closed(event.reply)
    session.receive_data(b"anything after close is dropped")
    assert session.next_event() == Closed(event.reply)


def test_unusable_ehlo_name() -> None:
    with pytest.raises(LocalProtocolError):
        SMTPClientSession("bad name")


# --- STARTTLS ---------------------------------------------------------------------------------


def test_starttls_then_ehlo_again() -> None:
    session = ready()
    session.start_tls()
    assert (session.stage, session.wait) == (Stage.STARTTLS, Wait.COMMAND)
    event, sent = step(session, b"220 2.0.0 go ahead\r\n")
    assert sent == b"STARTTLS\r\n"
    assert isinstance(event, UpgradeTLS)
    with pytest.raises(LocalProtocolError, match="tls_started"):
        session.next_event()
    session.tls_started()
    assert session.tls_active
    event, sent = step(session, b"250-mx.test\r\n250 PIPELINING\r\n")
    assert sent == b"EHLO relay.test\r\n"
    assert isinstance(event, Ready)
    assert event.tls and event.extensions.pipelining and not event.extensions.starttls
    with pytest.raises(LocalProtocolError):
        session.start_tls()  # once is enough


@pytest.mark.parametrize("packet", [b"220 go\r\n250 injected\r\n", b"220 go\r\nX"])
def test_starttls_injection(packet: bytes) -> None:
    session = ready()
    session.start_tls()
    with pytest.raises(RemoteProtocolError, match="injection"):
        step(session, packet)
    assert session.closed
    with pytest.raises(RemoteProtocolError):
        session.next_event()


def test_bytes_fed_during_the_handshake_are_an_injection() -> None:
    session = ready()
    session.start_tls()
    assert isinstance(step(session, b"220 go\r\n")[0], UpgradeTLS)
    session.receive_data(b"250 late\r\n")
    with pytest.raises(RemoteProtocolError, match="injection"):
        session.tls_started()
    assert session.closed


def test_starttls_refused_goes_on_in_plaintext_but_421_closes() -> None:
    session = ready()
    session.start_tls()
    event, _ = step(session, b"454 4.7.0 TLS not available\r\n")
    assert event == TlsRefused(Reply(454, ("TLS not available",), "4.7.0"))
    assert session.usable and not session.tls_active
    session = ready()
    session.start_tls()
    event, _ = step(session, b"421 4.3.2 shutting down\r\n")
    assert isinstance(event, TlsRefused)
    assert session.closed


def test_starttls_with_a_bogus_positive_reply() -> None:
    session = ready()
    session.start_tls()
    with pytest.raises(RemoteProtocolError, match="not 220"):
        step(session, b"250 sure\r\n")


def test_starttls_needs_the_offer_and_the_handshake_can_fail() -> None:
    with pytest.raises(LocalProtocolError, match="not offered"):
        ready(EHLO_PLAIN).start_tls()
    session = ready()
    session.start_tls()
    step(session, b"220 go\r\n")
    session.tls_failed()
    assert session.closed and session.next_event() == Closed()


# --- transactions -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_pipelined_transaction_with_one_recipient_refused(chunking: Chunking) -> None:
    session = ready()
    session.start_transaction(THREE)
    assert (session.stage, session.wait) == (Stage.MAIL, Wait.MAIL)
    replies = b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n"
    event, sent = step(session, replies, chunking)
    assert sent == (
        b"MAIL FROM:<s@origin.test> SIZE=12\r\n"
        b"RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\n"
        b"DATA\r\n"
    )
    assert event == SendBody()
    assert (session.stage, session.wait) == (Stage.BODY, Wait.DATA_BLOCK)
    with pytest.raises(LocalProtocolError, match="end_body"):
        session.next_event()
    session.send_body(b".hidden\r\nline\r\n.")
    session.send_body(b"\r\nlast")
    session.end_body()
    assert session.data_to_send() == b"..hidden\r\nline\r\n..\r\nlast\r\n.\r\n"
    assert (session.stage, session.wait) == (Stage.FINAL, Wait.DATA_TERMINATION)
    result = done(step(session, b"250 2.0.0 queued as X\r\n", chunking)[0])
    assert statuses(result) == [
        ("a@x.test", A, Stage.FINAL, 250),
        ("b@x.test", PERM, Stage.RCPT, 550),
        ("c@x.test", A, Stage.FINAL, 250),
    ]
    assert result.accepted == ("a@x.test", "c@x.test")
    assert result.body_sent and result.data is not None and result.data.code == 354
    assert session.usable


def test_lock_step_transaction_sends_one_command_per_reply() -> None:
    session = ready(EHLO_PLAIN)
    session.start_transaction(THREE)
    event, sent = step(session, b"")
    assert (event, sent) == (NEED_DATA, b"MAIL FROM:<s@origin.test> SIZE=12\r\n")
    for reply, command, stage in [
        (b"250 ok\r\n", b"RCPT TO:<a@x.test>\r\n", Stage.RCPT),
        (b"451 4.3.0 later\r\n", b"RCPT TO:<b@x.test>\r\n", Stage.RCPT),
        (b"250 ok\r\n", b"RCPT TO:<c@x.test>\r\n", Stage.RCPT),
        (b"550 no\r\n", b"DATA\r\n", Stage.DATA),
    ]:
        event, sent = step(session, reply)
        assert (event, sent, session.stage) == (NEED_DATA, command, stage)
    assert session.wait is Wait.DATA_INITIATION
    assert step(session, b"354 go\r\n")[0] == SendBody()
    session.end_body()
    assert session.data_to_send() == b".\r\n"
    result = done(step(session, b"554 5.7.1 spam\r\n")[0])
    assert statuses(result) == [
        ("a@x.test", TEMP, Stage.RCPT, 451),
        ("b@x.test", PERM, Stage.FINAL, 554),
        ("c@x.test", PERM, Stage.RCPT, 550),
    ]
    assert session.usable  # no RSET after the end of data


def test_lock_step_with_every_recipient_refused_resets_without_data() -> None:
    session = ready(EHLO_PLAIN)
    session.start_transaction(THREE)
    step(session, b"")
    sent = b"".join(step(session, r)[1] for r in [b"250 ok\r\n", b"550 a\r\n", b"550 b\r\n"])
    assert sent == b"RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\n"
    event, sent = step(session, b"550 c\r\n")
    assert (event, sent, session.stage) == (NEED_DATA, b"RSET\r\n", Stage.MAIL)
    result = done(step(session, b"250 reset\r\n")[0])
    assert [o.status for o in result.outcomes] == [PERM, PERM, PERM]
    assert [o.reply.text for o in result.outcomes] == ["a", "b", "c"]
    assert result.data is None and not result.body_sent
    assert session.usable


def test_refused_sender_lock_step() -> None:
    session = ready(EHLO_PLAIN)
    session.start_transaction(THREE)
    event, sent = step(session, b"553 5.7.1 sender rejected\r\n")
    assert (event, sent) == (NEED_DATA, b"MAIL FROM:<s@origin.test> SIZE=12\r\nRSET\r\n")
    result = done(step(session, b"250 ok\r\n")[0])
    assert statuses(result) == [(r, PERM, Stage.MAIL, 553) for r in THREE.recipients]
    assert session.usable


def test_refused_sender_pipelined_and_data_taken_anyway() -> None:
    session = ready()
    session.start_transaction(THREE)
    replies = b"553 5.7.1 sender rejected\r\n503 a\r\n503 b\r\n503 c\r\n354 go\r\n"
    event, sent = step(session, replies)
    # RFC 2920 3.1: the server took DATA although nobody was accepted: end it empty.
    assert event is NEED_DATA and sent.endswith(b"DATA\r\n.\r\n")
    assert session.stage is Stage.FINAL
    event, sent = step(session, b"554 5.5.1 no valid recipients\r\n")
    assert (event, sent) == (NEED_DATA, b"RSET\r\n")
    result = done(step(session, b"250 ok\r\n")[0])
    assert statuses(result) == [(r, PERM, Stage.MAIL, 553) for r in THREE.recipients]
    assert result.final is None and not result.body_sent
    assert session.usable


def test_refused_data_resets() -> None:
    session = ready()
    session.start_transaction(THREE)
    event, _ = step(session, b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n451 4.3.0 not now\r\n")
    assert event is NEED_DATA and session.data_to_send() == b""
    assert session.stage is Stage.MAIL  # RSET's reply (sent by step)
    result = done(step(session, b"250 ok\r\n")[0])
    assert statuses(result) == [
        ("a@x.test", TEMP, Stage.DATA, 451),
        ("b@x.test", PERM, Stage.RCPT, 550),
        ("c@x.test", TEMP, Stage.DATA, 451),
    ]


@pytest.mark.parametrize("reply", [b"334 \r\n", b"300 go on\r\n"])
def test_a_data_reply_in_3xx_other_than_354_breaks_the_session(reply: bytes) -> None:
    session = ready()
    session.start_transaction(THREE)
    with pytest.raises(RemoteProtocolError, match="not 354"):
        step(session, b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n" + reply)
    assert session.closed
    with pytest.raises(RemoteProtocolError):
        session.next_event()


def test_a_refused_rset_closes_the_session() -> None:
    session = ready(EHLO_PLAIN)
    session.start_transaction(THREE)
    step(session, b"")
    result = done(step(session, b"550 no\r\n500 what RSET?\r\n")[0])
    assert result.outcomes[0].stage is Stage.MAIL
    assert session.closed and session.next_event() == Closed(Reply(500, ("what RSET?",)))


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        # 421 to the second RCPT: the server closes, the rest is never answered.
        (
            b"250 ok\r\n250 ok\r\n421 4.4.2 bye\r\n",
            [(TEMP, Stage.RCPT, 421), (TEMP, Stage.RCPT, 421), (TEMP, Stage.RCPT, 421)],
        ),
        (b"421 4.4.2 bye\r\n", [(TEMP, Stage.MAIL, 421)] * 3),
        (
            b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n421 bye\r\n",
            [(TEMP, Stage.DATA, 421), (PERM, Stage.RCPT, 550), (TEMP, Stage.DATA, 421)],
        ),
    ],
)
def test_421_ends_the_transaction_and_the_session(
    replies: bytes, expected: list[tuple[RecipientStatus, Stage, int]]
) -> None:
    session = ready()
    session.start_transaction(THREE)
    result = done(step(session, replies)[0])
    assert [(o.status, o.stage, o.reply.code) for o in result.outcomes] == expected
    assert session.closed
    closed = session.next_event()
    assert isinstance(closed, Closed) and closed.reply is not None and closed.reply.code == 421


def test_421_after_the_content() -> None:
    session = ready()
    session.start_transaction(Envelope("", ("a@x.test",), 0))
    assert step(session, b"250 ok\r\n250 ok\r\n354 go\r\n")[0] == SendBody()
    session.end_body()
    result = done(step(session, b"421 4.3.0 lost it\r\n")[0])
    assert statuses(result) == [("a@x.test", TEMP, Stage.FINAL, 421)]
    assert result.body_sent and session.closed


def test_two_transactions_on_one_session() -> None:
    session = ready()
    for n in range(2):
        session.start_transaction(Envelope("", (f"r{n}@x.test",), 5))
        event, sent = step(session, b"250 ok\r\n250 ok\r\n354 go\r\n")
        assert sent == f"MAIL FROM:<> SIZE=5\r\nRCPT TO:<r{n}@x.test>\r\nDATA\r\n".encode()
        assert event == SendBody()
        session.send_body(b"hi\r\n")
        session.end_body()
        result = done(step(session, b"250 ok\r\n")[0])
        assert result.accepted == (f"r{n}@x.test",)
    session.quit()
    event, sent = step(session, b"221 bye\r\n")
    assert (event, sent) == (Closed(Reply(221, ("bye",))), b"QUIT\r\n")


@pytest.mark.parametrize(
    ("envelope", "code"),
    [
        (Envelope("s@o.test", ("a@x.test",), 1001), 552),  # over SIZE 1000
        (Envelope("s@o.test", ("é@x.test",), 10, smtputf8=True), 553),  # no SMTPUTF8
    ],
)
def test_local_refusal_sends_nothing(envelope: Envelope, code: int) -> None:
    session = ready()
    session.start_transaction(envelope)
    assert session.data_to_send() == b""
    result = done(session.next_event())
    assert statuses(result) == [("a@x.test" if code == 552 else "é@x.test", PERM, Stage.MAIL, code)]
    assert session.usable and session.next_event() is NEED_DATA


def test_unsafe_addresses_queue_nothing() -> None:
    session = ready()
    with pytest.raises(LocalProtocolError):
        session.start_transaction(Envelope("s@o.test", ("a@x.test", "b>@x.test"), 1))
    with pytest.raises(LocalProtocolError):
        session.start_transaction(Envelope("s\r\n@o.test", ("a@x.test",), 1))
    assert session.usable and session.data_to_send() == b""
    assert session.connection.pending == 0
    with pytest.raises(LocalProtocolError):
        Envelope("s@o.test", (), 1)
    with pytest.raises(LocalProtocolError):
        Envelope("s@o.test", ("a@x.test",), -1)


def test_mail_parameters_follow_the_plan() -> None:
    session = ready(b"250-mx\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n")
    session.start_transaction(Envelope("é@o.test", ("ü@x.test",), 9, True, True))
    assert (
        session.data_to_send()
        == (
            "MAIL FROM:<é@o.test> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<ü@x.test>\r\nDATA\r\n"
        ).encode()
    )


def test_content_with_a_bare_line_feed_is_refused() -> None:
    session = ready()
    session.start_transaction(Envelope("", ("a@x.test",), 1))
    step(session, b"250 ok\r\n250 ok\r\n354 go\r\n")
    with pytest.raises(LocalProtocolError):
        session.send_body(b"smuggle\n.\r\n")


# --- misuse and the end of the session --------------------------------------------------------


def test_methods_in_the_wrong_state() -> None:
    session = SMTPClientSession("relay.test")
    for call in (
        lambda: session.start_transaction(THREE),
        session.quit,
        session.tls_started,
        session.end_body,
        lambda: session.send_body(b"x"),
    ):
        with pytest.raises(LocalProtocolError):
            call()
    session = ready()
    session.start_transaction(THREE)
    with pytest.raises(LocalProtocolError, match="BEGIN in state TRANSACTION"):
        session.start_transaction(THREE)


def test_eof() -> None:
    session = ready()
    session.receive_data(b"")
    assert session.next_event() == Closed()  # idle: the server went away
    session = ready()
    session.start_transaction(THREE)
    assert step(session, b"250 ok\r\n")[0] is NEED_DATA
    session.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed while waiting"):
        session.next_event()
    with pytest.raises(RemoteProtocolError):
        session.next_event()
    session = ready()
    session.quit()
    session.receive_data(b"")
    assert session.next_event() == Closed()  # QUIT answered by a close is fine


def test_the_stage_of_a_broken_reply_is_kept() -> None:
    session = ready()
    session.start_transaction(THREE)
    with pytest.raises(RemoteProtocolError, match="malformed"):
        step(session, b"250 ok\r\n250 ok\r\nno code\r\n")
    assert session.failed_stage is Stage.RCPT and session.stage is None
    session = ready()
    session.start_tls()
    step(session, b"220 go\r\n")
    session.receive_data(b"x")
    with pytest.raises(RemoteProtocolError):
        session.tls_started()
    assert session.failed_stage is Stage.STARTTLS


def test_unsolicited_reply_while_idle() -> None:
    session = ready()
    session.receive_data(b"250 surprise\r\n")
    with pytest.raises(RemoteProtocolError, match="unsolicited"):
        session.next_event()


def test_every_state_has_rows_and_unknown_pairs_raise() -> None:
    sources = {state for state, _trigger in TRANSITIONS}
    assert sources == set(ClientState) - {ClientState.CLOSED}
    targets = set(TRANSITIONS.values())
    assert targets == set(ClientState) - {ClientState.GREETING}
    assert all((state, ClientTrigger.BROKEN) in TRANSITIONS for state in sources)
