"""The delivery state machine: states, triggers and ONE transition table.

Each row names its source state, trigger and target state, and every consequence of the
transition as typed effects (``zonemta.statemachine.effects``): what the store writes for
the row, the DSN, the webhook, the plugins' report, the blacklist and the backoff. The
engine classifies every outcome into a :class:`Trigger` before it looks up the table;
there are no guards inside the table. An unknown (state, trigger) pair raises
:class:`InvalidTransition` naming both.

A row that is not leased waits in :func:`waiting_state` of its attempt count: ``queued``
until an attempt is counted, ``deferred`` after. A machine starts there, and a lease given
back returns there: :func:`release_trigger` is the classification that picks the row.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from zonemta.statemachine.effects import (
    ROW_WRITES,
    BlacklistSource,
    BounceWebhook,
    ConsiderBackoff,
    DeferRow,
    DsnKind,
    Effect,
    LeaseRow,
    NotifySender,
    ReleaseRow,
    RemoveRow,
    Report,
    ReportHook,
    RowWrite,
)
from zonemta.statemachine.states import TERMINAL_STATES, DeliveryState, Trigger

__all__ = [
    "TERMINAL_STATES",
    "TRANSITIONS",
    "DeliveryState",
    "InvalidTransition",
    "Transition",
    "Trigger",
    "release_trigger",
    "transition",
    "waiting_state",
]


@attrs.frozen
class Transition:
    source: DeliveryState
    trigger: Trigger
    target: DeliveryState
    effects: tuple[Effect, ...] = ()

    def __attrs_post_init__(self) -> None:
        writes = [effect for effect in self.effects if isinstance(effect, ROW_WRITES)]
        if len(writes) > 1:
            raise ValueError(f"{self.source.value} --{self.trigger.value}--> has two row writes")
        if writes and self.effects[-1] is not writes[0]:
            raise ValueError(f"{self.source.value} --{self.trigger.value}--> writes the row last")
        if isinstance(self.row_write, ReleaseRow) and self.row_write.state is not self.target:
            raise ValueError("a released row is stored in the transition's target state")

    @property
    def row_write(self) -> RowWrite | None:
        """What the store writes for the row (None: nothing)."""
        last = self.effects[-1] if self.effects else None
        return last if isinstance(last, ROW_WRITES) else None


class InvalidTransition(Exception):
    def __init__(self, state: DeliveryState, trigger: Trigger) -> None:
        super().__init__(f"no transition from state {state.value!r} on trigger {trigger.value!r}")
        self.state = state
        self.trigger = trigger


def waiting_state(attempts: int) -> DeliveryState:
    """The state a row that is not leased is stored in (and a delivery's machine starts
    in): ``queued`` while no attempt is counted, ``deferred`` after."""
    return DeliveryState.DEFERRED if attempts else DeliveryState.QUEUED


def release_trigger(attempts: int) -> Trigger:
    """The trigger of a lease given back without an attempt, for a row with ``attempts``:
    its transition returns the row to :func:`waiting_state`."""
    return Trigger.RELEASE_DEFERRED if attempts else Trigger.RELEASE


S = DeliveryState
T = Trigger

_IN_FLIGHT = (S.LOCKED, S.RESOLVING, S.CONNECTING, S.SENDING)
# Where a remote server has answered (or failed to): from LOCKED the outcome is our own.
_ON_THE_WIRE = (S.RESOLVING, S.CONNECTING, S.SENDING)

_BOUNCE: tuple[Effect, ...] = (
    BounceWebhook(),
    NotifySender(DsnKind.FAILED),
    Report(ReportHook.BOUNCE),
    RemoveRow(),
)


def _remote(state: DeliveryState, *effects: Effect) -> tuple[Effect, ...]:
    """``effects`` that follow a remote reply only when ``state`` is on the wire."""
    return effects if state in _ON_THE_WIRE else ()


_ROWS: list[tuple[DeliveryState, Trigger, DeliveryState, tuple[Effect, ...]]] = [
    (S.QUEUED, T.LEASE, S.LOCKED, (LeaseRow(),)),
    (S.DEFERRED, T.LEASE, S.LOCKED, (LeaseRow(),)),
    (S.LOCKED, T.RESOLVE, S.RESOLVING, ()),
    (S.LOCKED, T.REUSE_CONNECTION, S.SENDING, ()),
    (S.LOCKED, T.EXPIRED, S.BOUNCED, _BOUNCE),
    (S.LOCKED, T.SUPPRESSED, S.BOUNCED, (Report(ReportHook.BOUNCE), RemoveRow())),
    (S.RESOLVING, T.RESOLVED, S.CONNECTING, ()),
    (S.CONNECTING, T.CONNECTED, S.SENDING, ()),
    (S.SENDING, T.ACCEPTED, S.DELIVERED, (Report(ReportHook.DELIVERED), RemoveRow())),
    (S.SENDING, T.RECONNECT, S.RESOLVING, ()),
    *[
        (
            s,
            T.TRANSIENT_FAILURE,
            S.DEFERRED,
            (
                *_remote(s, BlacklistSource(), ConsiderBackoff()),
                NotifySender(DsnKind.DELAYED),
                Report(ReportHook.DELAYED),
                DeferRow(),
            ),
        )
        for s in _IN_FLIGHT
    ],
    *[
        (s, T.PERMANENT_FAILURE, S.BOUNCED, (*_remote(s, BlacklistSource()), *_BOUNCE))
        for s in _IN_FLIGHT
    ],
    *[
        (
            s,
            T.RETRIES_EXHAUSTED,
            S.BOUNCED,
            (*_remote(s, BlacklistSource(), ConsiderBackoff()), *_BOUNCE),
        )
        for s in _IN_FLIGHT
    ],
    *[(s, T.RELEASE, S.QUEUED, (ReleaseRow(S.QUEUED),)) for s in _IN_FLIGHT],
    *[(s, T.RELEASE_DEFERRED, S.DEFERRED, (ReleaseRow(S.DEFERRED),)) for s in _IN_FLIGHT],
]

TRANSITIONS: Mapping[tuple[DeliveryState, Trigger], Transition] = {
    (source, trigger): Transition(source, trigger, target, effects)
    for source, trigger, target, effects in _ROWS
}


def transition(state: DeliveryState, trigger: Trigger) -> Transition:
    """The table row for ``(state, trigger)``. Raises :class:`InvalidTransition`."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise InvalidTransition(state, trigger) from None
