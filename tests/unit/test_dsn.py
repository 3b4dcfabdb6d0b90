"""DSNs: when a sender may be told, what the RFC 3464 report says (parsed back with the
``email`` package), when the one delay notice is due; the webhook's payload and bounds."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from zonemta.conf import ConfigError, WebhookConfig, config_from_dict
from zonemta.engine.bounces.dsn import (
    Notice,
    NoticeKind,
    build_dsn,
    delay_notice_due,
    diagnostic_status,
    why_no_dsn,
)
from zonemta.engine.bounces.notices import BounceHandling
from zonemta.engine.bounces.webhook import BounceWebhook, bounce_payload
from zonemta.engine.delivery.messages import MessageCache
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.statemachine import FailureCategory
from zonemta.store import Delivery, MessageMeta, MessageRecord, RowState
from zonemta.store.sqlite import SqliteStore

ORIGINAL = (
    b"From: Sender <sender@origin.test>\r\n"
    b"To: nobody@one.test\r\n"
    b"Subject: quarterly report\r\n"
    b"Message-ID: <orig-1@origin.test>\r\n"
    b"X-FBL: campaign-7\r\n"
)


def record(headers: bytes = ORIGINAL, mail_from: str = "sender@origin.test") -> MessageRecord:
    return MessageRecord(
        id="19abc0000000001",
        mail_from=mail_from,
        headers=headers,
        body_size=10,
        received_at=1_700_000_000.0,
        meta=MessageMeta(interface="feeder"),
    )


def row(**changes: object) -> Delivery:
    fields: dict[str, object] = {
        "message_id": "19abc0000000001",
        "seq": 2,
        "recipient": "nobody@one.test",
        "domain": "one.test",
        "zone": "default",
        "state": RowState.LOCKED,
        "attempts": 0,
        "created": 1_700_000_000.0,
        "next_attempt": 1_700_000_000.0,
    }
    fields.update(changes)
    return Delivery(**fields)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_who_is_never_told() -> None:
    assert why_no_dsn(record()) is None
    assert why_no_dsn(record(mail_from="")) == "null sender"
    assert why_no_dsn(record(mail_from="MAILER-DAEMON@origin.test")) == "sender is a mail system"
    cases = {
        b"Auto-Submitted: auto-replied\r\n": "auto-submitted message",
        b"Auto-Submitted: auto-generated; foo=bar\r\n": "auto-submitted message",
        b"Content-Type: multipart/report; report-type=delivery-status\r\n": "message is a report",
        b"X-Auto-Response-Suppress: DR, OOF\r\n": "X-Auto-Response-Suppress",
        b"Received: x\r\n" * 26: "too many Received fields",
    }
    for extra, reason in cases.items():
        assert why_no_dsn(record(ORIGINAL + extra)) == reason, extra
    daemon = b"From: Mail Delivery System <Mailer-Daemon@x.test>\r\nSubject: x\r\n"
    assert why_no_dsn(record(daemon)) == "From is a mail system"
    assert why_no_dsn(record(ORIGINAL + b"Auto-Submitted: no\r\n")) is None
    assert why_no_dsn(record(ORIGINAL + b"X-Auto-Response-Suppress: OOF\r\n")) is None


def test_failure_report_has_the_rfc3464_fields() -> None:
    notice = Notice(
        NoticeKind.FAILED,
        record(),
        "nobody@one.test",
        2,
        "550 5.1.1 <nobody@one.test>: Recipient address rejected: User unknown",
        remote_mta="mx.one.test",
        last_attempt=1_700_000_100.0,
    )
    data = build_dsn(notice, reporting_mta="relay.test", now=1_700_000_100.0)
    message = parse(data)
    assert message["From"] == "Mail Delivery Subsystem <mailer-daemon@relay.test>"
    assert message["To"] == "sender@origin.test"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Failed-Recipients"] == "nobody@one.test"
    assert message["In-Reply-To"] == "<orig-1@origin.test>"
    assert "Failure" in message["Subject"]
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    text, status, headers = message.iter_parts()
    assert "failed permanently" in text.get_content()
    assert "User unknown" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert per_message["Arrival-Date"]
    assert per_recipient["Final-Recipient"] == "rfc822; nobody@one.test"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx.one.test"
    assert per_recipient["Diagnostic-Code"].startswith("smtp; 550 5.1.1 <nobody@one.test>")
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: quarterly report\r\n" in data
    assert b"Message-ID: <orig-1@origin.test>\r\n" in data.split(b"text/rfc822-headers")[1]
    assert data.endswith(b"--\r\n")


def test_delay_and_expiry_reports() -> None:
    delayed = Notice(
        NoticeKind.DELAYED,
        record(),
        "later@one.test",
        1,
        "451 4.7.1 Greylisted, try again",
        retry_until=1_700_432_000.0,
    )
    message = parse(build_dsn(delayed, reporting_mta="relay.test", now=1_700_010_000.0))
    assert "Delay" in message["Subject"] and message["X-Failed-Recipients"] is None
    text, status, _headers = message.iter_parts()
    assert "only a warning" in text.get_content()
    recipient = status.get_payload()[1]
    assert (recipient["Action"], recipient["Status"]) == ("delayed", "4.7.1")
    assert recipient["Will-Retry-Until"]
    expired = Notice(
        NoticeKind.FAILED, record(), "later@one.test", 1, "connection refused", expired=True
    )
    message = parse(build_dsn(expired, reporting_mta="relay.test", now=1_700_500_000.0))
    text, status, _headers = message.iter_parts()
    recipient = status.get_payload()[1]
    assert recipient["Action"] == "failed"
    assert recipient["Status"] == "4.4.7"
    assert recipient["Diagnostic-Code"] == "X-zonemta; connection refused"
    assert "gave up" in text.get_content()


def test_diagnostic_status() -> None:
    assert diagnostic_status("550 5.7.1 no", kind=NoticeKind.FAILED, expired=False) == "5.7.1"
    assert diagnostic_status("550 no", kind=NoticeKind.FAILED, expired=False) == "5.0.0"
    assert diagnostic_status("451 later", kind=NoticeKind.FAILED, expired=True) == "4.4.7"
    assert diagnostic_status("451 later", kind=NoticeKind.FAILED, expired=False) == "4.0.0"
    assert diagnostic_status("timeout", kind=NoticeKind.FAILED, expired=True) == "4.4.7"
    assert diagnostic_status("451 4.3.0 x", kind=NoticeKind.DELAYED, expired=False) == "4.3.0"
    assert diagnostic_status("550 5.1.1 x", kind=NoticeKind.DELAYED, expired=False) == "4.0.0"


def test_delay_notice_is_due_once() -> None:
    hour = 3600.0
    schedule = [300.0, 420.0, 480.0, 1500.0, 4500.0, 7200.0, 14400.0]
    first = 1_700_000_000.0
    now, attempts, notified = first, 0, False
    sent_at: list[int] = []
    while attempts < len(schedule):
        current = row(
            attempts=attempts,
            first_failure=first if attempts else None,
            delay_notified=notified,
        )
        if delay_notice_due(current, now=now, after=3 * hour):
            sent_at.append(attempts)
            notified = True  # what the store keeps with the deferral
        now += schedule[min(attempts, len(schedule) - 1)] + 2.0  # the attempt runs a bit late
        attempts += 1
    # Cumulative waits: 5m, 12m, 20m, 45m, 2h, 4h -> the deferral at ~4h crosses 3h.
    assert sent_at == [6]
    assert not delay_notice_due(row(attempts=3, first_failure=first), now=first + 9 * hour, after=0)


def test_delay_notice_is_not_repeated_when_the_delivery_is_rescheduled() -> None:
    # An operator's reschedule (or a new retry schedule) moves next_attempt: the flag, not
    # the schedule, says whether the notice went out.
    first = 1_700_000_000.0
    late = row(attempts=5, first_failure=first, next_attempt=first + 7000.0)
    assert delay_notice_due(late, now=first + 4 * 3600.0, after=3 * 3600.0)
    told = row(attempts=6, first_failure=first, next_attempt=first, delay_notified=True)
    assert not delay_notice_due(told, now=first + 5 * 3600.0, after=3 * 3600.0)
    assert not delay_notice_due(row(attempts=1), now=first + 9 * 3600.0, after=1.0)  # no failure


def test_webhook_payload_has_the_reference_fields() -> None:
    payload = bounce_payload(
        row(),
        record(),
        response="550 5.1.1 no",
        category=FailureCategory.RECIPIENT,
        mx="mx.one.test",
        now=12.5,
    )
    assert payload == {
        "id": "19abc0000000001",
        "seq": "002",
        "to": "nobody@one.test",
        "returnPath": "sender@origin.test",
        "category": "recipient",
        "time": 12500,
        "response": "550 5.1.1 no",
        "zone": "default",
        "mx": "mx.one.test",
        "messageId": "<orig-1@origin.test>",
        "fbl": "campaign-7",
    }


def test_webhook_queue_is_bounded_and_never_blocks() -> None:
    webhook = BounceWebhook(WebhookConfig(url="http://127.0.0.1:9/hook", queue_size=2))
    assert webhook.submit_nowait({"id": "a"})
    assert webhook.submit_nowait({"id": "b"})
    assert not webhook.submit_nowait({"id": "c"})
    assert webhook.stats.dropped == 1
    with pytest.raises(ValueError, match="url"):
        BounceWebhook(WebhookConfig())
    assert WebhookConfig(retry_delay=timedelta(milliseconds=5)).retries == 6


def test_bad_keys_rules_and_dsn_zone_are_configuration_errors(tmp_path: Path) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text("defer sometimes /x/ y\n")
    config = config_from_dict(
        {
            "dkim": {
                "keys": {"example.com": {"selector": "s", "private_key": str(tmp_path / "no")}}
            },
            "bounces": {"rules_file": str(rules), "dsn": {"zone": "nowhere"}},
        }
    )
    retry = RetryPolicy.from_config(config.queue.retry_schedule, config.queue.max_queue_time)
    with pytest.raises(ConfigError) as info:
        BounceHandling.from_config(
            config,
            messages=MessageCache(SqliteStore(tmp_path / "q")),
            retry=retry,
            clock=lambda: 0.0,
        )
    errors = info.value.errors
    assert errors[0].startswith(f"config.bounces.rules_file: {rules}:1: unknown category")
    assert errors[1].startswith("config.dkim.keys.example.com.private_key: cannot read")
    assert errors[2] == "config.bounces.dsn.zone: no zone named 'nowhere'"
    fine = BounceHandling.from_config(
        config_from_dict({"bounces": {"webhook": {"url": "http://127.0.0.1:1/x"}}}),
        messages=MessageCache(SqliteStore(tmp_path / "q")),
        retry=retry,
        clock=lambda: 0.0,
    )
    assert fine.signer is None and fine.webhook is not None
    assert len(fine.classifier.rules) >= 150
