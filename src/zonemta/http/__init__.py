"""The HTTP adapter: REST API, Prometheus ``/metrics`` and the ``/events`` websocket, a
Quart-trio app served by hypercorn inside the relay's nursery."""

from zonemta.http.context import ApiContext
from zonemta.http.errors import ApiError
from zonemta.http.metrics import Metrics
from zonemta.http.server import ApiServer

__all__ = ["ApiContext", "ApiError", "ApiServer", "Metrics"]
