"""One log line per request to the emulator's API, as an ASGI wrapper around its app.

A pure ASGI wrapper rather than a Starlette middleware, so that event streams pass through
untouched; the line is written when the response ends (for a stream: when it closes), with
the time taken and the prediction's id where the request has one: in its path, or, for a
create, in the `Location` of its answer.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...serve.logs import printable  # a client's text escaped: a `%0A` never makes a line

log = logging.getLogger("cogql.replicate.emulator")

MAX_PATH_SHOWN = 2000
_PREDICTION_PATH = re.compile(r"/v1/predictions/([^/?#]+)")


class AccessLog:
    """Logs `METHOD PATH STATUS MS ms [prediction=ID]` at INFO for every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        path = printable(scope.get("path", ""), limit=MAX_PATH_SHOWN)
        seen: dict[str, Any] = {"status": None, "location": None}

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for key, value in message.get("headers", []):
                    if key.lower() == b"location":
                        seen["location"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, watching)
        finally:
            log.info("%s", request_line(scope.get("method", "?"), path, seen, started))


def request_line(method: str, path: str, seen: dict[str, Any], started: float) -> str:
    """The log line; a request that ended before any answer (the client left, a crash) shows
    status `-`."""
    status = "-" if seen["status"] is None else str(seen["status"])
    ms = (time.monotonic() - started) * 1000
    line = f"{method} {path} {status} {ms:.0f} ms"
    found = _PREDICTION_PATH.search(seen["location"] or path)
    return line + (f" prediction={found.group(1)}" if found else "")
