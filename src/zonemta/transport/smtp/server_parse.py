"""Argument parsing for MAIL and RCPT: paths, mailboxes and ESMTP parameters (RFC 5321 4.1.2).

Every refusal is a :class:`Refusal` carrying the reply to queue; nothing else is raised for any
input string.

Leniencies (what real clients send): one or more spaces after ``FROM:``/``TO:``; a bare address
without angle brackets when it is a plain ``local@domain``; consecutive, leading or trailing
dots in a dot-atom local part (seen from some mobile carriers); underscores in domain labels.
Source routes ``<@a,@b:user@host>`` are accepted and stripped (RFC 5321 4.1.1.3/C).
"""

from __future__ import annotations

import ipaddress
import re
import string

from zonemta.transport.smtp import server_replies as replies
from zonemta.transport.smtp.reply import Reply

# RFC 5321 4.5.3.1.1 / 4.5.3.1.2.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_LABEL = 63
# A SIZE value longer than this is refused as malformed rather than converted.
MAX_SIZE_DIGITS = 20

_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
# A dot-atom local part of ASCII characters only: one set check instead of one per character.
_LOCAL_ASCII = _ATEXT | {"."}
_LABEL = frozenset(string.ascii_letters + string.digits + "-_")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}\Z")
_GENERAL_TAG = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]\Z")
_BODY_VALUES = frozenset({"7BIT", "8BITMIME"})

# The usual argument: ``FROM:<local@domain>`` / ``TO:<local@domain>``, ASCII dot-atom local
# part of at most MAX_LOCAL_PART characters, plain labels of at most MAX_LABEL, no source
# route, no parameters. What it matches the full parse accepts as it is, with no
# parameters; anything else (and a domain over MAX_DOMAIN) goes through the full parse.
_SIMPLE_ADDRESS = (
    r" *<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}"  # the local part: _LOCAL_ASCII
    r"@(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63})>"  # the domain's labels: _LABEL
)
_SIMPLE_MAIL = re.compile(r"[Ff][Rr][Oo][Mm]:" + _SIMPLE_ADDRESS, re.ASCII)
_SIMPLE_RCPT = re.compile(r"[Tt][Oo]:" + _SIMPLE_ADDRESS, re.ASCII)
# With local part and "@" at most this long, the domain is within MAX_DOMAIN.
_SIMPLE_MAX = MAX_DOMAIN + 1


def _simple_address(pattern: re.Pattern[str], arg: str) -> str | None:
    """The address of a usual argument (``_SIMPLE_MAIL``/``_SIMPLE_RCPT``), or None when
    ``arg`` needs the full parse."""
    simple = pattern.fullmatch(arg)
    if simple is None or len(simple[1]) > _SIMPLE_MAX:
        return None
    return simple[1]


class Refusal(Exception):
    """An argument the server refuses; ``reply`` is what the peer gets."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def parse_mail_from(arg: str, *, max_size: int) -> tuple[str, dict[str, str | None]]:
    """Parse the argument of MAIL (``FROM:<path> params``) into (address, params).

    The address is "" for ``<>``. Handles SIZE (552 5.3.4 when over ``max_size`` > 0), BODY and
    SMTPUTF8; other parameters get 555. Raises :class:`Refusal`.
    """
    address = _simple_address(_SIMPLE_MAIL, arg)
    if address is not None:
        return address, {}
    return _parse_mail_from(arg, max_size=max_size)


def _parse_mail_from(arg: str, *, max_size: int) -> tuple[str, dict[str, str | None]]:
    """:func:`parse_mail_from` without its fast path."""
    path, rest = _split_path(arg, "FROM", replies.MAIL_SYNTAX)
    params = _parse_params(rest)
    utf8 = "SMTPUTF8" in params
    address = _check_mailbox(path, utf8=utf8, bad=replies.BAD_SENDER) if path else ""
    for name in params:
        if name not in ("SIZE", "BODY", "SMTPUTF8"):
            raise Refusal(replies.unsupported_parameter(name))
    size = params.get("SIZE", "0")
    if "SIZE" in params:
        if size is None or not (size.isascii() and size.isdigit()) or len(size) > MAX_SIZE_DIGITS:
            raise Refusal(replies.BAD_SIZE)
        if max_size and int(size) > max_size:
            raise Refusal(replies.SIZE_EXCEEDED)
    if "BODY" in params:
        body = params["BODY"]
        if body is None or body.upper() not in _BODY_VALUES:
            raise Refusal(replies.BAD_BODY)
        params["BODY"] = body.upper()
    if utf8 and params["SMTPUTF8"] is not None:
        raise Refusal(replies.BAD_SMTPUTF8)
    return address, params


def parse_rcpt_to(arg: str, *, utf8: bool) -> tuple[str, dict[str, str | None]]:
    """Parse the argument of RCPT (``TO:<path> params``) into (address, params).

    ``utf8``: the transaction's MAIL carried SMTPUTF8. ``<Postmaster>`` without a domain is
    accepted (RFC 5321 4.5.1). We advertise no RCPT parameters, so any gets 555.
    Raises :class:`Refusal`.
    """
    address = _simple_address(_SIMPLE_RCPT, arg)
    if address is not None:
        return address, {}
    return _parse_rcpt_to(arg, utf8=utf8)


def _parse_rcpt_to(arg: str, *, utf8: bool) -> tuple[str, dict[str, str | None]]:
    """:func:`parse_rcpt_to` without its fast path."""
    path, rest = _split_path(arg, "TO", replies.RCPT_SYNTAX)
    params = _parse_params(rest)
    if not path:
        raise Refusal(replies.NULL_RECIPIENT)
    address = _check_mailbox(path, utf8=utf8, bad=replies.BAD_RECIPIENT, postmaster=True)
    if params:
        raise Refusal(replies.unsupported_parameter(next(iter(params))))
    return address, params


def _split_path(arg: str, keyword: str, syntax: Reply) -> tuple[str, str]:
    """Split ``FROM:<path> params`` into the path (source route stripped) and the params text."""
    prefix = keyword + ":"
    head = arg[: len(prefix)]
    if not head.isascii() or head.upper() != prefix:
        raise Refusal(syntax)
    rest = arg[len(prefix) :].lstrip(" ")
    if rest.startswith("<"):
        end = _closing_bracket(rest)
        if end < 0:
            raise Refusal(syntax)
        after = rest[end + 1 :]
        if after and not after.startswith(" "):
            raise Refusal(syntax)
        return _strip_source_route(rest[1:end], syntax), after
    token, _, after = rest.partition(" ")
    if not token or any(c in token for c in '<>"') or token.startswith("@"):
        raise Refusal(syntax)
    return token, after


def _closing_bracket(text: str) -> int:
    """Index of the ``>`` closing the path opened at ``text[0]``, or -1; quotes respected."""
    if '"' not in text:
        end = text.find(">")
        return end if end > 0 and "<" not in text[1:end] else -1
    quoted = False
    index = 1
    while index < len(text):
        char = text[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ">":
            return index
        elif char == "<":
            return -1
        index += 1
    return -1


def _strip_source_route(path: str, syntax: Reply) -> str:
    if not path.startswith("@"):
        return path
    route, colon, mailbox = path.partition(":")
    if not colon or not mailbox:
        raise Refusal(syntax)
    for hop in route.split(","):
        if not hop.startswith("@") or not _domain_ok(hop[1:]):
            raise Refusal(syntax)
    return mailbox


def _check_mailbox(path: str, *, utf8: bool, bad: Reply, postmaster: bool = False) -> str:
    """Validate ``local@domain`` and return it unchanged (quoted local parts kept)."""
    if not path.isascii() and not utf8:
        raise Refusal(replies.NEEDS_SMTPUTF8)
    if path.startswith('"'):
        end = _closing_quote(path)
        if end < 0 or not path.startswith("@", end + 1):
            raise Refusal(bad)
        local, domain = path[: end + 1], path[end + 2 :]
        local_ok = _quoted_ok(local[1:-1])
    else:
        local, at, domain = path.partition("@")
        if not at:
            if postmaster and path.lower() == "postmaster":
                return path
            raise Refusal(bad)
        local_ok = bool(local) and (_LOCAL_ASCII.issuperset(local) or all(_atext(c) for c in local))
    if not local_ok or not _domain_ok(domain):
        raise Refusal(bad)
    if len(local.encode()) > MAX_LOCAL_PART or len(domain.encode()) > MAX_DOMAIN:
        raise Refusal(replies.ADDRESS_TOO_LONG)
    return path


def _atext(char: str) -> bool:
    return char in _ATEXT or char == "." or (char > "\x7f" and char.isprintable())


def _closing_quote(path: str) -> int:
    index = 1
    while index < len(path):
        char = path[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            return index
        index += 1
    return -1


def _quoted_ok(inner: str) -> bool:
    """qtext / quoted-pair (RFC 5321 4.1.2), UTF-8 allowed (RFC 6531)."""
    index = 0
    while index < len(inner):
        char = inner[index]
        if char == "\\":
            index += 1
            if index >= len(inner) or not " " <= inner[index] <= "~":
                return False
        elif char == '"' or not (" " <= char <= "~" or (char > "\x7f" and char.isprintable())):
            return False
        index += 1
    return True


def _domain_ok(domain: str) -> bool:
    if domain.startswith("["):
        return domain.endswith("]") and _literal_ok(domain[1:-1])
    if not domain:
        return False
    for label in domain.split("."):
        if not label or len(label.encode()) > MAX_LABEL:
            return False
        if _LABEL.issuperset(label):
            continue
        for char in label:
            if char not in _LABEL and not (char > "\x7f" and char.isalnum()):
                return False
    return True


def _literal_ok(literal: str) -> bool:
    """Address literal (RFC 5321 4.1.3): IPv4, ``IPv6:...`` or a general ``tag:content``."""
    try:
        if literal[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(literal[5:])
            return True
        if _IPV4.match(literal):
            ipaddress.IPv4Address(literal)
            return True
    except ValueError:
        return False
    tag, colon, content = literal.partition(":")
    return (
        bool(colon and content and _GENERAL_TAG.match(tag))
        and content.isascii()
        and all("!" <= c <= "~" and c not in "[]\\" for c in content)
    )


def _parse_params(text: str) -> dict[str, str | None]:
    """``KEY[=VALUE]`` words separated by spaces; names upper-cased. Raises :class:`Refusal`."""
    params: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            continue
        name, equals, value = word.partition("=")
        if not _KEYWORD.match(name):
            raise Refusal(replies.PARAMETER_SYNTAX)
        if equals and (not value or "=" in value or not value.isprintable()):
            raise Refusal(replies.PARAMETER_SYNTAX)
        name = name.upper()
        if name in params:
            raise Refusal(replies.DUPLICATE_PARAMETER)
        params[name] = value if equals else None
    return params
