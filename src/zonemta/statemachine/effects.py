"""The consequences of a delivery transition, as data.

Each row of the transition table lists its effects in the order they are carried out; the
engine's one applier (``zonemta.engine.delivery.effects``) does what they say and decides
nothing of its own. A row has at most one *row write* (what the store writes for the
delivery's row), and it comes last: the notices and reports read the message while it is
still stored, and a DSN is queued before the bounced delivery disappears.
"""

from __future__ import annotations

import enum

import attrs

from zonemta.statemachine.states import DeliveryState

__all__ = [
    "BlacklistSource",
    "BounceWebhook",
    "ConsiderBackoff",
    "DeferRow",
    "DsnKind",
    "Effect",
    "LeaseRow",
    "NotifySender",
    "ReleaseRow",
    "RemoveRow",
    "Report",
    "ReportHook",
    "RowWrite",
]


@attrs.frozen
class LeaseRow:
    """The row is locked by this instance. The lease query that found the row wrote it
    already; there is nothing left to do."""

    @property
    def label(self) -> str:
        return "lease"


@attrs.frozen
class ReleaseRow:
    """The lease is dropped without counting an attempt: the row waits in ``state``
    (queued or deferred) again, due now."""

    state: DeliveryState = attrs.field()

    @state.validator
    def _waiting(self, _: object, state: DeliveryState) -> None:
        if state not in (DeliveryState.QUEUED, DeliveryState.DEFERRED):
            raise ValueError(f"a released row waits queued or deferred, not {state.value}")

    @property
    def label(self) -> str:
        return f"release as {self.state.value}"


@attrs.frozen
class DeferRow:
    """An attempt failed temporarily: attempts+1, the row waits deferred until the retry
    schedule's next time, with the last response (and whether a delay notice is settled)."""

    @property
    def label(self) -> str:
        return "defer"


@attrs.frozen
class RemoveRow:
    """The delivery ended (delivered or bounced): the row is removed, and the message with
    its body after its last row."""

    @property
    def label(self) -> str:
        return "remove"


RowWrite = LeaseRow | ReleaseRow | DeferRow | RemoveRow


class DsnKind(enum.Enum):
    FAILED = "failed"  # the delivery bounced
    DELAYED = "delayed"  # the delivery is late (sent once, when the delay notice is due)


@attrs.frozen
class NotifySender:
    """A DSN to the envelope sender (unless the zone, the message or the configuration
    sends none; a delay notice only when it is due)."""

    kind: DsnKind

    @property
    def label(self) -> str:
        return f"dsn {self.kind.value}"


@attrs.frozen
class BounceWebhook:
    """The bounce webhook is called (when one is configured)."""

    @property
    def label(self) -> str:
        return "webhook"


class ReportHook(enum.Enum):
    """The plugin hook that hears of the outcome."""

    DELIVERED = "delivered"
    BOUNCE = "bounce"
    DELAYED = "delayed"


@attrs.frozen
class Report:
    """The plugins' ``delivered``, ``bounce`` or ``delayed`` hook runs."""

    hook: ReportHook

    @property
    def label(self) -> str:
        return f"report {self.hook.value}"


@attrs.frozen
class BlacklistSource:
    """A remote reply of category ``blacklist`` disables the source address for the
    recipient domain (and the next attempt goes out from another one)."""

    @property
    def label(self) -> str:
        return "blacklist"


@attrs.frozen
class ConsiderBackoff:
    """A remote reply that matches a backoff rule suspends or slows the (zone, domain)."""

    @property
    def label(self) -> str:
        return "backoff"


Effect = (
    LeaseRow
    | ReleaseRow
    | DeferRow
    | RemoveRow
    | NotifySender
    | BounceWebhook
    | Report
    | BlacklistSource
    | ConsiderBackoff
)
ROW_WRITES = (LeaseRow, ReleaseRow, DeferRow, RemoveRow)
