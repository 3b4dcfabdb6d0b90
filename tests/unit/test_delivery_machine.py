"""DeliveryMachine.fire: the steps of an attempt move the machine and publish one event;
a trigger whose transition has effects other than the lease is refused (the Deliverer
carries those out), without moving the machine."""

from __future__ import annotations

import pytest

from zonemta.engine.bus import Event, EventBus
from zonemta.engine.delivery.machine import EVENT_TEXT, DeliveryMachine
from zonemta.statemachine import DeliveryState, Trigger
from zonemta.store import Delivery, RowState

ROW = Delivery("m1", 1, "a@x.test", "x.test", "default", RowState.QUEUED, 0, 1.0, 1.0)


def machine() -> tuple[DeliveryMachine, list[Event]]:
    bus = EventBus()
    events: list[Event] = []
    bus.add_listener(events.append)
    return DeliveryMachine(ROW, bus, lambda: 5.0), events


def test_the_steps_of_an_attempt_move_and_publish() -> None:
    delivery, events = machine()
    delivery.fire(Trigger.LEASE)  # its effect is the lease itself
    delivery.fire(Trigger.RESOLVE)
    delivery.mx = "mx.x.test"
    delivery.fire(Trigger.RESOLVED, hosts=["mx.x.test"])
    delivery.fire(Trigger.CONNECTED, tls=True, tls_version="TLSv1.3", tls_cipher="C")
    assert delivery.state is DeliveryState.SENDING and delivery.tls == "TLSv1.3/C"
    assert [(e.from_state, e.to_state, e.details) for e in events] == [
        ("queued", "locked", {"trigger": "lease"}),
        ("locked", "resolving", {"trigger": "resolve"}),
        ("resolving", "connecting", {"trigger": "resolved", "hosts": ["mx.x.test"]}),
        (
            "connecting",
            "sending",
            {"trigger": "connected", "tls": True, "tls_version": "TLSv1.3", "tls_cipher": "C"},
        ),
    ]
    assert events[-1].mx == "mx.x.test" and events[-1].time == 5.0


def test_an_outcome_with_effects_is_not_a_step() -> None:
    delivery, events = machine()
    delivery.fire(Trigger.LEASE)
    delivery.fire(Trigger.REUSE_CONNECTION)
    with pytest.raises(ValueError, match="accepted has effects"):
        delivery.fire(Trigger.ACCEPTED)
    assert delivery.state is DeliveryState.SENDING and len(events) == 2


def test_every_state_and_trigger_has_its_value_as_event_text() -> None:
    for member in (*DeliveryState, *Trigger):
        assert EVENT_TEXT[member] == member.value
