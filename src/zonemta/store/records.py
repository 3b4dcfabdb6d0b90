"""The records the store takes and returns: messages, delivery rows and their keys and
states, counts, suppression, blacklist and suspension entries. Frozen attrs classes that
check themselves in their constructors; :mod:`zonemta.store.base` says what each backend does
with them."""

from __future__ import annotations

import enum

import attrs

from zonemta.pickling import pickle_by_fields
from zonemta.store.meta import MessageMeta

__all__ = [
    "BlacklistEntry",
    "Delivery",
    "DeliveryKey",
    "MessageRecord",
    "NewDelivery",
    "RowState",
    "SuppressionEntry",
    "Suspension",
    "ZoneCounts",
    "normalize_address",
]


class RowState(enum.Enum):
    """What a delivery row says between attempts. The in-memory delivery state machine has
    more states (``zonemta.statemachine``); these are the ones that are stored."""

    QUEUED = "queued"  # never tried, or released without an attempt counted
    DEFERRED = "deferred"  # tried, failed temporarily, waiting for next_attempt
    LOCKED = "locked"  # leased by an engine instance


@pickle_by_fields
@attrs.frozen
class DeliveryKey:
    message_id: str
    seq: int

    def __str__(self) -> str:
        return f"{self.message_id}.{self.seq:03x}"


@pickle_by_fields
@attrs.frozen
class MessageRecord:
    """A stored message, apart from its body.

    ``headers`` is the header block exactly as it will be sent (each line ending in CRLF),
    without the empty line that separates it from the body. ``meta`` holds the facts
    about the submission (:class:`~zonemta.store.meta.MessageMeta`).
    """

    id: str
    mail_from: str
    headers: bytes
    body_size: int
    received_at: float
    meta: MessageMeta = attrs.field(factory=MessageMeta)


@pickle_by_fields
@attrs.frozen
class NewDelivery:
    seq: int
    recipient: str
    domain: str
    zone: str
    next_attempt: float


@pickle_by_fields
@attrs.frozen
class Delivery:
    """A delivery row as the store returns it."""

    message_id: str
    seq: int
    recipient: str
    domain: str
    zone: str
    state: RowState
    attempts: int
    created: float
    next_attempt: float
    first_failure: float | None = None
    last_response: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    delay_notified: bool = False  # the sender was told the delivery is delayed (a DSN)

    @property
    def key(self) -> DeliveryKey:
        return DeliveryKey(self.message_id, self.seq)


@attrs.frozen
class ZoneCounts:
    """Pending deliveries of a zone (or of a recipient domain in a zone): ``active`` are due
    now (or leased), ``deferred`` wait for a later ``next_attempt``."""

    active: int
    deferred: int


def normalize_address(address: str) -> str:
    """An address as suppression entries compare it: the local part exact, the domain
    lower-cased."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


@attrs.frozen
class SuppressionEntry:
    """A recipient address or a whole recipient domain that is never delivered to: matching
    deliveries are dropped without a bounce. Exactly one of ``address``/``domain`` is set."""

    id: str
    created: float
    address: str | None = None
    domain: str | None = None


@attrs.frozen
class BlacklistEntry:
    """A local ``address`` disabled for deliveries to recipient ``domain`` until
    ``expires`` (epoch seconds), because of ``response``."""

    domain: str
    address: str
    created: float
    expires: float
    response: str


@attrs.frozen
class Suspension:
    """An operator's hold (or an automatic backoff) on deliveries: until it is removed or
    ``until`` passes (epoch seconds; None: no expiry), nothing it matches is attempted.

    The scope is one of: ``zone``; ``domain`` (a recipient domain, lower-case), optionally
    within one ``zone``; ``source`` (a local address, in every zone); ``message_id``. A
    backoff rule that created the entry is named in ``rule``, with the ``response`` that
    matched it. With ``max_connections`` the entry holds nothing: it *slows* the domain (in
    the zone) to that many deliveries at once."""

    id: str
    created: float
    zone: str | None = None
    domain: str | None = None
    source: str | None = None
    message_id: str | None = None
    until: float | None = None
    reason: str = ""
    who: str = ""
    rule: str | None = None
    response: str | None = None
    max_connections: int | None = None  # set: the domain is slowed to this many, not held

    def __attrs_post_init__(self) -> None:
        scope = (self.zone, self.domain, self.source, self.message_id)
        if not any(scope):
            raise ValueError("a suspension needs a zone, domain, source or message_id")
        if self.max_connections is not None and (self.domain is None or self.max_connections < 1):
            raise ValueError("a slowing entry needs a domain and max_connections >= 1")
        if (self.source or self.message_id) and sum(1 for part in scope if part) > 1:
            raise ValueError("a source or message_id suspension takes no other scope")
        if self.domain is not None and self.domain != self.domain.lower():
            raise ValueError("a suspended domain is lower-case")

    def holds(self, zone: str, domain: str, message_id: str) -> bool:
        """Whether a delivery of ``message_id`` to ``domain`` in ``zone`` is held by this
        entry (source suspensions hold no delivery: they take an address out of pools)."""
        if self.source is not None or self.max_connections is not None:
            return False
        if self.message_id is not None:
            return self.message_id == message_id
        return (self.zone is None or self.zone == zone) and (
            self.domain is None or self.domain == domain
        )

    def held_seconds(self, now: float) -> float:
        """How long the entry has held its deliveries at ``now`` (ended at ``until``)."""
        end = now if self.until is None else min(now, self.until)
        return max(0.0, end - self.created)
