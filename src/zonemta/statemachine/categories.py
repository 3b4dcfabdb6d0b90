"""Failure categories: why a delivery was deferred or bounced, in one vocabulary.

The category of an outcome goes on the ``delivery`` event (and so on ``/events``, the logs
and the metrics' labels), the bounce webhook, the DSN and the plugin reports. The bounce
classifier gives a remote reply one of :data:`REPLY_CATEGORIES` (its rules files name them);
the engine and the transport give the failures that have no reply their own (DNS, TLS, a
network failure, our own refusals). The string values are the wire format: never rename one.
"""

from __future__ import annotations

import enum

__all__ = ["REPLY_CATEGORIES", "FailureCategory"]


class FailureCategory(enum.StrEnum):
    # What a remote reply means (the bounce classifier's rules).
    BLACKLIST = "blacklist"  # the sending IP is on a blocklist or has a poor reputation
    GREYLIST = "greylist"
    RATE = "rate"  # sending too fast
    RECIPIENT = "recipient"  # the recipient does not exist or cannot take mail
    ENVELOPE = "envelope"  # the envelope sender or addressing
    MESSAGE = "message"  # size, format, headers of the message
    SPAM = "spam"
    VIRUS = "virus"
    DMARC = "dmarc"
    AUTH = "auth"  # SPF, DKIM, SMTP authentication
    CAPACITY = "capacity"  # mailbox full, server busy or out of resources
    BLOCK = "block"  # refused by the recipient's filter or organisation
    POLICY = "policy"
    NETWORK = "network"  # also: a connection or transaction that failed without a reply
    PROTOCOL = "protocol"
    CONFIG = "config"  # a misconfiguration (ours or theirs): reverse DNS, HELO, relaying
    OTHER = "other"
    # Failures without a remote reply.
    DNS = "dns"  # the MX or address lookup failed
    TLS = "tls"  # the TLS requirement (zone, MTA-STS, DANE) could not be met
    INTERNAL = "internal"  # a bug, missing message data, a delivery process that died
    EXPIRED = "expired"  # older than max_queue_time
    SUPPRESSED = "suppressed"  # on the suppression list, or suppressed by a plugin
    PLUGIN = "plugin"  # a plugin refused the delivery
    HTTP = "http"  # a plugin's HTTP delivery failed


#: The categories a bounce rule may give a reply (what the rules files name).
REPLY_CATEGORIES = frozenset(
    {
        FailureCategory.BLACKLIST,
        FailureCategory.GREYLIST,
        FailureCategory.RATE,
        FailureCategory.RECIPIENT,
        FailureCategory.ENVELOPE,
        FailureCategory.MESSAGE,
        FailureCategory.SPAM,
        FailureCategory.VIRUS,
        FailureCategory.DMARC,
        FailureCategory.AUTH,
        FailureCategory.CAPACITY,
        FailureCategory.BLOCK,
        FailureCategory.POLICY,
        FailureCategory.NETWORK,
        FailureCategory.PROTOCOL,
        FailureCategory.CONFIG,
        FailureCategory.OTHER,
    }
)
