"""States of the SMTP client session and the one table that drives them.

``TRANSITIONS`` maps (state, trigger) to the next state: every state change of
:class:`~zonemta.transport.smtp.client_session.SMTPClientSession` is one lookup in it, and an
unknown pair raises ``LocalProtocolError`` naming both. A reply is classified into a trigger
(accepted, refused, "command not recognized", 421 closing ...) before the lookup; the table
holds no conditions. ``WAITS`` says, for the states that wait on the server with one kind of
reply, which timeout applies and which stage a failure there belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping

from zonemta.identity_enum import IdentityEnum
from zonemta.transport.smtp.client_events import Stage, Wait
from zonemta.transport.smtp.errors import LocalProtocolError


class ClientState(IdentityEnum):
    """Where an SMTP client session is."""

    GREETING = "greeting"  # waiting for the 220
    EHLO = "ehlo"  # EHLO sent (after the greeting, or after the TLS handshake)
    HELO = "helo"  # EHLO was not recognised: HELO sent
    READY = "ready"  # idle: STARTTLS, a transaction or QUIT may start
    STARTTLS = "starttls"  # STARTTLS sent
    TLS_HANDSHAKE = "tls_handshake"  # 220 to STARTTLS read: the driver does the handshake
    TRANSACTION = "transaction"  # MAIL, RCPT..., DATA: reading their replies
    BODY = "body"  # 354 read: the driver sends the content
    END_OF_DATA = "end_of_data"  # content and terminator sent: waiting for the final reply
    DISCARD = "discard"  # 354 with no recipient accepted: empty content sent, reply awaited
    RSET = "rset"  # a refused transaction: RSET sent
    QUIT = "quit"  # QUIT sent
    CLOSED = "closed"  # QUIT answered, 421, EOF, refused session or RSET, or a protocol error


class ClientTrigger(IdentityEnum):
    """What happened, classified before the transition lookup."""

    GREETED = "greeted"  # 2xx greeting
    HELLO_DONE = "hello_done"  # 2xx to EHLO or HELO
    EHLO_UNKNOWN = "ehlo_unknown"  # 500/502 to EHLO: fall back to HELO
    REFUSED = "refused"  # the greeting, EHLO or HELO refused otherwise
    START_TLS = "start_tls"  # the driver asked for STARTTLS
    TLS_GO = "tls_go"  # 220 to STARTTLS
    TLS_REFUSED = "tls_refused"  # STARTTLS answered otherwise (not 421)
    TLS_STARTED = "tls_started"  # the driver finished the handshake
    TLS_FAILED = "tls_failed"  # the driver's handshake failed
    BEGIN = "begin"  # the driver started a transaction
    LOCAL_REFUSAL = "local_refusal"  # the transaction cannot go to this server at all
    REPLY = "reply"  # a transaction reply, more to read or send
    GO_AHEAD = "go_ahead"  # 354 and at least one recipient accepted
    DISCARD = "discard"  # 354 but MAIL or every RCPT refused
    ABANDON = "abandon"  # the transaction failed before its content: reset it
    BODY_DONE = "body_done"  # the driver ended the content
    FINISHED = "finished"  # the reply to the end of data (not 421)
    RESET_DONE = "reset_done"  # 2xx to RSET
    RESET_FAILED = "reset_failed"  # RSET refused: the session cannot be trusted
    QUIT = "quit"  # the driver sent QUIT
    CLOSE = "close"  # 421, the reply to QUIT, or EOF while idle
    BROKEN = "broken"  # a protocol error (RemoteProtocolError) ended the session


S = ClientState
T = ClientTrigger

_ROWS: dict[tuple[ClientState, ClientTrigger], ClientState] = {
    (S.GREETING, T.GREETED): S.EHLO,
    (S.GREETING, T.REFUSED): S.CLOSED,
    (S.GREETING, T.CLOSE): S.CLOSED,
    (S.EHLO, T.HELLO_DONE): S.READY,
    (S.EHLO, T.EHLO_UNKNOWN): S.HELO,
    (S.EHLO, T.REFUSED): S.CLOSED,
    (S.EHLO, T.CLOSE): S.CLOSED,
    (S.HELO, T.HELLO_DONE): S.READY,
    (S.HELO, T.REFUSED): S.CLOSED,
    (S.HELO, T.CLOSE): S.CLOSED,
    (S.READY, T.START_TLS): S.STARTTLS,
    (S.READY, T.BEGIN): S.TRANSACTION,
    (S.READY, T.LOCAL_REFUSAL): S.READY,
    (S.READY, T.QUIT): S.QUIT,
    (S.READY, T.CLOSE): S.CLOSED,
    (S.STARTTLS, T.TLS_GO): S.TLS_HANDSHAKE,
    (S.STARTTLS, T.TLS_REFUSED): S.READY,
    (S.STARTTLS, T.CLOSE): S.CLOSED,
    (S.TLS_HANDSHAKE, T.TLS_STARTED): S.EHLO,
    (S.TLS_HANDSHAKE, T.TLS_FAILED): S.CLOSED,
    (S.TRANSACTION, T.REPLY): S.TRANSACTION,
    (S.TRANSACTION, T.GO_AHEAD): S.BODY,
    (S.TRANSACTION, T.DISCARD): S.DISCARD,
    (S.TRANSACTION, T.ABANDON): S.RSET,
    (S.TRANSACTION, T.CLOSE): S.CLOSED,
    (S.BODY, T.BODY_DONE): S.END_OF_DATA,
    (S.END_OF_DATA, T.FINISHED): S.READY,
    (S.END_OF_DATA, T.CLOSE): S.CLOSED,
    (S.DISCARD, T.ABANDON): S.RSET,
    (S.DISCARD, T.CLOSE): S.CLOSED,
    (S.RSET, T.RESET_DONE): S.READY,
    (S.RSET, T.RESET_FAILED): S.CLOSED,
    (S.RSET, T.CLOSE): S.CLOSED,
    (S.QUIT, T.CLOSE): S.CLOSED,
}
# A protocol error ends the session from wherever it is.
_ROWS.update({(state, T.BROKEN): S.CLOSED for state in S if state is not S.CLOSED})
TRANSITIONS: Mapping[tuple[ClientState, ClientTrigger], ClientState] = _ROWS


def transition(state: ClientState, trigger: ClientTrigger) -> ClientState:
    """The state after ``trigger`` in ``state``.

    Raises ``LocalProtocolError`` naming both when the table has no such row (a method called
    in the wrong state, or a bug in the session object).
    """
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise LocalProtocolError(
            f"no SMTP client transition for trigger {trigger.name} in state {state.name}"
        ) from None


# The timeout and the stage of the states that wait for one kind of reply (or, BODY, for the
# driver's sending). TRANSACTION's depend on the next reply due (MAIL, RCPT or DATA).
WAITS: Mapping[ClientState, tuple[Wait, Stage]] = {
    S.GREETING: (Wait.GREETING, Stage.GREETING),
    S.EHLO: (Wait.COMMAND, Stage.EHLO),
    S.HELO: (Wait.COMMAND, Stage.EHLO),
    S.STARTTLS: (Wait.COMMAND, Stage.STARTTLS),
    S.BODY: (Wait.DATA_BLOCK, Stage.BODY),
    S.END_OF_DATA: (Wait.DATA_TERMINATION, Stage.FINAL),
    S.DISCARD: (Wait.DATA_TERMINATION, Stage.FINAL),
    S.RSET: (Wait.COMMAND, Stage.MAIL),
    S.QUIT: (Wait.COMMAND, Stage.FINAL),
}
TRANSACTION_WAITS: Mapping[Stage, Wait] = {
    Stage.MAIL: Wait.MAIL,
    Stage.RCPT: Wait.RCPT,
    Stage.DATA: Wait.DATA_INITIATION,
}
