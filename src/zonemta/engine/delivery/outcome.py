"""How one delivery attempt ended: the trigger for the state machine, the remote (or local)
response and, for a failure, its category.

Kept apart from ``transmit`` so that what only carries outcomes (the pipe frames, which the
intake processes import too) does not import the outbound SMTP, TLS-policy and DKIM stack.
"""

from __future__ import annotations

import attrs

from zonemta.pickling import pickle_by_fields
from zonemta.statemachine import FailureCategory, Trigger

__all__ = ["Outcome"]


@pickle_by_fields
@attrs.frozen
class Outcome:
    trigger: Trigger
    response: str
    category: FailureCategory | None = None
