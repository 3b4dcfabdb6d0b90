"""The frames the relay and its child processes exchange: one frozen attrs class per kind.

Every frame is a :class:`~zonemta.engine.processes.pipe.Frame`; the pipe pickles it as it is
(both ends are the same installation) and the receiver matches on its class. ``rid``
numbers a delivery attempt, or an intake call that the relay answers with :class:`Reply`.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from zonemta.engine.bus import Event
from zonemta.engine.delivery.outcome import Outcome, ReleaseReason
from zonemta.engine.processes.pipe import Frame
from zonemta.pickling import pickle_by_fields, pickle_members_by_name, register_extension_codes
from zonemta.statemachine import DeliveryState, FailureCategory, Trigger
from zonemta.store import (
    Delivery,
    DeliveryKey,
    FixedRoute,
    MessageMeta,
    MessageRecord,
    NewDelivery,
    RowState,
)

__all__ = [
    "Abort",
    "Admit",
    "Attempt",
    "Body",
    "Cancel",
    "Chunk",
    "Commit",
    "Done",
    "Fired",
    "Forward",
    "Init",
    "IntakeGrant",
    "Joined",
    "Leave",
    "More",
    "PoolCounts",
    "Ready",
    "Reply",
    "RowOutcome",
    "Stats",
    "Stop",
]

# The enums in frames (a row's state, a machine's state, a trigger, an outcome's category
# and release reason) cross the pipe as references to their members.
_FRAME_ENUMS = (DeliveryState, Trigger, FailureCategory, ReleaseReason, RowState)
pickle_members_by_name(*_FRAME_ENUMS)
# (and each class and member a frame names has an extension code: EXTENDED, at the end)

# {zone: (connection reuses, open connections)} of a delivery process's pools.
PoolCounts = Mapping[str, tuple[int, int]]

# -- every child ---------------------------------------------------------------------------


@pickle_by_fields
@attrs.frozen
class Init(Frame):
    """Relay → child, first: the configuration, what this kind of child is given (a
    delivery process its zones, an intake process its sockets), the log level and its
    index."""

    config: Any
    given: Any
    log_level: int
    index: int


@pickle_by_fields
@attrs.frozen
class Ready(Frame):
    """Child → relay, once it has started."""


# -- delivery processes --------------------------------------------------------------------


def _group(_inst: object, _attribute: object, value: tuple[Any, ...]) -> None:
    if not value:
        raise ValueError("an attempt needs at least one delivery")


@attrs.frozen
class Attempt(Frame):
    """Relay → delivery process: send leased deliveries of one message to one destination
    (a group: one SMTP transaction). ``rows`` and ``states`` (where the relay's machine of
    each row is) go together, in order; ``body`` is the body when the relay holds it in
    memory (None: ask for it with :class:`More`); ``blacklisted`` the local addresses
    disabled for each of their domains."""

    rid: int
    zone: str
    rows: tuple[Delivery, ...] = attrs.field(validator=_group)
    message: MessageRecord
    body: bytes | None
    blacklisted: Mapping[str, frozenset[str]]
    states: tuple[DeliveryState, ...]

    def __attrs_post_init__(self) -> None:
        if len(self.states) != len(self.rows):
            raise ValueError("an attempt needs one state per delivery")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled as plain values (see _attempt_from_wire): the relay sends one per
        # attempt, and a pickle naming its records and enums costs the pickler a lookup per
        # name (about 1 us each; 8 -> 3.6 us for a one-row attempt).
        message = self.message
        return _attempt_from_wire, (
            self.rid,
            self.zone,
            tuple(
                (*_ROW_BEFORE_STATE(row), _ROW_STATE_INDEX[row.state], *_ROW_AFTER_STATE(row))
                for row in self.rows
            ),
            _MESSAGE_VALUES(message),
            _META_VALUES(message.meta),
            self.body,
            self.blacklisted,
            tuple(_DELIVERY_STATE_INDEX[state] for state in self.states),
        )


def _field_names(cls: type) -> list[str]:
    return [field.name for field in attrs.fields(cls)]


_ROW_FIELDS = _field_names(Delivery)
_ROW_STATE_AT = _ROW_FIELDS.index("state")
_ROW_BEFORE_STATE = operator.attrgetter(*_ROW_FIELDS[:_ROW_STATE_AT])
_ROW_AFTER_STATE = operator.attrgetter(*_ROW_FIELDS[_ROW_STATE_AT + 1 :])
_MESSAGE_FIELDS = _field_names(MessageRecord)
_MESSAGE_VALUES = operator.attrgetter(*_MESSAGE_FIELDS[:-1])  # all but meta, the last
_META_VALUES = operator.attrgetter(*_field_names(MessageMeta))
_ROW_STATES = tuple(RowState)
_ROW_STATE_INDEX = {state: index for index, state in enumerate(_ROW_STATES)}
_DELIVERY_STATES = tuple(DeliveryState)
_DELIVERY_STATE_INDEX = {state: index for index, state in enumerate(_DELIVERY_STATES)}
assert _MESSAGE_FIELDS[-1] == "meta"
assert len(_ROW_FIELDS) > _ROW_STATE_AT + 1  # the attrgetters above return tuples


def _row_from_wire(values: tuple[Any, ...]) -> Delivery:
    fields = list(values)
    fields[_ROW_STATE_AT] = _ROW_STATES[values[_ROW_STATE_AT]]
    return Delivery(*fields)


def _attempt_from_wire(
    rid: int,
    zone: str,
    rows: tuple[tuple[Any, ...], ...],
    message: tuple[Any, ...],
    meta: tuple[Any, ...],
    body: bytes | None,
    blacklisted: Mapping[str, frozenset[str]],
    states: tuple[int, ...],
) -> Attempt:
    """An :class:`Attempt` from what its ``__reduce__`` gave: the same records, built by
    their classes from their field values in field order."""
    return Attempt(
        rid,
        zone,
        tuple(_row_from_wire(row) for row in rows),
        MessageRecord(*[*message, MessageMeta(*meta)]),
        body,
        blacklisted,
        tuple(_DELIVERY_STATES[state] for state in states),
    )


@pickle_by_fields
@attrs.frozen
class Chunk(Frame):
    """Relay → delivery process: the next piece of body stream ``stream`` (None: the
    end)."""

    rid: int
    stream: int
    data: bytes | None


@pickle_by_fields
@attrs.frozen
class Cancel(Frame):
    """Relay → delivery process: stop the attempt (the relay no longer waits for it)."""

    rid: int


@pickle_by_fields
@attrs.frozen
class Fired(Frame):
    """Delivery process → relay: a step of the attempt's delivery number ``index`` (in
    ``Attempt.rows``), as it happens (the relay fires it on that delivery's machine)."""

    rid: int
    index: int
    trigger: Trigger
    mx: str | None
    local_address: str | None
    response: str | None
    details: Mapping[str, Any]


@pickle_by_fields
@attrs.frozen
class More(Frame):
    """Delivery process → relay: the next body chunk of ``stream``. Each stream reads the
    body from its beginning: one per transaction that sends it (a group's parts going to
    different hosts at the same time, or a transaction retried on a fresh connection)."""

    rid: int
    stream: int


@pickle_by_fields
@attrs.frozen
class RowOutcome:
    """One delivery's outcome in :class:`Done`, with the host and local address it had."""

    outcome: Outcome
    mx: str | None
    local_address: str | None


@pickle_by_fields
@attrs.frozen
class Done(Frame):
    """Delivery process → relay: the outcome of each delivery of the attempt (in the order
    of ``Attempt.rows``), and the process's pool figures."""

    rid: int
    outcomes: tuple[RowOutcome, ...]
    pools: PoolCounts


@pickle_by_fields
@attrs.frozen
class Stats(Frame):
    """Delivery process → relay, now and then: its pool figures."""

    pools: PoolCounts


# -- intake processes ----------------------------------------------------------------------


@pickle_by_fields
@attrs.frozen
class Admit(Frame):
    """Intake process → relay: count a new client in (reply: None, or the refusal)."""

    rid: int
    interface: str
    address: str


@pickle_by_fields
@attrs.frozen
class Leave(Frame):
    """Intake process → relay: a counted client has gone (``held``: one it had let in on a
    place held for it, :class:`Joined`)."""

    interface: str
    address: str
    held: bool = False


@pickle_by_fields
@attrs.frozen
class Joined(Frame):
    """Intake process → relay: a client it let in on one of the places the relay holds
    for it (no reply: the place was already counted)."""

    interface: str
    address: str


@pickle_by_fields
@attrs.frozen
class IntakeGrant:
    """What an intake process is given in its :class:`Init`: the listening sockets of each
    interface (descriptors it inherits) and how many places of each interface's
    ``max_clients`` the relay holds for it (see ``transport/admission.py``)."""

    sockets: dict[str, list[int]]
    places: dict[str, int]


@pickle_by_fields
@attrs.frozen
class Body(Frame):
    """Intake process → relay: the next piece of a body being received (reply: None, or
    the StoreError)."""

    rid: int
    message_id: str
    data: bytes


@pickle_by_fields
@attrs.frozen
class Abort(Frame):
    """Intake process → relay: the reception ended without a commit."""

    message_id: str


@pickle_by_fields
@attrs.frozen
class Commit(Frame):
    """Intake process → relay: the rest of the body and the commit (reply: None, or the
    StoreError)."""

    rid: int
    record: MessageRecord
    deliveries: Sequence[NewDelivery]
    tail: bytes


@pickle_by_fields
@attrs.frozen
class Forward(Frame):
    """Intake process → relay: an event (``message.rejected``, ``message.dropped``) to
    publish on the relay's bus."""

    event: Event


@pickle_by_fields
@attrs.frozen
class Reply(Frame):
    """Relay → intake process: the answer to the call ``rid``."""

    rid: int
    value: object


@pickle_by_fields
@attrs.frozen
class Stop(Frame):
    """Relay → intake process: stop accepting, finish the sessions within ``grace``
    seconds, then exit."""

    grace: float


# -- extension codes -------------------------------------------------------------------------

#: The first of the extension codes of what frames carry (codes from 256 are not assigned
#: by Python; EXT2 takes codes up to 65535).
EXTENSION_BASE = 0x5A00

#: What frames name, in a fixed order: each is pickled as its extension code (see
#: ``zonemta/pickling.py``). Append only: both ends of the pipe derive the codes from it.
EXTENDED: tuple[type | enum.Enum | Callable[..., Any], ...] = (
    Init,
    Ready,
    Attempt,
    Chunk,
    Cancel,
    Fired,
    More,
    RowOutcome,
    Done,
    Stats,
    Admit,
    Leave,
    Joined,
    IntakeGrant,
    Body,
    Abort,
    Commit,
    Forward,
    Reply,
    Stop,
    Delivery,
    DeliveryKey,
    MessageRecord,
    MessageMeta,
    FixedRoute,
    NewDelivery,
    Outcome,
    Event,
    *(member for cls in _FRAME_ENUMS for member in cls),
    _attempt_from_wire,
)

register_extension_codes(EXTENSION_BASE, EXTENDED)
