"""The delivery state machine: states, triggers and ONE transition table.

The engine classifies every outcome into a :class:`Trigger` before it looks up the table;
there are no guards inside the table. An unknown (state, trigger) pair raises
:class:`InvalidTransition` naming both.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs


class DeliveryState(enum.Enum):
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


class Trigger(enum.Enum):
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
    RELEASE = "release"  # lease given back without an attempt (shutdown, lease lost)
    RECONNECT = "reconnect"  # a reused connection turned out dead before the server answered


class Persist(enum.Enum):
    """What a transition writes to the store."""

    NOTHING = "nothing"
    LEASE = "lease"  # the row is LOCKED by this instance
    DEFER = "defer"  # attempts+1, next attempt time, last response
    COMPLETE = "complete"  # the row (and the body after the last row) is removed
    RELEASE = "release"  # the lease is dropped, the row waits again


@attrs.frozen
class Transition:
    source: DeliveryState
    trigger: Trigger
    target: DeliveryState
    persist: Persist


class InvalidTransition(Exception):
    def __init__(self, state: DeliveryState, trigger: Trigger) -> None:
        super().__init__(f"no transition from state {state.value!r} on trigger {trigger.value!r}")
        self.state = state
        self.trigger = trigger


S = DeliveryState
T = Trigger
P = Persist

_IN_FLIGHT = (S.LOCKED, S.RESOLVING, S.CONNECTING, S.SENDING)

_ROWS: list[tuple[DeliveryState, Trigger, DeliveryState, Persist]] = [
    (S.QUEUED, T.LEASE, S.LOCKED, P.LEASE),
    (S.DEFERRED, T.LEASE, S.LOCKED, P.LEASE),
    (S.LOCKED, T.RESOLVE, S.RESOLVING, P.NOTHING),
    (S.LOCKED, T.REUSE_CONNECTION, S.SENDING, P.NOTHING),
    (S.LOCKED, T.EXPIRED, S.BOUNCED, P.COMPLETE),
    (S.LOCKED, T.SUPPRESSED, S.BOUNCED, P.COMPLETE),
    (S.RESOLVING, T.RESOLVED, S.CONNECTING, P.NOTHING),
    (S.CONNECTING, T.CONNECTED, S.SENDING, P.NOTHING),
    (S.SENDING, T.ACCEPTED, S.DELIVERED, P.COMPLETE),
    (S.SENDING, T.RECONNECT, S.RESOLVING, P.NOTHING),
    *[(s, T.TRANSIENT_FAILURE, S.DEFERRED, P.DEFER) for s in _IN_FLIGHT],
    *[(s, T.PERMANENT_FAILURE, S.BOUNCED, P.COMPLETE) for s in _IN_FLIGHT],
    *[(s, T.RETRIES_EXHAUSTED, S.BOUNCED, P.COMPLETE) for s in _IN_FLIGHT],
    *[(s, T.RELEASE, S.QUEUED, P.RELEASE) for s in _IN_FLIGHT],
]

TRANSITIONS: Mapping[tuple[DeliveryState, Trigger], Transition] = {
    (source, trigger): Transition(source, trigger, target, persist)
    for source, trigger, target, persist in _ROWS
}


def transition(state: DeliveryState, trigger: Trigger) -> Transition:
    """The table row for ``(state, trigger)``. Raises :class:`InvalidTransition`."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise InvalidTransition(state, trigger) from None
