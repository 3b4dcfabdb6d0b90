"""How one delivery attempt ended: the trigger for the state machine, the remote (or local)
response and, for a failure, its category; for a lease given back without an attempt, why.

Kept apart from ``transmit`` so that what only carries outcomes (the pipe frames, which the
intake processes import too) does not import the outbound SMTP, TLS-policy and DKIM stack.
"""

from __future__ import annotations

import enum

import attrs

from zonemta.pickling import pickle_by_fields
from zonemta.statemachine import FailureCategory, Trigger

__all__ = ["Outcome", "ReleaseReason"]


class ReleaseReason(enum.StrEnum):
    """Why a lease was given back without an attempt. The values are a wire format: the
    ``release`` detail of the delivery event and the ``reason`` label of
    ``zonemta_deliveries_released_total``."""

    SHUTDOWN = "shutdown"  # cancelled before (or during) the attempt: the relay is stopping
    SUSPENDED = "suspended"  # held by a suspension put in force after the lease
    WARMUP = "warmup"  # every source address has used its warm-up cap today
    SHARED_RATE = "shared_rate"  # the rate's window used up by the instances sharing the store
    SHARED_CONNECTIONS = "shared_connections"  # their connections use the destination's limit


@pickle_by_fields
@attrs.frozen
class Outcome:
    trigger: Trigger
    response: str
    category: FailureCategory | None = None
    release: ReleaseReason | None = None  # set (only) on a release: why
