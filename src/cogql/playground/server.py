"""The playground's HTTP app (starlette, as the Replicate emulator) and its server on loopback.

Routes: `/` the page, `/static/NAME` its assets (only the files in static/), `POST /api/check`
a query's inputs or its compile error, `/ws` the websocket a run goes over. Every request goes
through `Access` first (token, Host, Origin), and answers 403 when refused (a websocket is
closed before it opens, which the server answers with 403 too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import DeployError
from ..http_thread import ServedInThread, listening_socket, why_not_listening
from .access import TOKEN_PARAM, Access
from .models import SUGGESTED
from .session import QuerySession, RunRequest, RunRequestError, check

STATIC = resources.files("cogql.playground") / "static"
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # a query is at most 1 MiB, as a query file
STARTUP_TIMEOUT_S = 30.0
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


class PlaygroundError(DeployError, RuntimeError):
    """The playground could not start (e.g. its port is taken): a hosting error, as the
    emulator's."""


class _Guard:
    """Refuses every request `Access` does not allow, before any route sees it."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        request = Request(scope) if scope["type"] == "http" else WebSocket(scope, receive, send)
        why = self.access.refusal(request.headers, request.query_params)
        if why is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": why})
            return None
        response = PlainTextResponse(f"forbidden: {why}\n", status_code=403, headers=HEADERS)
        return await response(scope, receive, send)


def build_app(access: Access, source: str = "", model: str = "") -> ASGIApp:
    """The app; `source` and `model` fill the editor and the model field at first."""

    async def page(request: Request) -> Response:
        initial = {"source": source, "model": model, "models": list(SUGGESTED),
                   "token": access.token}  # fmt: skip
        # a JSON data block: `</` escaped so that no text in it can close the script element
        data = json.dumps(initial).replace("</", "<\\/")
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        html = html.replace("{{TOKEN}}", access.token).replace("{{INITIAL}}", data)
        csp = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               f"connect-src 'self' {' '.join('ws://' + h for h in access.hosts)}; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip
        return HTMLResponse(html, headers={**HEADERS, "Content-Security-Policy": csp})

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return PlainTextResponse("not found\n", status_code=404, headers=HEADERS)
        body = (STATIC / name).read_bytes()
        return Response(body, media_type=ASSETS[name], headers=HEADERS)

    async def check_source(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_MESSAGE_BYTES:
            return JSONResponse({"ok": False, "error": "query too large"}, 413, headers=HEADERS)
        try:
            source = json.loads(body)["source"]
            if not isinstance(source, str):
                raise TypeError("source is not a string")
        except (ValueError, KeyError, TypeError) as e:
            return JSONResponse({"ok": False, "error": f"bad request: {e}"}, 400, headers=HEADERS)
        return JSONResponse(check(source), headers=HEADERS)

    async def runs(ws: WebSocket) -> None:
        await ws.accept()
        session = QuerySession(_sender(ws))
        try:
            while True:
                await _handle(session, await ws.receive_text())
        except WebSocketDisconnect:
            pass
        finally:
            await session.stop()  # the page went away: its query and model calls too

    routes = [
        Route("/", page),
        Route("/static/{name}", asset),
        Route("/api/check", check_source, methods=["POST"]),
        WebSocketRoute("/ws", runs),
    ]
    return _Guard(Starlette(routes=routes), access)


def _sender(ws: WebSocket) -> Any:
    lock = asyncio.Lock()

    async def send(message: dict[str, Any]) -> None:
        async with lock:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # the page closed
                await ws.send_text(json.dumps(message))

    return send


async def _handle(session: QuerySession, text: str) -> None:
    if len(text) > MAX_MESSAGE_BYTES:
        await session.send({"type": "error", "message": "message too large", "family": "other"})
        return
    try:
        message = json.loads(text)
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "run":
            await session.start(RunRequest.parse(message))
        elif kind == "stop":
            await session.stop()
            await session.send({"type": "idle"})
        else:
            raise RunRequestError(f"unknown message type {kind!r} (run or stop)")
    except (ValueError, RunRequestError) as e:
        await session.send({"type": "error", "message": str(e), "family": "other"})


class Playground:
    """The app on `host:port` (0: a free port), served from a thread with its own event loop:

    with Playground(source, port=0) as pg:
        pg.url    # http://127.0.0.1:PORT/?token=...
    """

    def __init__(self, source: str = "", *, model: str = "", host: str = "127.0.0.1",
                 port: int = 0, token: str | None = None) -> None:  # fmt: skip
        self.access = Access(host=host, port=port)
        if token is not None:
            self.access.token = token
        self.source = source
        self.model = model
        self._http: ServedInThread | None = None

    @property
    def url(self) -> str:
        host = self.access.host if ":" not in self.access.host else f"[{self.access.host}]"
        return f"http://{host}:{self.access.port}/?{TOKEN_PARAM}={self.access.token}"

    def start(self) -> Playground:
        host, port = self.access.host, self.access.port
        try:
            sock = listening_socket(host, port)
        except OSError as e:
            raise PlaygroundError(why_not_listening(host, port, e)) from None
        self.access.port = sock.getsockname()[1]
        app = build_app(self.access, self.source, self.model)
        self._http = ServedInThread(app, sock, name="cogql-playground", lifespan="off",
                                    ws_max_size=MAX_MESSAGE_BYTES, timeout_graceful_shutdown=2)  # fmt: skip
        if not self._http.start(STARTUP_TIMEOUT_S):
            raise PlaygroundError(f"the playground did not start: {self._http.failure!r}")
        return self

    def wait(self) -> None:
        """Until the server ends (it ends on `stop`)."""
        if self._http is not None:
            self._http.wait()

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
        self._http = None

    def __enter__(self) -> Playground:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
