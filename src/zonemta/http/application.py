"""The Quart-trio application: routes, token auth and JSON errors."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from quart import Response, request, websocket
from quart.json.provider import DefaultJSONProvider
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from zonemta import __version__
from zonemta.http.context import ApiContext
from zonemta.http.errors import ApiError, error_response
from zonemta.http.events import EventStream, subprotocol_authorization
from zonemta.http.metrics import Metrics
from zonemta.http.openapi import openapi_document
from zonemta.http.routes_queue import QueueRoutes
from zonemta.http.routes_send import SendRoutes
from zonemta.http.routes_suppression import SuppressionRoutes
from zonemta.http.routes_suspend import SuspendRoutes
from zonemta.http.routes_ui import UI_PATHS, UiRoutes
from zonemta.http.routes_why import WhyRoutes
from zonemta.http.streaming import ApiRequest, FlowControlledConnection
from zonemta.store import StoreError

log = logging.getLogger(__name__)


def _authorized(token: str, header: str | None) -> bool:
    """Constant-time check of ``Authorization: Bearer <token>``. Compared as bytes: header
    values arrive as latin-1 text, and ``compare_digest`` refuses non-ASCII ``str``."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode("ascii")
    )


def create_app(ctx: ApiContext, metrics: Metrics, events: EventStream) -> Any:
    """The app with every route. Owns nothing that runs; :class:`ApiServer` serves it."""
    api = ctx.config.api
    app = QuartTrio("zonemta.http", static_folder=None)
    app.request_class = ApiRequest
    app.asgi_http_class = FlowControlledConnection
    app.config["MAX_CONTENT_LENGTH"] = int(api.max_send_size)
    app.config["RESPONSE_TIMEOUT"] = None  # /fetch streams large messages
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False
    # The dashboard's files hold no data: public, when the dashboard is served at all.
    public = frozenset(api.public) | (UI_PATHS if api.ui else frozenset())

    def check_token(path: str, header: str | None) -> Response | None:
        if not api.token or path in public or _authorized(api.token, header):
            return None
        return error_response(
            401, "authentication required", headers={"WWW-Authenticate": 'Bearer realm="zonemta"'}
        )

    @app.before_request
    async def authenticate() -> Response | None:
        return check_token(request.path, request.headers.get("Authorization"))

    @app.before_websocket
    async def authenticate_websocket() -> Response | None:
        # A browser cannot set the header: it offers the token as a subprotocol instead.
        header = websocket.headers.get("Authorization") or subprotocol_authorization(
            websocket.requested_subprotocols
        )
        return check_token(websocket.path, header)

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, **exc.extra)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code == 404:
            return error_response(404, f"no such route: {request.method} {request.path}")
        if code == 405:
            return error_response(405, f"method {request.method} not allowed on {request.path}")
        return error_response(code, exc.description or exc.name)

    @app.errorhandler(StoreError)
    async def store_error(exc: StoreError) -> Response:
        log.error("store error in %s %s: %s", request.method, request.path, exc)
        return error_response(503, "the queue store is unavailable; try again later")

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "internal error")

    async def metrics_route() -> Response:
        metrics.set_queue_sizes(await ctx.store.zone_counts(ctx.clock()))
        body, content_type = metrics.render(request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    async def openapi_route() -> Any:
        return openapi_document(__version__)

    app.add_url_rule("/metrics", "metrics", metrics_route, methods=["GET"])
    app.add_url_rule("/openapi.json", "openapi", openapi_route, methods=["GET"])
    QueueRoutes(ctx).register(app)
    SuppressionRoutes(ctx).register(app)
    SuspendRoutes(ctx).register(app)
    WhyRoutes(ctx).register(app)
    SendRoutes(ctx).register(app)
    if api.ui:
        UiRoutes(ctx).register(app)
    events.register(app)
    return app
