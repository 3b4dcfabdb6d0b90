"""Bounce handling (``[bounces]``): extra classification rules, delivery status
notifications to senders (``[bounces.dsn]``) and the bounce webhook (``[bounces.webhook]``).

Whether a zone's bounces produce DSNs at all is the zone's ``dsn`` setting.
"""

from __future__ import annotations

import enum
import re
from datetime import timedelta

import attrs
from attrs import validators as v

__all__ = ["BouncesConfig", "DsnConfig", "WebhookConfig", "WebhookFormat"]

_URL_RE = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)
_ZONE_RE = re.compile(r"[A-Za-z0-9_-]+")


class WebhookFormat(enum.StrEnum):
    """How a bounce is POSTed."""

    JSON = "json"  # application/json
    FORM = "form"  # application/x-www-form-urlencoded, the fields ZoneMTA's http-bounce sends


def _not_negative(_inst: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value < timedelta(0):
        raise ValueError(f"'{attribute.name}' must not be negative")


def _positive(_inst: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"'{attribute.name}' must be > 0s")


def _url_or_empty(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value and _URL_RE.fullmatch(value) is None:
        raise ValueError(f"'{attribute.name}' must be an http:// or https:// URL: {value!r}")


def _zone_name(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if _ZONE_RE.fullmatch(value) is None:
        raise ValueError(f"'{attribute.name}' must be a zone name: {value!r}")


@attrs.frozen
class DsnConfig:
    """Delivery status notifications (RFC 3464) to the envelope sender (``[bounces.dsn]``)."""

    enabled: bool = True
    zone: str = attrs.field(default="bounces", validator=_zone_name)  # zone that sends them
    # One "delayed" notice once a delivery has been deferred this long; 0s = never.
    delay_after: timedelta = attrs.field(default=timedelta(hours=3), validator=_not_negative)
    # The From of notices is mailer-daemon@<this>; "" = the top-level hostname.
    hostname: str = ""


@attrs.frozen
class WebhookConfig:
    """One POST per bounced delivery (``[bounces.webhook]``); off while ``url`` is empty."""

    url: str = attrs.field(default="", validator=_url_or_empty)
    format: WebhookFormat = WebhookFormat.JSON
    timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive)
    # Retries after a failed POST; the n-th waits retry_delay * n² (1, 4, 9, ... seconds).
    retries: int = attrs.field(default=6, validator=[v.ge(0), v.le(100)])
    retry_delay: timedelta = attrs.field(default=timedelta(seconds=1), validator=_positive)
    queue_size: int = attrs.field(default=1000, validator=v.ge(1))  # bounces waiting; more dropped
    concurrency: int = attrs.field(default=4, validator=[v.ge(1), v.le(100)])


@attrs.frozen
class BouncesConfig:
    """Bounce classification and notification (``[bounces]``)."""

    # Operator rules (same format as the built-in file), tested before the built-in rules.
    rules_file: str = ""
    # Automatic backoff (docs/operator.md): replies that say "too fast" suspend the (zone,
    # domain) for a while; operator rules (same format) are tried before the built-in ones.
    backoff: bool = True
    backoff_rules_file: str = ""
    dsn: DsnConfig = attrs.field(factory=DsnConfig)
    webhook: WebhookConfig = attrs.field(factory=WebhookConfig)
