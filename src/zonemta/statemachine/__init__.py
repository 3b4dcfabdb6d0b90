"""The delivery state machine (pure: no I/O, no trio)."""

from zonemta.statemachine.delivery import (
    TERMINAL_STATES,
    TRANSITIONS,
    DeliveryState,
    InvalidTransition,
    Persist,
    Transition,
    Trigger,
    transition,
)

__all__ = [
    "TERMINAL_STATES",
    "TRANSITIONS",
    "DeliveryState",
    "InvalidTransition",
    "Persist",
    "Transition",
    "Trigger",
    "transition",
]
