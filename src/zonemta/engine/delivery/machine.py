"""A delivery's live state: the transition table applied, every transition published."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

from zonemta.engine.bus import Event, EventBus
from zonemta.statemachine import (
    DeliveryState,
    FailureCategory,
    LeaseRow,
    Transition,
    Trigger,
    transition,
    waiting_state,
)
from zonemta.store import Delivery

# The event text of each state and trigger, read without the Enum ``value`` property (a
# Python call) three times per event.
EVENT_TEXT: dict[DeliveryState | Trigger, str] = {
    member: member.value for member in (*DeliveryState, *Trigger)
}


class MachineBase(abc.ABC):
    """One delivery's current state. :meth:`fire` looks the trigger up in the table
    (raising ``InvalidTransition`` for an unknown pair), moves to the target state and
    publishes the transition (what publishing means is the subclass's). Only the table
    moves it: :attr:`state` cannot be assigned.

    A machine starts where the table says a row with the leased row's attempt count waits
    (``waiting_state``: queued or deferred), unless ``start`` says where another machine of
    the same delivery is (a delivery process's machine starts where the relay's is)."""

    def __init__(self, row: Delivery, start: DeliveryState | None = None) -> None:
        self.row = row
        self._state = waiting_state(row.attempts) if start is None else start
        self.mx: str | None = None
        self.local_address: str | None = None
        # "TLSv1.3/TLS_AES_256_GCM_SHA384" once the attempt's connection is in TLS (taken from
        # the details of the connected/reuse_connection transition, so the relay's machine
        # knows it when a delivery process sends).
        self.tls: str | None = None

    @property
    def state(self) -> DeliveryState:
        return self._state

    def fire(
        self,
        trigger: Trigger,
        *,
        response: str | None = None,
        **details: Any,
    ) -> Transition:
        """Advance and publish at once: the steps of an attempt, which have no effects
        (an outcome's transition goes through the Deliverer and its effect applier)."""
        row = transition(self._state, trigger)
        if row.effects and not all(isinstance(effect, LeaseRow) for effect in row.effects):
            raise ValueError(f"{trigger.value} has effects: the Deliverer carries them out")
        self._state = row.target
        if trigger in (Trigger.CONNECTED, Trigger.REUSE_CONNECTION):  # plaintext: no version
            version = details.get("tls_version")
            self.tls = f"{version}/{details.get('tls_cipher', '')}" if version else None
        self.publish(row, response=response, **details)
        return row

    def advance(self, trigger: Trigger) -> Transition:
        """Move to the state the table gives for ``trigger`` without publishing; the caller
        persists what the transition says and then calls :meth:`publish`."""
        row = transition(self._state, trigger)
        self._state = row.target
        return row

    @abc.abstractmethod
    def publish(
        self,
        row: Transition,
        *,
        response: str | None = None,
        category: FailureCategory | None = None,
        **details: Any,
    ) -> None: ...


class DeliveryMachine(MachineBase):
    """The relay's machine: every transition is one ``delivery`` event on the bus."""

    def __init__(self, row: Delivery, bus: EventBus, clock: Callable[[], float]) -> None:
        super().__init__(row)
        self.bus = bus
        self.clock = clock

    def publish(
        self,
        row: Transition,
        *,
        response: str | None = None,
        category: FailureCategory | None = None,
        **details: Any,
    ) -> None:
        self.bus.publish(
            Event(
                "delivery",
                self.row.message_id,
                self.clock(),
                seq=self.row.seq,
                zone=self.row.zone,
                recipient=self.row.recipient,
                from_state=EVENT_TEXT[row.source],
                to_state=EVENT_TEXT[row.target],
                mx=self.mx,
                local_address=self.local_address,
                response=response,
                category=category.value if category is not None else None,
                details={"trigger": EVENT_TEXT[row.trigger], **details},
            )
        )


class MachineGroup:
    """The machines of the deliveries that go in one SMTP transaction (recipients of one
    message to one destination). The steps of the transaction — ``resolve``, ``resolved``,
    ``connected``, ``reuse_connection``, ``reconnect`` — are fired on every machine, each
    publishing its own transition; the outcomes stay per machine (the Deliverer's).

    ``source_rows`` are the rows the local address was chosen for (the group as the
    scheduler formed it: the address is the same for all of them)."""

    def __init__(
        self, machines: Sequence[MachineBase], source_rows: Sequence[Delivery] | None = None
    ) -> None:
        if not machines:
            raise ValueError("a machine group needs at least one machine")
        self.machines = tuple(machines)
        self.source_rows = (
            tuple(source_rows) if source_rows else tuple(m.row for m in self.machines)
        )

    @property
    def row(self) -> Delivery:
        """The first delivery's row (its domain and destination are the group's)."""
        return self.machines[0].row

    @property
    def mx(self) -> str | None:
        return self.machines[0].mx

    @mx.setter
    def mx(self, value: str | None) -> None:
        for machine in self.machines:
            machine.mx = value

    @property
    def local_address(self) -> str | None:
        return self.machines[0].local_address

    @local_address.setter
    def local_address(self, value: str | None) -> None:
        for machine in self.machines:
            machine.local_address = value

    def fire(self, trigger: Trigger, *, response: str | None = None, **details: Any) -> None:
        """Fire a step of the transaction on every machine (see :meth:`MachineBase.fire`)."""
        for machine in self.machines:
            machine.fire(trigger, response=response, **details)
