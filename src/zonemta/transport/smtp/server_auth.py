"""The SASL side of SMTP AUTH (RFC 4954) for the PLAIN (RFC 4616) and LOGIN mechanisms.

A :class:`SaslExchange` turns the AUTH argument and the client's response lines into either the
next 334 challenge or the decoded credentials. Base64 is handled here, never by the driver.
Every refusal is a :class:`~zonemta.transport.smtp.server_parse.Refusal` carrying its reply;
nothing else is raised for any input.
"""

from __future__ import annotations

import base64
import binascii
import enum

import attrs

from zonemta.transport.smtp import server_replies as replies
from zonemta.transport.smtp.server_parse import Refusal


class Mechanism(enum.Enum):
    """The SASL mechanisms the server offers."""

    PLAIN = "PLAIN"
    LOGIN = "LOGIN"


#: What EHLO advertises after ``AUTH``.
MECHANISMS = tuple(m.value for m in Mechanism)


@attrs.frozen
class Challenge:
    """A server challenge: ``334 SP [base64] CRLF`` (RFC 4954 4; the space is always sent,
    which a :class:`Reply` with empty text would strip)."""

    base64_text: str

    def to_bytes(self) -> bytes:
        return b"334 " + self.base64_text.encode("ascii") + b"\r\n"


# The challenges of LOGIN (a de-facto standard, draft-murchison-sasl-login): base64 of
# "Username:" and "Password:". PLAIN without an initial response gets an empty one.
_USERNAME_CHALLENGE = Challenge(base64.b64encode(b"Username:").decode("ascii"))
_PASSWORD_CHALLENGE = Challenge(base64.b64encode(b"Password:").decode("ascii"))
_EMPTY_CHALLENGE = Challenge("")


@attrs.frozen
class Credentials:
    """What the client proved to know: a user name (never empty) and a password."""

    mechanism: Mechanism
    username: str
    password: str = attrs.field(repr=False)


def _decode(text: str) -> bytes:
    """Strict base64 (RFC 4954 4: "=" is an empty response). Raises Refusal."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise Refusal(replies.AUTH_CANNOT_DECODE) from None


def _text(raw: bytes) -> str:
    """A SASL string: UTF-8 without NUL (RFC 4616 2). Raises Refusal."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(replies.AUTH_BAD_CREDENTIALS_SYNTAX) from None
    if "\x00" in text:
        raise Refusal(replies.AUTH_BAD_CREDENTIALS_SYNTAX)
    return text


def _plain(raw: bytes) -> Credentials:
    """``[authzid] NUL authcid NUL passwd``; an authzid must be empty or the authcid."""
    parts = raw.split(b"\x00")
    if len(parts) != 3:
        raise Refusal(replies.AUTH_BAD_CREDENTIALS_SYNTAX)
    authzid, username, password = (_text(part) for part in parts)
    if not username or (authzid and authzid != username):
        raise Refusal(replies.AUTH_BAD_CREDENTIALS_SYNTAX)
    return Credentials(Mechanism.PLAIN, username, password)


class SaslExchange:
    """One AUTH exchange, from the AUTH command to the credentials.

    :meth:`start` takes the AUTH argument, :meth:`step` each response line; both return the
    next :class:`Challenge` (to queue) or the :class:`Credentials`, and raise
    :class:`Refusal` for an unknown mechanism, bad base64, malformed credentials or a
    cancellation (``*``).
    """

    def __init__(self) -> None:
        self._mechanism: Mechanism | None = None
        self._username: str | None = None

    def start(self, arg: str) -> Challenge | Credentials:
        """Begin with the AUTH argument: ``mechanism [initial-response]``."""
        name, _, initial = arg.partition(" ")
        if not name or " " in initial or (initial == "" and arg.endswith(" ")):
            raise Refusal(replies.AUTH_SYNTAX)
        try:
            self._mechanism = Mechanism(name.upper())
        except ValueError:
            raise Refusal(replies.AUTH_UNKNOWN_MECHANISM) from None
        if not initial:
            return _EMPTY_CHALLENGE if self._mechanism is Mechanism.PLAIN else _USERNAME_CHALLENGE
        return self._respond(initial)

    def step(self, line: str) -> Challenge | Credentials:
        """The client's response to the last challenge (without its line ending)."""
        if line == "*":
            raise Refusal(replies.AUTH_CANCELLED)
        return self._respond(line)

    def _respond(self, response: str) -> Challenge | Credentials:
        raw = _decode(response)
        if self._mechanism is Mechanism.PLAIN:
            return _plain(raw)
        if self._username is None:
            username = _text(raw)
            if not username:
                raise Refusal(replies.AUTH_BAD_CREDENTIALS_SYNTAX)
            self._username = username
            return _PASSWORD_CHALLENGE
        return Credentials(Mechanism.LOGIN, self._username, _text(raw))
