"""A delivery's live state: the transition table applied, every transition published."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from zonemta.engine.bus import Event, EventBus
from zonemta.statemachine import DeliveryState, Transition, Trigger, transition
from zonemta.store import Delivery


class MachineBase(abc.ABC):
    """One delivery's current state. :meth:`fire` looks the trigger up in the table
    (raising ``InvalidTransition`` for an unknown pair), moves to the target state and
    publishes the transition (what publishing means is the subclass's)."""

    def __init__(self, row: Delivery) -> None:
        self.row = row
        self.state = DeliveryState.DEFERRED if row.attempts else DeliveryState.QUEUED
        self.mx: str | None = None
        self.local_address: str | None = None
        # "TLSv1.3/TLS_AES_256_GCM_SHA384" once the attempt's connection is in TLS (taken from
        # the details of the connected/reuse_connection transition, so the relay's machine
        # knows it when a delivery process sends).
        self.tls: str | None = None

    def fire(
        self,
        trigger: Trigger,
        *,
        response: str | None = None,
        category: str | None = None,
        **details: Any,
    ) -> Transition:
        """Advance and publish at once (transitions that persist nothing)."""
        row = self.advance(trigger)
        if trigger in (Trigger.CONNECTED, Trigger.REUSE_CONNECTION):  # plaintext: no version
            version = details.get("tls_version")
            self.tls = f"{version}/{details.get('tls_cipher', '')}" if version else None
        self.publish(row, response=response, category=category, **details)
        return row

    def advance(self, trigger: Trigger) -> Transition:
        """Move to the state the table gives for ``trigger`` without publishing; the caller
        persists what the transition says and then calls :meth:`publish`."""
        row = transition(self.state, trigger)
        self.state = row.target
        return row

    @abc.abstractmethod
    def publish(
        self,
        row: Transition,
        *,
        response: str | None = None,
        category: str | None = None,
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
        category: str | None = None,
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
                from_state=row.source.value,
                to_state=row.target.value,
                mx=self.mx,
                local_address=self.local_address,
                response=response,
                category=category,
                details={"trigger": row.trigger.value, **details},
            )
        )
