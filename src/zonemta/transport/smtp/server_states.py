"""Session states of the SMTP server and the two tables that drive them.

``TRANSITIONS`` maps (state, trigger) to the next state: every state change of
:class:`~zonemta.transport.smtp.server.SMTPServerConnection` is one lookup in it, and an unknown
pair is a bug in the server object (``LocalProtocolError`` naming both). Outcomes (a policy reply
accepted or refused) are classified into triggers before the lookup.

``COMMAND_TABLE`` says, per command verb and per command-reading state, whether the command may
run (``None``) or which bad-sequence reply the peer gets instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from zonemta.identity_enum import IdentityEnum
from zonemta.transport.smtp import server_replies as replies
from zonemta.transport.smtp.errors import LocalProtocolError
from zonemta.transport.smtp.reply import Reply


class SessionState(IdentityEnum):
    """Where an SMTP server session is."""

    CONNECTED = "connected"  # greeting queued; HELO/EHLO required (also right after STARTTLS)
    READY = "ready"  # HELO/EHLO done, no transaction: MAIL may start one
    MAIL = "mail"  # MAIL accepted, no recipient accepted yet
    RCPT = "rcpt"  # at least one recipient accepted: DATA may start
    DATA = "data"  # reading message content (until CRLF.CRLF)
    STARTTLS = "starttls"  # 220 queued for STARTTLS; waiting for tls_started()
    AUTH = "auth"  # AUTH started, a 334 challenge queued: reading the client's SASL response
    CLOSED = "closed"  # QUIT answered, close_with(), EOF or a fatal peer error


class Trigger(IdentityEnum):
    """What happened, classified before the transition lookup."""

    HELLO = "hello"  # HELO/EHLO answered (also resets a transaction, RFC 5321 4.1.4)
    RSET = "rset"
    MAIL_ACCEPTED = "mail_accepted"
    MAIL_REFUSED = "mail_refused"
    RCPT_ACCEPTED = "rcpt_accepted"
    RCPT_REFUSED = "rcpt_refused"
    DATA = "data"  # 354 queued
    DATA_DONE = "data_done"  # DataEnd answered, or an aborted body drained and refused
    STARTTLS = "starttls"
    TLS_STARTED = "tls_started"
    AUTH = "auth"  # a 334 challenge queued (AUTH without initial response, or LOGIN's next)
    AUTH_DONE = "auth_done"  # the Auth policy event answered, or the exchange refused/cancelled
    CLOSE = "close"


S = SessionState
T = Trigger

TRANSITIONS: Mapping[tuple[SessionState, Trigger], SessionState] = {
    (S.CONNECTED, T.HELLO): S.READY,
    (S.CONNECTED, T.RSET): S.CONNECTED,
    (S.CONNECTED, T.CLOSE): S.CLOSED,
    (S.READY, T.HELLO): S.READY,
    (S.READY, T.RSET): S.READY,
    (S.READY, T.MAIL_ACCEPTED): S.MAIL,
    (S.READY, T.MAIL_REFUSED): S.READY,
    (S.READY, T.STARTTLS): S.STARTTLS,
    (S.READY, T.AUTH): S.AUTH,
    (S.READY, T.AUTH_DONE): S.READY,
    (S.READY, T.CLOSE): S.CLOSED,
    (S.MAIL, T.HELLO): S.READY,
    (S.MAIL, T.RSET): S.READY,
    (S.MAIL, T.RCPT_ACCEPTED): S.RCPT,
    (S.MAIL, T.RCPT_REFUSED): S.MAIL,
    (S.MAIL, T.CLOSE): S.CLOSED,
    (S.RCPT, T.HELLO): S.READY,
    (S.RCPT, T.RSET): S.READY,
    (S.RCPT, T.RCPT_ACCEPTED): S.RCPT,
    (S.RCPT, T.RCPT_REFUSED): S.RCPT,
    (S.RCPT, T.DATA): S.DATA,
    (S.RCPT, T.CLOSE): S.CLOSED,
    (S.DATA, T.DATA_DONE): S.READY,
    (S.DATA, T.CLOSE): S.CLOSED,
    (S.STARTTLS, T.TLS_STARTED): S.CONNECTED,
    (S.STARTTLS, T.CLOSE): S.CLOSED,
    (S.AUTH, T.AUTH): S.AUTH,
    (S.AUTH, T.AUTH_DONE): S.READY,
    (S.AUTH, T.CLOSE): S.CLOSED,
}


def transition(state: SessionState, trigger: Trigger) -> SessionState:
    """The state after ``trigger`` in ``state``.

    Raises ``LocalProtocolError`` naming both when the table has no such row.
    """
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise LocalProtocolError(
            f"no SMTP server transition for trigger {trigger.name} in state {state.name}"
        ) from None


class Verb(IdentityEnum):
    """The commands the server implements."""

    HELO = "HELO"
    EHLO = "EHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    VRFY = "VRFY"
    HELP = "HELP"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"


# A dict lookup: ``Verb(name)`` goes through the enum metaclass (and raises for a word that
# is no verb), several times the price.
VERBS: dict[str, Verb] = {verb.value: verb for verb in Verb}

# Known commands we deliberately do not implement: 502 rather than 500 (RFC 5321 4.2.4).
NOT_IMPLEMENTED_VERBS = frozenset({"EXPN", "TURN", "ETRN", "ATRN", "BDAT", "SEND", "SOML"})

# The states in which command lines are read, in the column order of COMMAND_TABLE.
COMMAND_STATES = (S.CONNECTED, S.READY, S.MAIL, S.RCPT)

_OK = None
_HELO_FIRST = replies.NEED_HELO
_NESTED = replies.NESTED_MAIL
_NO_MAIL = replies.NEED_MAIL
_NO_RCPT = replies.NO_VALID_RECIPIENTS
_IN_TX = replies.TLS_IN_TRANSACTION
_AUTH_IN_TX = replies.AUTH_IN_TRANSACTION
# fmt: off
COMMAND_TABLE: Mapping[Verb, tuple[Reply | None, Reply | None, Reply | None, Reply | None]] = {
    #               CONNECTED    READY     MAIL       RCPT
    Verb.HELO:     (_OK,         _OK,      _OK,       _OK),
    Verb.EHLO:     (_OK,         _OK,      _OK,       _OK),
    Verb.MAIL:     (_HELO_FIRST, _OK,      _NESTED,   _NESTED),
    Verb.RCPT:     (_NO_MAIL,    _NO_MAIL, _OK,       _OK),
    Verb.DATA:     (_NO_MAIL,    _NO_MAIL, _NO_RCPT,  _OK),
    Verb.RSET:     (_OK,         _OK,      _OK,       _OK),
    Verb.NOOP:     (_OK,         _OK,      _OK,       _OK),
    Verb.QUIT:     (_OK,         _OK,      _OK,       _OK),
    Verb.VRFY:     (_OK,         _OK,      _OK,       _OK),
    Verb.HELP:     (_OK,         _OK,      _OK,       _OK),
    Verb.STARTTLS: (_HELO_FIRST, _OK,      _IN_TX,    _IN_TX),
    Verb.AUTH:     (_HELO_FIRST, _OK,      _AUTH_IN_TX, _AUTH_IN_TX),
}
# fmt: on
_COLUMN = {state: index for index, state in enumerate(COMMAND_STATES)}
# COMMAND_TABLE by state, then verb: what sequence_refusal answers (the server looks it up
# itself, in two dict lookups without a call: it reads commands in COMMAND_STATES only).
SEQUENCE_REFUSALS: dict[SessionState, dict[Verb, Reply | None]] = {
    state: {verb: row[column] for verb, row in COMMAND_TABLE.items()}
    for state, column in _COLUMN.items()
}


def sequence_refusal(state: SessionState, verb: Verb) -> Reply | None:
    """The bad-sequence reply for ``verb`` in ``state``, or None when the command may run.

    Raises ``LocalProtocolError`` when ``state`` is not one in which commands are read.
    """
    refusals = SEQUENCE_REFUSALS.get(state)
    if refusals is None:
        raise LocalProtocolError(f"no SMTP command is read in state {state.name} ({verb.name})")
    return refusals[verb]
