"""A delivery's live state: the transition table applied, every transition published."""

from __future__ import annotations

import abc
from collections.abc import Callable
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
        if any(
            not isinstance(effect, LeaseRow) for effect in transition(self._state, trigger).effects
        ):
            raise ValueError(f"{trigger.value} has effects: the Deliverer carries them out")
        row = self.advance(trigger)
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
                from_state=row.source.value,
                to_state=row.target.value,
                mx=self.mx,
                local_address=self.local_address,
                response=response,
                category=category.value if category is not None else None,
                details={"trigger": row.trigger.value, **details},
            )
        )
