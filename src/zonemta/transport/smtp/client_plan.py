"""What an EHLO reply offers, and how one message's transaction is planned against it.

Pure values and one function: :class:`Extensions` parsed from a positive EHLO reply, and
:func:`plan_transaction`, which picks pipelining and the MAIL parameters or refuses a message
the server cannot take (RFC 6531, RFC 1870). Re-exported by ``client.py``.
"""

from __future__ import annotations

import enum

import attrs

from zonemta.transport.smtp.errors import LocalProtocolError
from zonemta.transport.smtp.reply import Reply

__all__ = [
    "Extensions",
    "RefusalReason",
    "TransactionPlan",
    "TransactionRefusal",
    "plan_transaction",
]


@attrs.frozen
class Extensions:
    """Service extensions advertised in an EHLO reply.

    ``size`` is None when SIZE was not advertised and 0 when it was advertised without a
    limit (RFC 1870). ``auth`` holds the upper-cased SASL mechanism names.
    """

    pipelining: bool = False
    size: int | None = None
    eightbitmime: bool = False
    smtputf8: bool = False
    starttls: bool = False
    enhancedstatuscodes: bool = False
    chunking: bool = False
    auth: frozenset[str] = frozenset()

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Extensions:
        """Parse the keyword lines (all but the first) of a positive EHLO reply.

        Keywords are case-insensitive; unknown keywords are ignored; a SIZE argument that is not
        a number counts as "no limit given". Raises ``LocalProtocolError`` for a non-2xx reply
        (it advertises nothing; the caller should have fallen back to HELO).
        """
        if not reply.is_positive:
            raise LocalProtocolError(f"not a positive EHLO reply: {reply}")
        flags: dict[str, bool] = {}
        size: int | None = None
        auth: set[str] = set()
        for line in reply.lines[1:]:
            words = line.split()
            if not words:
                continue
            keyword = words[0].upper()
            args = words[1:]
            if keyword == "SIZE":
                arg = args[0] if args else ""
                size = int(arg) if arg.isascii() and arg.isdigit() else 0
            elif keyword == "AUTH" or keyword.startswith("AUTH="):
                # "AUTH=LOGIN PLAIN" is the pre-standard form some servers still send.
                first = keyword[5:] if keyword.startswith("AUTH=") else ""
                auth.update(word.upper() for word in [first, *args] if word)
            elif keyword in _FLAG_KEYWORDS:
                flags[_FLAG_KEYWORDS[keyword]] = True
        return cls(size=size, auth=frozenset(auth), **flags)


_FLAG_KEYWORDS = {
    "PIPELINING": "pipelining",
    "8BITMIME": "eightbitmime",
    "SMTPUTF8": "smtputf8",
    "STARTTLS": "starttls",
    "ENHANCEDSTATUSCODES": "enhancedstatuscodes",
    "CHUNKING": "chunking",
}


class RefusalReason(enum.Enum):
    """Why a message cannot be sent to a server at all (a permanent failure, RFC 6531/1870)."""

    SMTPUTF8_UNSUPPORTED = "smtputf8_unsupported"
    MESSAGE_TOO_BIG = "message_too_big"


@attrs.frozen
class TransactionPlan:
    """How to run a transaction; the fields are ``mail()``'s keyword arguments and a flag."""

    pipelining: bool
    size: int | None
    body_8bit: bool
    smtputf8: bool


@attrs.frozen
class TransactionRefusal:
    """The message must bounce without being sent; ``reply`` is a locally made 5xx reply."""

    reason: RefusalReason
    reply: Reply


def plan_transaction(
    ext: Extensions, *, size: int, body_8bit: bool, smtputf8: bool
) -> TransactionPlan | TransactionRefusal:
    """Decide pipelining and MAIL parameters for one message, or refuse it.

    SIZE is sent only when advertised, BODY=8BITMIME only for an 8-bit body to a server that
    offers it (otherwise the body goes as-is, as Postfix does). A message that needs SMTPUTF8
    is refused when the server lacks it (RFC 6531: bounce, never mangle), and one larger than
    a positive advertised SIZE is refused with 552 5.3.4 (RFC 1870). Raises
    ``LocalProtocolError`` for a negative size.
    """
    if size < 0:
        raise LocalProtocolError(f"negative message size: {size}")
    if smtputf8 and not ext.smtputf8:
        return TransactionRefusal(
            RefusalReason.SMTPUTF8_UNSUPPORTED,
            Reply.make(553, "Message needs SMTPUTF8, which the server does not offer", "5.6.7"),
        )
    if ext.size and size > ext.size:
        return TransactionRefusal(
            RefusalReason.MESSAGE_TOO_BIG,
            Reply.make(
                552,
                f"Message size {size} exceeds the server's limit of {ext.size}",
                "5.3.4",
            ),
        )
    return TransactionPlan(
        pipelining=ext.pipelining,
        size=size if ext.size is not None else None,
        body_8bit=body_8bit and ext.eightbitmime,
        smtputf8=smtputf8,
    )
