"""Delivery status notifications (RFC 3464): the message that tells an envelope sender that
a delivery failed, or has been delayed for a while.

This module is pure: it decides whether a message may be answered with a DSN at all and
builds the notification as bytes; ``engine/bounces/notices.py`` queues it through the intake.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from email.utils import format_datetime

import attrs

from zonemta.headers import count_fields, first_value
from zonemta.store import Delivery, MessageRecord

__all__ = [
    "MAX_RECEIVED_FOR_DSN",
    "Notice",
    "NoticeKind",
    "build_dsn",
    "delay_notice_due",
    "diagnostic_status",
    "why_no_dsn",
]

#: More Received fields than this and we do not answer (a loop is likely; ZoneMTA uses 25).
MAX_RECEIVED_FOR_DSN = 25

_ENHANCED = re.compile(r"^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})\b")
_REPLY = re.compile(r"^[2-5]\d\d(?:[ -]|$)")
_SUPPRESS_TOKENS = frozenset({"all", "dr", "ndr"})


class NoticeKind(enum.Enum):
    FAILED = "failed"  # the delivery bounced (refused, retries exhausted or expired)
    DELAYED = "delayed"  # the delivery is still being retried


@attrs.frozen
class Notice:
    """One recipient's notice about one message."""

    kind: NoticeKind
    message: MessageRecord
    recipient: str
    seq: int
    response: str  # the last answer or error, as logged
    remote_mta: str | None = None
    last_attempt: float | None = None
    retry_until: float | None = None  # delayed notices: when the relay gives up
    expired: bool = False  # failed because the queue time or retry schedule ran out


def why_no_dsn(message: MessageRecord) -> str | None:
    """Why ``message`` must not be answered with a DSN (RFC 3461 6.2, RFC 3834 2), or None
    when it may: null or mailer-daemon sender, auto-submitted mail, a DSN or other report,
    ``X-Auto-Response-Suppress`` asking for none, or a likely loop."""
    sender = message.mail_from
    if not sender:
        return "null sender"
    if sender.rpartition("@")[0].lower() == "mailer-daemon" or message.meta.interface == "bounce":
        return "sender is a mail system"
    headers = message.headers
    author = (first_value(headers, "from") or "").lower()
    if "mailer-daemon@" in author:
        return "From is a mail system"
    auto = first_value(headers, "auto-submitted")
    if auto is not None and auto.split(";")[0].strip().lower() not in ("", "no"):
        return "auto-submitted message"
    content_type = (first_value(headers, "content-type") or "").lower()
    if content_type.startswith("multipart/report"):
        return "message is a report"
    suppress = first_value(headers, "x-auto-response-suppress")
    if suppress is not None:
        tokens = {token.strip().lower() for token in suppress.split(",")}
        if tokens & _SUPPRESS_TOKENS:
            return "X-Auto-Response-Suppress"
    if count_fields(headers, "received") > MAX_RECEIVED_FOR_DSN:
        return "too many Received fields"
    return None


def delay_notice_due(row: Delivery, *, now: float, after: float) -> bool:
    """Whether the deferral happening at ``now`` should tell the sender the delivery is
    delayed: it has been failing for ``after`` seconds (from its first failure) and the row
    does not record a delay notice yet (the store keeps that flag, so rescheduling or a
    changed retry schedule cannot make it repeat). ``after`` <= 0 means never."""
    if after <= 0 or row.delay_notified or row.first_failure is None:
        return False
    return now - row.first_failure >= after


def diagnostic_status(response: str, *, kind: NoticeKind, expired: bool) -> str:
    """The ``Status`` of the report: the reply's enhanced code when it has one of the right
    sort, else one derived from the reply code or the reason (RFC 3463)."""
    match = _ENHANCED.match(response)
    if match is not None:
        status = match.group(1)
        if kind is NoticeKind.FAILED or status.startswith("4."):
            return status
    if kind is NoticeKind.DELAYED:
        return "4.0.0"
    if expired:
        return "4.4.7"
    if response[:1] == "4":
        return "4.0.0"
    return "5.0.0"


def _date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, UTC))


def _diagnostic_code(response: str) -> str:
    kind = "smtp" if _REPLY.match(response) else "X-zonemta"
    return f"{kind}; {response}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_dsn(notice: Notice, *, reporting_mta: str, now: float) -> bytes:
    """The complete notification (header block, empty line, body; CRLF line ends) to send
    from the null sender to ``notice.message.mail_from``."""
    message = notice.message
    failed = notice.kind is NoticeKind.FAILED
    response = _one_line(notice.response) or "no response recorded"
    status = diagnostic_status(response, kind=notice.kind, expired=notice.expired)
    boundary = f"{message.id}.{notice.seq}/{reporting_mta}"
    subject = "Failure" if failed else "Delay"
    headers = [
        f"From: Mail Delivery Subsystem <mailer-daemon@{reporting_mta}>",
        f"To: <{message.mail_from}>",
        f"Subject: Delivery Status Notification ({subject}: {notice.recipient})",
        f"Date: {_date(now)}",
        f"Message-ID: <{message.id}.{notice.seq:03x}.{notice.kind.value}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    if failed:
        headers.insert(3, f"X-Failed-Recipients: {notice.recipient}")
    original_id = first_value(message.headers, "message-id")
    if original_id and "\n" not in original_id:
        headers += [f"In-Reply-To: {original_id}", f"References: {original_id}"]
    lines = [*headers, "", "This is a MIME-formatted message (a delivery status notification).", ""]
    lines += [f"--{boundary}", "Content-Type: text/plain; charset=utf-8", ""]
    lines += _human_text(notice, response, reporting_mta)
    lines += [f"--{boundary}", "Content-Type: message/delivery-status", ""]
    lines += [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Zonemta-Queue-ID: {message.id}",
        f"X-Original-Sender: rfc822; {message.mail_from}",
        f"Arrival-Date: {_date(message.received_at)}",
        "",
        f"Final-Recipient: rfc822; {notice.recipient}",
        f"Action: {notice.kind.value}",
        f"Status: {status}",
    ]
    if notice.remote_mta:
        lines.append(f"Remote-MTA: dns; {notice.remote_mta}")
    lines.append(f"Diagnostic-Code: {_diagnostic_code(response)}")
    if notice.last_attempt is not None:
        lines.append(f"Last-Attempt-Date: {_date(notice.last_attempt)}")
    if notice.retry_until is not None and not failed:
        lines.append(f"Will-Retry-Until: {_date(notice.retry_until)}")
    lines += ["", f"--{boundary}", "Content-Type: text/rfc822-headers", ""]
    head = ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + message.headers + tail


def _human_text(notice: Notice, response: str, reporting_mta: str) -> list[str]:
    if notice.kind is NoticeKind.FAILED:
        if notice.expired:
            intro = "Delivery to the following recipient failed: the message could not be"
            intro2 = "delivered in the time allowed, and the mail system gave up."
        else:
            intro = "Delivery to the following recipient failed permanently."
            intro2 = ""
        lines = [f"This is the mail system at {reporting_mta}.", "", intro]
        if intro2:
            lines.append(intro2)
        lines += ["", f"    {notice.recipient}", "", "Technical details of the failure:"]
    else:
        lines = [
            f"This is the mail system at {reporting_mta}.",
            "",
            "Delivery to the following recipient has been delayed. This is only a warning;",
            "you do not need to send the message again.",
            "",
            f"    {notice.recipient}",
            "",
        ]
        if notice.retry_until is not None:
            lines += [f"The mail system will keep trying until {_date(notice.retry_until)}.", ""]
        lines.append("Technical details of the last attempt:")
    lines += [f"    {response}", ""]
    return lines
