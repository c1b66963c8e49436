"""`cogql serve-model`: an engine behind a websocket server speaking LMTP exactly as LMQL 0.7.

One engine serves every connection; the engine interleaves their streams token by token, so a
long GENERATE never blocks another client's SCORE. The server listens before the model has
loaded (MODEL_INFO answers `"<unavailable>"`, streams wait), and a failed load is answered as
an error on every op rather than a hang.

Access: browser origins are refused unless allowed, an optional bearer token is checked at
the handshake, TLS is optional. Limits keep a flood, an idle crowd or a client that stops
reading from growing memory or the log: see `Limits`.
"""

from __future__ import annotations

import asyncio
import http
import logging
import signal
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from ..lmtp.transports.websocket import redact_authorization
from .access import AccessPolicy, Refusal, exposure_warning
from .host import EngineHost, State
from .limits import Limits, Stats
from .logs import REPEATS
from .memory import map_large_buffers, release_free_memory
from .session import Session

if TYPE_CHECKING:
    from ..engine.protocol import LMTPEngine

IDLE_TRIM_DELAY_S = 2.0  # the engine drops a closed connection's streams within a step
log = logging.getLogger("cogql.serve")


class LMTPServer:
    """The websocket server; `start()` returns once it listens (the model may still load)."""

    def __init__(
        self,
        model: LMTPEngine | Callable[[], LMTPEngine],
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        limits: Limits | None = None,
        owns_engine: bool | None = None,
        access: AccessPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`model` is a running engine (shared; not closed on stop unless `owns_engine`) or a
        factory that builds one (run in the background; closed on stop)."""
        owns = not hasattr(model, "submit")  # a factory, not an engine
        self.engine_host = EngineHost(
            model, owns_engine=owns if owns_engine is None else owns_engine
        )
        self.host = host
        self.port = port
        self.limits = limits or Limits()
        self.access = access or AccessPolicy()
        self.ssl_context = ssl_context
        self.stats: Stats[Session] = Stats()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{host}:{self.port}/"

    async def start(self) -> None:
        redact_authorization(logging.getLogger("websockets.server"))
        map_large_buffers()
        self.engine_host.start()
        self._server = await serve(
            self._serve_connection,
            self.host,
            self.port,
            max_size=self.limits.max_frame_bytes,
            compression=None,  # token frames are ~150 bytes: deflate costs more than it saves
            close_timeout=2,  # on shutdown, a client that does not answer the close is dropped
            # the server sends no keepalive pings (LMQL's sends none either); it answers the
            # client's, as it always reads
            ping_interval=None,
            max_queue=8,  # frames read ahead per connection
            process_request=self._admit,
            ssl=self.ssl_context,
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        addresses = [sock.getsockname()[0] for sock in self._server.sockets]
        warning = exposure_warning(
            addresses, token=self.access.token is not None, tls=self.ssl_context is not None
        )
        if warning:
            log.warning("%s", warning)

    async def _serve_connection(self, ws: ServerConnection) -> None:
        session = Session(ws, self.engine_host, self.limits, self.stats)
        self.stats.connections += 1
        self.stats.sessions.add(session)
        try:
            await session.run()
        finally:
            self.stats.sessions.discard(session)
            if not self.stats.sessions:
                asyncio.get_running_loop().call_later(IDLE_TRIM_DELAY_S, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        """Once no client is left (and the engine has dropped their streams), give freed
        memory back, off the loop."""
        if not self.stats.sessions:
            asyncio.get_running_loop().run_in_executor(None, release_free_memory)

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the handshake: browser origins and the token, then the status page for a
        plain GET (no websocket upgrade), then the connection cap."""
        headers = request.headers
        refusal = self.access.check(headers.get("Origin"), headers.get("Authorization"))
        if refusal is None and "upgrade" not in headers.get("Connection", "").lower():
            healthy, state = self.engine_host.health()
            status = http.HTTPStatus.OK if healthy else http.HTTPStatus.SERVICE_UNAVAILABLE
            return connection.respond(status, f"cogql LMTP server: model {state}\n")
        if refusal is None and len(self.stats.sessions) >= self.limits.max_connections:
            refusal = Refusal(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"this LMTP server holds its maximum of {self.limits.max_connections} "
                "connections (--max-connections); try again later",
            )
        if refusal is None:
            return None
        self.stats.refused[refusal.status] += 1
        peer = connection.remote_address
        log.info("refused %s: HTTP %d", peer[0] if peer else "?", refusal.status, extra=REPEATS)
        response = connection.respond(refusal.status, refusal.text + "\n")
        if refusal.status == http.HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Bearer realm="cogql"'
        return response

    async def stop(self) -> None:
        """Close every connection (code 1001), cancel their streams, then stop the engine."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await asyncio.to_thread(self.engine_host.close)


async def serve_until_signalled(server: LMTPServer, *, stop_on_failure: bool = False) -> str | None:
    """Run until SIGINT or SIGTERM, then stop cleanly; a second signal falls back to the
    default handling, for a stop that takes too long. With `stop_on_failure`, a failed model
    load stops the server too, and its reason is returned (None after a signal)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    log.info("LMTP server listening on %s (loading the model)", server.url)
    failure = await _wait_for_stop(server, stop, stop_on_failure)
    for sig in signals:
        loop.remove_signal_handler(sig)
    log.info("stopping: closing connections and the engine")
    await server.stop()
    log.info("stopped")
    return failure


async def _wait_for_stop(server: LMTPServer, stop: asyncio.Event, on_failure: bool) -> str | None:
    """Until a signal, or (`on_failure`) until the model's load has failed: its reason."""
    host = server.engine_host
    if on_failure and host.settled is not None:
        signalled = asyncio.ensure_future(stop.wait())
        settled = asyncio.ensure_future(host.settled.wait())
        await asyncio.wait({signalled, settled}, return_when=asyncio.FIRST_COMPLETED)
        settled.cancel()
        if not stop.is_set() and host.state is State.FAILED:
            signalled.cancel()
            return host.error
        await signalled
    await stop.wait()
    return None


class BackgroundServer:
    """An LMTPServer on its own thread and event loop, for tests and benchmarks that need a
    real server next to synchronous code (`with BackgroundServer(engine, port=0) as s:`)."""

    def __init__(self, model: LMTPEngine | Callable[[], LMTPEngine], **kwargs: Any) -> None:
        kwargs.setdefault("port", 0)
        self.server = LMTPServer(model, **kwargs)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def endpoint(self) -> str:
        return f"{self.server.host}:{self.server.port}"

    def start(self, timeout: float = 30) -> BackgroundServer:
        started: Future[None] = Future()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.server.start()
            except BaseException as e:
                started.set_exception(e)
                return
            started.set_result(None)
            await self._stop.wait()
            await self.server.stop()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self._thread.start()
        started.result(timeout)
        return self

    def stop(self, timeout: float = 30) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def call(self, fn: Callable[[], Any], timeout: float = 10) -> Any:
        """Run `fn` on the server's loop (to read its state without racing it)."""
        assert self._loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
