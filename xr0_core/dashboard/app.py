"""The dashboard's web application (Starlette): one page, its state as JSON, the state pushed as server-sent
events, and the static files it needs (its script and style, and plotly.js from the installed ``plotly``
package: nothing is fetched from a CDN).

Routes, all ``GET`` (anything else is 405: the dashboard cannot change a run or a site)::

    /                 the page (``static/index.html``; the script draws it from the state)
    /api/state        the current state (JSON)
    /api/events       server-sent events: ``state`` whenever the files change, ``tick`` every 15 s
    /static/<file>    dashboard.js, dashboard.css, plotly.min.js (a fixed list: no other file is served)

With a token (any address other than loopback; :mod:`.serve`), every request needs it: ``?token=`` on the
first page load (answered with an HttpOnly cookie and a redirect that drops it from the address bar), the
cookie afterwards, or ``Authorization: Bearer <token>``. Without a token the app only answers requests whose
``Host`` is a loopback name, so a web page elsewhere cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
import time
from pathlib import Path
from typing import Any, Protocol

from xr0_core.dashboard.jsonsafe import dumps

STATIC = Path(__file__).with_name("static")
COOKIE = "xr0_dashboard"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TICK_SECONDS = 15.0
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
# plotly.js sets inline styles on the elements it draws, hence style-src 'unsafe-inline'; scripts are only
# the two files below.


class DashboardError(RuntimeError):
    """The dashboard cannot start (plotly.js missing, a bad address); the message says what to do."""


class View(Protocol):
    kind: str

    def state(self) -> dict[str, Any]: ...


def plotly_js() -> Path:
    """``plotly.min.js`` as shipped inside the installed ``plotly`` Python package (no import of plotly)."""
    spec = importlib.util.find_spec("plotly")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    raise DashboardError("plotly.js not found: the dashboard draws its charts with the plotly.min.js that the "
                         "`plotly` package ships; install it with `pip install plotly` (a declared dependency)")


class Feed:
    """The state of one view as JSON text, re-serialised only when the view's version changes (every client
    of the page shares it)."""

    def __init__(self, view: View) -> None:
        self.view = view
        self._version: Any = None
        self._text = ""

    def current(self) -> tuple[Any, str]:
        state = self.view.state()
        if state.get("version") != self._version:
            self._text = dumps(state)
            self._version = state.get("version")
        return self._version, self._text


def build_app(view: View, *, token: str | None = None, poll: float = 1.0, allowed_hosts: tuple[str, ...] = ()):
    """The Starlette app serving ``view``.

    Parameters
    ----------
    view : RunView | SiteView
    token : str, optional
        Required on every request when given (see the module docstring).
    poll : float
        Seconds between checks of the view's files for the live stream.
    allowed_hosts : tuple of str
        ``Host`` names accepted without a token (loopback names by default).
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    if poll <= 0:
        raise DashboardError(f"--poll must be a positive number of seconds, got {poll}")
    feed = Feed(view)
    files = {"dashboard.js": STATIC / "dashboard.js", "dashboard.css": STATIC / "dashboard.css",
             "plotly.min.js": plotly_js()}
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
    page = (STATIC / "index.html").read_text().replace("{{KIND}}", view.kind)
    hosts = set(allowed_hosts or LOOPBACK_HOSTS)

    async def index(request: Request) -> Response:
        if token and request.query_params.get("token"):  # first visit through the printed URL (Guard checked it)
            resp = RedirectResponse("./", status_code=303)
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return resp
        return Response(page, media_type="text/html; charset=utf-8")

    async def state(request: Request) -> Response:
        _, text = await run_in_threadpool(feed.current)
        return Response(text, media_type="application/json")

    async def events(request: Request) -> Response:
        async def stream():
            sent: Any = object()
            quiet = 0.0
            yield "retry: 3000\n\n"
            while True:
                version, text = await run_in_threadpool(feed.current)
                if version != sent:
                    sent, quiet = version, 0.0
                    yield f"event: state\ndata: {{\"now\":{time.time():.3f},\"state\":{text}}}\n\n"
                elif quiet >= TICK_SECONDS:  # keeps proxies from closing an idle stream; updates the clock
                    quiet = 0.0
                    yield f"event: tick\ndata: {{\"now\":{time.time():.3f}}}\n\n"
                await asyncio.sleep(poll)
                quiet += poll

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:
            return PlainTextResponse("not found", status_code=404)
        path = files[name]
        return FileResponse(path, media_type=types.get(path.suffix, "application/octet-stream"),
                            headers={"Cache-Control": "max-age=3600"})

    class Guard:
        """Token or loopback ``Host`` check, and the security headers, on every HTTP request (ASGI
        middleware rather than Starlette's ``BaseHTTPMiddleware``, which buffers streamed responses)."""

        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            request = Request(scope)
            denied = self.denied(request)
            if denied is not None:
                return await denied(scope, receive, send)

            async def send_with_headers(message) -> None:
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", []))
                    headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                                (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
                    if not scope["path"].startswith("/static/"):
                        headers.append((b"cache-control", b"no-store"))
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, send_with_headers)

        @staticmethod
        def denied(request: Request) -> Response | None:
            if token:
                given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
                auth = request.headers.get("authorization", "")
                if auth.lower().startswith("bearer "):
                    given = auth[7:].strip()
                if not secrets.compare_digest(given.encode(), token.encode()):
                    return PlainTextResponse("this dashboard needs its token: open the URL that `xr0 dashboard` "
                                             "printed (it ends in ?token=...)", status_code=401)
                return None
            host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
            if host not in hosts:
                return PlainTextResponse(f"host {host!r} not allowed: open the dashboard at 127.0.0.1 (it binds "
                                         "there), or serve it with --host and its token", status_code=421)
            return None

    routes = [Route("/", index, methods=["GET"]), Route("/api/state", state, methods=["GET"]),
              Route("/api/events", events, methods=["GET"]), Route("/static/{name}", static, methods=["GET"])]
    return Starlette(routes=routes, middleware=[Middleware(Guard)])
