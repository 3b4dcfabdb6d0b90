"""Hypothesis: the client session alone against random and hostile server replies.

Whatever the server says, in whatever pieces, a correctly driven session yields events or
raises ``RemoteProtocolError`` (then stays closed and raises it again), never anything else;
every transaction it reports has one outcome per recipient; what it buffers stays bounded.
"""

from __future__ import annotations

import collections
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_smtp_pair import pieces
from zonemta.transport.smtp.client import MAX_REPLY_LINE_LENGTH, NEED_DATA
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
    UpgradeTLS,
)
from zonemta.transport.smtp.client_session import SMTPClientSession
from zonemta.transport.smtp.errors import RemoteProtocolError

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Replies that move a session along, mixed with fragments and junk.
TOKENS = [
    b"220 mx.test ESMTP\r\n", b"220 go\r\n", b"250 ok\r\n", b"250-mx.test\r\n",
    b"250-PIPELINING\r\n", b"250-STARTTLS\r\n", b"250-SIZE 10\r\n", b"250 SMTPUTF8\r\n",
    b"250 PIPELINING\r\n", b"354 go ahead\r\n", b"421 4.4.2 bye\r\n", b"451 4.3.0 later\r\n",
    b"452 4.5.3 too many\r\n", b"500 what?\r\n", b"502 no\r\n", b"550 5.1.1 no\r\n",
    b"554 5.7.1 no\r\n", b"221 bye\r\n", b"503 bad sequence\r\n", b"334 \r\n",
    b"\r\n", b"\n", b"2", b"25", b"250", b"-", b" ", b"\xff\xfe", b"\r", b"x" * 50,
    b"250-" + b"y" * 5000,
]  # fmt: skip
COMPLETE = [t for t in TOKENS if t[:3].isdigit() and t.endswith(b"\r\n")]
COMPLETE += [b"250 ok\r\n"] * 30 + [b"354 go ahead\r\n"] * 8  # accepted more often than not
EHLO = [
    b"250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
    b"250-mx.test\r\n250-SIZE 10\r\n250 PIPELINING\r\n",
    b"250 mx.test\r\n",
    b"502 no\r\n250 mx.test\r\n",
]
junk = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=20), max_size=40).map(b"".join)
# Plausible sessions: a greeting and an EHLO reply, then whole replies, then maybe junk.
sessions = st.tuples(
    st.sampled_from([b"220 mx.test ESMTP\r\n", b"220-mx.test\r\n220 ESMTP\r\n"]),
    st.sampled_from(EHLO),
    st.lists(st.sampled_from(COMPLETE), max_size=30).map(b"".join),
    st.just(b"") | junk,
).map(b"".join)
replies = sessions | junk
sizes = st.lists(st.integers(1, 64), max_size=10)
envelopes = st.builds(
    Envelope,
    mail_from=st.sampled_from(["", "s@origin.test"]),
    recipients=st.lists(
        st.sampled_from(["a@x.test", "b@x.test", "c@y.test"]), min_size=1, max_size=4
    ).map(tuple),
    size=st.sampled_from([0, 5, 50]),
    body_8bit=st.booleans(),
)
actions = st.lists(st.sampled_from(["tls", "mail", "quit"]), min_size=1, max_size=6)


class Script:
    """A correct driver: answers the session's events, taking its next action in turn. Like
    a real one, it has a limited number of messages to send (a transaction the session
    refuses locally, e.g. too large for the server's SIZE, ends without any reply, so a
    driver that kept starting them would never stop)."""

    MESSAGES = 8

    def __init__(self, session: SMTPClientSession, plan: list[str], envelope: Envelope) -> None:
        self.session = session
        self.plan = itertools.cycle(plan)
        self.envelope = envelope
        self.started = 0
        self.done: list[TransactionDone] = []

    def act(self) -> None:
        session = self.session
        if not session.usable:
            return
        action = next(self.plan)
        if action == "tls" and session.extensions.starttls and not session.tls_active:
            session.start_tls()
        elif action == "quit" or self.started >= self.MESSAGES:
            session.quit()
        else:
            session.start_transaction(self.envelope)
            self.started += 1

    def on(self, event: ClientEvent) -> None:
        session = self.session
        if isinstance(event, (Ready, TlsRefused)):
            self.act()
        elif isinstance(event, UpgradeTLS):
            session.tls_started()
        elif isinstance(event, SendBody):
            for chunk in (b".x\r\n", b"\r\n.", b"\r\n"):
                session.send_body(chunk)
            session.end_body()
        elif isinstance(event, TransactionDone):
            self.done.append(event)
            check(event, self.envelope)
            self.act()
        else:
            assert isinstance(event, (SessionRefused, Closed))
            assert session.closed


def check(event: TransactionDone, envelope: Envelope) -> None:
    result = event.result
    assert result.envelope == envelope
    assert [o.recipient for o in result.outcomes] == list(envelope.recipients)
    for outcome in result.outcomes:
        if outcome.status is RecipientStatus.ACCEPTED:
            assert outcome.stage is Stage.FINAL and outcome.reply.is_positive
            assert result.final == outcome.reply
        elif outcome.status is RecipientStatus.PERM_FAILED:
            assert outcome.reply.is_permanent
        else:
            assert not outcome.reply.is_permanent


@FUZZ
@given(data=replies, cut=sizes, eof=st.booleans(), plan=actions, envelope=envelopes)
def test_hostile_replies_yield_events_or_remote_errors(
    data: bytes, cut: list[int], eof: bool, plan: list[str], envelope: Envelope
) -> None:
    session = SMTPClientSession("relay.test")
    script = Script(session, plan, envelope)
    inbound = collections.deque(pieces(data, cut) + ([b""] if eof else []))
    try:
        while True:
            event = session.next_event()
            session.data_to_send()
            if event is NEED_DATA:
                # Nothing complete is left unparsed: at most one unfinished line.
                assert session.connection.buffered <= MAX_REPLY_LINE_LENGTH + 1
                if not inbound:
                    break
                session.receive_data(inbound.popleft())
                continue
            assert isinstance(event, ClientEvent)
            if isinstance(event, Closed):
                break
            script.on(event)
    except RemoteProtocolError:
        assert session.closed
        try:
            session.next_event()
        except RemoteProtocolError:
            pass
        else:
            raise AssertionError("a broken session must keep raising") from None
    # Every transaction reported is whole; only the last may still be in progress.
    assert script.started - len(script.done) in (0, 1)
