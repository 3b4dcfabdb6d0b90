"""``/ui``: the web dashboard, static files shipped in ``zonemta/http/ui/``.

The files hold no data and no secret: the page asks for the API token and reads everything
through the API's own (protected) routes, so the files themselves are served without the
token (a browser cannot attach ``Authorization`` to a page load). Only the exact paths in
:data:`UI_PATHS` are public; ``/ui/settings.json`` tells the page whether a token is needed.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from quart import Response, redirect

from zonemta.http.context import ApiContext
from zonemta.http.errors import ApiError

#: The shipped files and their content types.
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "prometheus.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: Paths served without the token: the redirect, the page, its files and its settings.
UI_PATHS = frozenset({"/ui", "/ui/", "/ui/settings.json", *(f"/ui/{name}" for name in UI_FILES)})
#: Same-origin only: no inline script, no other host (the websocket is same-origin too).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def ui_file(name: str) -> bytes:
    """One shipped file. Raises :class:`ApiError` (404) for any other name."""
    if name not in UI_FILES:
        raise ApiError(404, f"no such dashboard file: {name!r}")
    return resources.files("zonemta.http").joinpath("ui", name).read_bytes()


class UiRoutes:
    """The dashboard's files; :meth:`register` adds them to the app."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def register(self, app: Any) -> None:
        app.add_url_rule("/ui", "ui_root", self.root, methods=["GET"])
        app.add_url_rule("/ui/", "ui_index", self.index, methods=["GET"])
        app.add_url_rule("/ui/settings.json", "ui_settings", self.settings, methods=["GET"])
        app.add_url_rule("/ui/<name>", "ui_file", self.file, methods=["GET"])

    async def root(self) -> Any:
        """``/ui`` → ``/ui/``, so the page's relative URLs resolve under it."""
        return redirect("ui/", 308)

    async def index(self) -> Response:
        return self._serve("index.html")

    async def file(self, name: str) -> Response:
        return self._serve(name)

    async def settings(self) -> Any:
        """What the page needs before it has a token: whether it needs one."""
        return {"token_required": bool(self.ctx.config.api.token)}

    @staticmethod
    def _serve(name: str) -> Response:
        body = ui_file(name)
        return Response(body, content_type=UI_FILES[name], headers=_HEADERS)
