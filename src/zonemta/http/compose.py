"""``POST /send``: a message in Nodemailer's JSON shape turned into RFC 5322 with the
standard library's :mod:`email` package.

Supported keys: ``from``, ``sender``, ``to``, ``cc``, ``bcc``, ``replyTo``, ``inReplyTo``,
``references``, ``subject``, ``text``, ``html``, ``headers``, ``attachments``, ``messageId``,
``date``, ``envelope``. Addresses are ``"a@b, Name <c@d>"`` strings, ``{name, address}``
objects or lists of either. Attachments carry their content inline (``content``, decoded
from base64 when ``encoding`` is ``"base64"``); ``path`` and ``href`` (files and URLs) are
refused. Anything else is a :class:`ComposeError` naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import mimetypes
import re
import time
from datetime import UTC, datetime
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid
from typing import Any

import attrs

KNOWN_KEYS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "replyTo",
        "inReplyTo",
        "references",
        "subject",
        "text",
        "html",
        "headers",
        "attachments",
        "messageId",
        "date",
        "envelope",
    }
)
ATTACHMENT_KEYS = frozenset(
    {"filename", "content", "encoding", "contentType", "cid", "contentDisposition"}
)
# Set by the composer from the structure of the message; a custom header may not override.
RESERVED_HEADERS = frozenset(
    {"bcc", "content-type", "content-transfer-encoding", "mime-version", "content-disposition"}
)
_FIELD_NAME_RE = re.compile(r"[!-9;-~]+")


class ComposeError(ValueError):
    """The JSON message cannot be turned into a message; ``str()`` says why."""


@attrs.frozen
class Composed:
    """The message (CRLF line endings) and the envelope taken from it."""

    content: bytes
    mail_from: str
    recipients: tuple[str, ...]
    smtputf8: bool


Mailbox = tuple[str, str]  # (display name, address)


def parse_addresses(value: Any, field: str) -> list[Mailbox]:
    """Mailboxes from a string, a ``{name, address}`` object or a list of those."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else [value]
    found: list[Mailbox] = []
    for item in items:
        if isinstance(item, str):
            pairs = getaddresses([item])
        elif isinstance(item, dict) and isinstance(item.get("address"), str):
            name = item.get("name", "")
            if not isinstance(name, str):
                raise ComposeError(f"{field!r}: 'name' must be a string")
            pairs = [(name, item["address"])]
        else:
            raise ComposeError(f"{field!r} must be addresses as strings or {{name, address}}")
        for name, address in pairs:
            address = address.strip()
            local, at, domain = address.rpartition("@")
            if not (local and at and domain) or any(c in address for c in " \t\r\n<>,;"):
                raise ComposeError(f"{field!r}: not an email address: {address or item!r}")
            found.append((name.strip(), address))
    return found


def _address(mailbox: Mailbox, field: str) -> Address:
    name, address = mailbox
    local, _, domain = address.rpartition("@")
    try:
        if address.isascii():
            return Address(display_name=name, addr_spec=address)
        # The header parser refuses non-ASCII addr-specs (RFC 6532 allows them).
        return Address(display_name=name, username=local, domain=domain)
    except (ValueError, IndexError) as exc:
        raise ComposeError(f"{field!r}: not an email address: {address!r}") from exc


def _string(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ComposeError(f"{key!r} must be a string")
    return value


def _custom_headers(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, dict):
        pairs: list[tuple[Any, Any]] = []
        for key, item in value.items():
            pairs.extend((key, v) for v in (item if isinstance(item, list) else [item]))
    elif isinstance(value, list):
        pairs = []
        for item in value:
            if not isinstance(item, dict) or set(item) != {"key", "value"}:
                raise ComposeError("'headers' as a list holds {key, value} objects")
            pairs.append((item["key"], item["value"]))
    else:
        raise ComposeError("'headers' must be an object or a list of {key, value}")
    out: list[tuple[str, str]] = []
    for key, item in pairs:
        if not isinstance(key, str) or _FIELD_NAME_RE.fullmatch(key) is None:
            raise ComposeError(f"bad header name {key!r}")
        if key.lower() in RESERVED_HEADERS:
            raise ComposeError(f"header {key!r} cannot be set in 'headers'")
        if not isinstance(item, str):
            raise ComposeError(f"header {key!r}: the value must be a string")
        out.append((key, item))
    return out


def _attachment_data(item: dict[str, Any], index: int) -> bytes:
    content = item.get("content")
    if not isinstance(content, str):
        raise ComposeError(f"attachments[{index}]: 'content' must be a string")
    encoding = item.get("encoding", "utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode("".join(content.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ComposeError(f"attachments[{index}]: 'content' is not valid base64") from exc
    if encoding in ("utf-8", "utf8"):
        return content.encode("utf-8")
    raise ComposeError(f"attachments[{index}]: unknown encoding {encoding!r} (base64 or utf-8)")


def _add_attachments(message: EmailMessage, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise ComposeError("'attachments' must be a list")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ComposeError(f"attachments[{index}] must be an object")
        if "path" in item or "href" in item:
            raise ComposeError(
                f"attachments[{index}]: 'path' and 'href' are not allowed; "
                "give the content base64-encoded in 'content'"
            )
        unknown = set(item) - ATTACHMENT_KEYS
        if unknown:
            raise ComposeError(f"attachments[{index}]: unknown key(s) {sorted(unknown)}")
        data = _attachment_data(item, index)
        filename = item.get("filename")
        if filename is not None and not isinstance(filename, str):
            raise ComposeError(f"attachments[{index}]: 'filename' must be a string")
        content_type = item.get("contentType") or (
            mimetypes.guess_type(filename)[0] if filename else None
        )
        maintype, _, subtype = str(content_type or "application/octet-stream").partition("/")
        if not maintype or not subtype:
            raise ComposeError(f"attachments[{index}]: bad contentType {content_type!r}")
        cid = item.get("cid")
        kwargs: dict[str, Any] = {"filename": filename}
        content: bytes | str = data
        if maintype == "text":
            with contextlib.suppress(UnicodeDecodeError):  # text goes in as text
                content = data.decode("utf-8")
        if isinstance(content, str):
            args: tuple[Any, ...] = (content, subtype)
            kwargs["charset"] = "utf-8"
        else:
            args = (content, maintype, subtype)
        if cid is not None:
            if not isinstance(cid, str) or not cid:
                raise ComposeError(f"attachments[{index}]: 'cid' must be a string")
            kwargs["cid"] = f"<{cid.strip('<>')}>"
            html = message.get_body(("html",))
            if isinstance(html, EmailMessage):
                html.add_related(*args, disposition="inline", **kwargs)
                continue
        disposition = item.get("contentDisposition", "attachment")
        if disposition not in ("attachment", "inline"):
            raise ComposeError(f"attachments[{index}]: bad contentDisposition {disposition!r}")
        message.add_attachment(*args, disposition=disposition, **kwargs)


def _set_body(message: EmailMessage, text: str | None, html: str | None) -> None:
    if html is not None and text is not None:
        message.set_content(text)
        message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    else:
        message.set_content(text or "")


def compose(data: Any, *, hostname: str, now: float | None = None) -> Composed:
    """Build the message. Raises :class:`ComposeError` for anything that is not a valid
    message in the supported shape (no sender, no recipients, bad addresses, ...)."""
    if not isinstance(data, dict):
        raise ComposeError("the request body must be a JSON object")
    unknown = set(data) - KNOWN_KEYS
    if unknown:
        raise ComposeError(f"unknown key(s): {', '.join(sorted(unknown))}")
    senders = parse_addresses(data.get("from"), "from")
    if len(senders) != 1:
        raise ComposeError("'from' must be exactly one address")
    to = parse_addresses(data.get("to"), "to")
    cc = parse_addresses(data.get("cc"), "cc")
    bcc = parse_addresses(data.get("bcc"), "bcc")
    sender = parse_addresses(data.get("sender"), "sender")
    envelope = data.get("envelope") or {}
    if not isinstance(envelope, dict) or set(envelope) - {"from", "to"}:
        raise ComposeError("'envelope' must be an object with 'from' and/or 'to'")
    env_from = parse_addresses(envelope.get("from"), "envelope.from")
    env_to = parse_addresses(envelope.get("to"), "envelope.to")
    mail_from = (env_from or sender or senders)[0][1]
    recipients = tuple(dict.fromkeys(a for _, a in (env_to or [*to, *cc, *bcc])))
    if not recipients:
        raise ComposeError("no recipients: give 'to', 'cc' or 'bcc'")
    addresses = [mail_from, *recipients, *(a for _, a in [*to, *cc, *sender])]
    smtputf8 = not all(a.isascii() for a in addresses)
    policy = email_policy.SMTPUTF8 if smtputf8 else email_policy.SMTP

    message = EmailMessage(policy=policy)
    try:
        _set_body(message, _string(data, "text"), _string(data, "html"))
        message["From"] = _address(senders[0], "from")
        if sender:
            message["Sender"] = _address(sender[0], "sender")
        for field, mailboxes in (("To", to), ("Cc", cc)):
            if mailboxes:
                message[field] = [_address(m, field.lower()) for m in mailboxes]
        reply_to = parse_addresses(data.get("replyTo"), "replyTo")
        if reply_to:
            message["Reply-To"] = [_address(m, "replyTo") for m in reply_to]
        subject = _string(data, "subject")
        if subject is not None:
            message["Subject"] = subject
        for key, header in (("inReplyTo", "In-Reply-To"), ("references", "References")):
            value = _string(data, key)
            if value is not None:
                message[header] = value
        message["Message-ID"] = _string(data, "messageId") or make_msgid(domain=hostname)
        when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
        message["Date"] = _string(data, "date") or format_datetime(when)
        for key, value in _custom_headers(data.get("headers")):
            message[key] = value
        _add_attachments(message, data.get("attachments"))
        content = message.as_bytes(policy=policy)
    except ComposeError:
        raise
    except (ValueError, TypeError, LookupError) as exc:  # the email package's refusals
        raise ComposeError(str(exc)) from exc
    return Composed(content, mail_from, recipients, smtputf8)
