"""Loading plugins and giving them the relay: :class:`PluginHost` and :class:`PluginApp`.

Loading happens in two steps. :meth:`PluginHost.load` (synchronous, at relay construction)
imports every enabled plugin and structures its options, so a bad config fails before
anything listens. :meth:`PluginHost.start` (in the relay's nursery, before listeners and
the API start) awaits each plugin's ``init(app)`` in ``order``, registers the plugins'
HTTP routes and runs the task that hands bus events to ``event`` hooks.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
import trio

from zonemta.conf import Config, ConfigError, PluginConfig
from zonemta.conf.loader import converter, error_lines
from zonemta.engine.bus import EventBus
from zonemta.engine.hooks import Hooks, run_notices
from zonemta.store import Store

log = logging.getLogger(__name__)

#: Built-in plugin names → importable paths.
BUILTIN = {
    "http-delivery": "zonemta.plugins.http_delivery",
    "http-auth": "zonemta.plugins.http_auth",
    "header-rules": "zonemta.plugins.header_rules",
}
ROUTE_PREFIX = "/plugin"
EVENT_BUFFER = 10_000


class Plugin(Protocol):
    """What a plugin module provides as ``plugin`` (or names with ``module:attribute``):
    an object (or a class, instantiated without arguments) with ``options``, the attrs
    class of its options, and ``init``."""

    options: type

    async def init(self, app: PluginApp) -> None: ...


@attrs.frozen
class PluginRoute:
    path: str
    endpoint: str
    handler: Callable[..., Awaitable[Any]]
    methods: tuple[str, ...]


@attrs.define
class PluginApp:
    """What a plugin's ``init`` gets: its name and structured options, the relay's config,
    bus and store, the hook registry (append to a list to register a hook) and
    :meth:`add_route`."""

    name: str
    options: Any
    config: Config
    hooks: Hooks
    bus: EventBus
    store: Store
    logger: logging.Logger
    routes: list[PluginRoute] = attrs.field(factory=list)

    def add_route(
        self,
        path: str,
        handler: Callable[..., Awaitable[Any]],
        *,
        methods: Sequence[str] = ("GET",),
    ) -> str:
        """Serve ``handler`` (a Quart view) at ``/plugin/<name>/<path>``; returns the full
        path. The API's token check applies as for every route."""
        full = f"{ROUTE_PREFIX}/{self.name}/{path.lstrip('/')}"
        endpoint = f"plugin_{self.name}_{len(self.routes)}"
        self.routes.append(PluginRoute(full, endpoint, handler, tuple(methods)))
        return full


@attrs.frozen
class LoadedPlugin:
    name: str
    order: int
    plugin: Any
    options: Any


def import_plugin(name: str, module: str) -> Any:
    """The plugin object ``module`` names (built-in name, ``pkg.mod`` or ``pkg.mod:attr``).
    Raises ConfigError naming ``config.plugins.<name>.module``."""
    where = f"config.plugins.{name}.module"
    path, _, attribute = BUILTIN.get(module, module).partition(":")
    try:
        found: Any = importlib.import_module(path)
    except ImportError as exc:
        raise ConfigError("plugins", [f"{where}: cannot import {path!r}: {exc}"]) from exc
    target = getattr(found, attribute or "plugin", None)
    if target is None:
        raise ConfigError("plugins", [f"{where}: {path!r} has no {attribute or 'plugin'!r}"])
    plugin = target() if inspect.isclass(target) else target
    options = getattr(plugin, "options", None)
    if not (inspect.isclass(options) and attrs.has(options)):
        raise ConfigError("plugins", [f"{where}: the plugin's 'options' is no attrs class"])
    if not inspect.iscoroutinefunction(getattr(plugin, "init", None)):
        raise ConfigError("plugins", [f"{where}: the plugin has no 'async def init(app)'"])
    return plugin


def load_plugin(name: str, table: PluginConfig) -> LoadedPlugin:
    """Import the plugin and structure its options. Raises ConfigError."""
    plugin = import_plugin(name, table.module or name)
    try:
        options = converter.structure(dict(table.options), plugin.options)
    except Exception as exc:
        raise ConfigError("plugins", error_lines(exc, f"config.plugins.{name}")) from exc
    return LoadedPlugin(name, table.order, plugin, options)


class PluginHost:
    """Owns the loaded plugins, the hook registry they fill and their routes."""

    def __init__(self, config: Config, hooks: Hooks | None = None) -> None:
        self.config = config
        self.hooks = hooks if hooks is not None else Hooks()
        self.plugins: list[LoadedPlugin] = []
        self.routes: list[PluginRoute] = []

    def load(self) -> None:
        """Import and configure every enabled plugin, in order. Raises ConfigError."""
        enabled = [(t.order, n, t) for n, t in self.config.plugins.items() if t.enabled]
        self.plugins = [load_plugin(name, table) for _, name, table in sorted(enabled)]

    async def start(
        self, bus: EventBus, store: Store, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Run every plugin's ``init`` (an exception there stops the relay from starting),
        then forward bus events to the ``event`` hooks until cancelled."""
        for loaded in self.plugins:
            app = PluginApp(
                loaded.name,
                loaded.options,
                self.config,
                self.hooks,
                bus,
                store,
                logging.getLogger(f"zonemta.plugin.{loaded.name}"),
            )
            await loaded.plugin.init(app)
            self.routes.extend(app.routes)
            log.info("plugin %s loaded", loaded.name)
        if not self.hooks.event:
            task_status.started()
            return
        subscription = bus.subscribe(buffer=EVENT_BUFFER)
        task_status.started()
        try:
            async for event in subscription.receive:
                await run_notices("event", self.hooks.event, event)
        finally:
            subscription.close()
        if subscription.overflowed:
            log.error("event hooks fell %d events behind; they get no more events", EVENT_BUFFER)

    def register_routes(self, app: Any) -> None:
        """Add the plugins' routes to the Quart app (before it serves)."""
        for route in self.routes:
            app.add_url_rule(route.path, route.endpoint, route.handler, methods=route.methods)
