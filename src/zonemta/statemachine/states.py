"""The delivery states and the triggers that move a delivery between them."""

from __future__ import annotations

from zonemta.identity_enum import IdentityEnum


class DeliveryState(IdentityEnum):
    QUEUED = "queued"
    LOCKED = "locked"
    RESOLVING = "resolving"
    CONNECTING = "connecting"
    SENDING = "sending"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    DELIVERED = "delivered"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({DeliveryState.DELIVERED, DeliveryState.BOUNCED})


class Trigger(IdentityEnum):
    LEASE = "lease"  # the scheduler claimed the delivery
    RESOLVE = "resolve"  # start looking up where to send
    RESOLVED = "resolved"  # MX hosts known, now connecting
    REUSE_CONNECTION = "reuse_connection"  # an idle connection to the destination was taken
    CONNECTED = "connected"  # greeting and EHLO done, transaction starts
    ACCEPTED = "accepted"  # the remote server took the message (2xx after DATA)
    TRANSIENT_FAILURE = "transient_failure"  # 4xx, network or DNS trouble: try again later
    PERMANENT_FAILURE = "permanent_failure"  # 5xx or a permanent DNS answer
    RETRIES_EXHAUSTED = "retries_exhausted"  # would defer, but the schedule is used up
    EXPIRED = "expired"  # older than max_queue_time when leased
    SUPPRESSED = "suppressed"  # the recipient is on the suppression list: dropped, no DSN
    RELEASE = "release"  # lease given back without an attempt, never tried before
    RELEASE_DEFERRED = "release_deferred"  # the same for a delivery tried before
    RECONNECT = "reconnect"  # a reused connection turned out dead before the server answered
