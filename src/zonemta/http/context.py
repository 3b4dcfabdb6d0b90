"""What the HTTP API works on: the relay's parts, handed over by the app wiring."""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

from zonemta.conf import Config
from zonemta.engine.bus import EventBus
from zonemta.engine.engine import DeliveryEngine
from zonemta.engine.intake.reception import Intake
from zonemta.store import Store


@attrs.frozen
class ApiContext:
    """The relay's components the routes use (the API never imports the app wiring)."""

    config: Config
    store: Store
    bus: EventBus
    engine: DeliveryEngine
    intake: Intake
    clock: Callable[[], float] = time.time
