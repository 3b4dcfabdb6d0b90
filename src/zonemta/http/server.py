"""The API server: the app on hypercorn inside the relay's nursery."""

from __future__ import annotations

import logging
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from zonemta.http.application import create_app
from zonemta.http.context import ApiContext
from zonemta.http.events import EventStream
from zonemta.http.metrics import Metrics

log = logging.getLogger(__name__)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ApiServer:
    """Owns the app, its metrics (a bus listener from construction on) and the event
    stream. :meth:`run` serves until :meth:`stop`."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        api = ctx.config.api
        self.metrics = Metrics(
            zones=ctx.config.zones,
            pools=ctx.engine.pools,
            blacklisted=lambda: len(ctx.engine.blacklist.entries()),
            suspended=lambda: len(ctx.engine.suspensions.entries()),
            warmup=ctx.engine.warmup.figures,
        )
        ctx.bus.add_listener(self.metrics.on_event)
        self.events = EventStream(
            ctx.bus,
            buffer=api.event_buffer,
            heartbeat=api.heartbeat.total_seconds(),
            metrics=self.metrics,
            clock=ctx.clock,
        )
        self.app = create_app(ctx, self.metrics, self.events)
        self._shutdown = trio.Event()
        self._stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve; reports the bound port. Raises OSError when the address cannot be bound."""
        api = self.ctx.config.api
        config = HypercornConfig()
        config.bind = [_bind(api.host, api.port)]
        config.accesslog = None
        config.errorlog = logging.getLogger("zonemta.http.hypercorn")
        config.graceful_timeout = 5.0
        config.include_server_header = False
        try:
            async with trio.open_nursery() as nursery:
                binds: list[str] = await nursery.start(
                    partial(serve, self.app, config, shutdown_trigger=self._shutdown.wait)
                )
                port = int(binds[0].rsplit(":", 1)[1])
                log.debug("HTTP API on %s", binds[0])
                task_status.started(port)
        finally:
            self._stopped.set()

    async def stop(self, grace: float) -> None:
        """Close every /events stream, stop accepting, give requests ``grace`` seconds."""
        self.events.close_all()
        self._shutdown.set()
        with trio.move_on_after(grace):
            await self._stopped.wait()
