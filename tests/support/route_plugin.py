"""A plugin with a ``route`` hook only (an intake hook, so it runs beside delivery
processes): the recipients of ``domain`` go to the fixed ``mx`` (``host:port``)."""

from __future__ import annotations

from typing import Any

import attrs

from zonemta.engine.hooks import RouteDecision
from zonemta.plugins import PluginApp


@attrs.frozen
class RouteOptions:
    domain: str = ""
    mx: str = ""


class RoutePlugin:
    options = RouteOptions

    def __init__(self) -> None:
        self.o = RouteOptions()

    async def init(self, app: PluginApp) -> None:
        self.o = app.options
        app.hooks.route.append(self.on_route)

    async def on_route(self, envelope: Any, route: RouteDecision) -> None:
        if route.domain == self.o.domain:
            route.mx = self.o.mx


plugin = RoutePlugin
