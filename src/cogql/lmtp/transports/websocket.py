"""Websocket transport: LMTP to a remote server (`cogql serve-model` or `lmql serve-model`).

One connection per (event loop, endpoint) carries every stream of the process, as LMQL's client
does; a client's stream ids are remapped to connection-unique wire ids, so several clients can
share it. Nothing waits forever: a server that is not there fails the op with "no LMTP server
at ...", a dropped connection fails the streams it carried (the next op reconnects), and a
MODEL_INFO without an answer times out.

cogql's transport extensions (BATCH frames, CANCEL) are used only after the server advertised
them in a MODEL_INFO reply on the current connection; the capabilities are read from replies
passing through, and re-requested after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ...errors import TransportError, retryable_status
from ..messages import (
    MODEL_INFO,
    ErrorEvent,
    InfoEvent,
    Op,
    ProtocolError,
    batch_frame,
    cancel_frame,
    is_terminal,
    op_to_wire,
    parse_server_message,
    renumbered,
    request_frame,
)
from .base import EventCallback, Handle

log = logging.getLogger("cogql.lmtp")

DEFAULT_PORT = 8080  # LMQL's serve-model default
CONNECT_TIMEOUT = 10.0
INFO_TIMEOUT = 10.0  # LMQL waits 5 s; a busy 2-core server deserves a little more
TOKEN_ENV = "COGQL_SERVE_TOKEN"  # the token `cogql serve-model --token` was started with
MAX_REPLY_BYTES = 512 * 2**20  # a tokenizer hand-out can be tens of MB (Gemma: ~33 MB)


class _RedactAuthorization(logging.Filter):
    """websockets logs every handshake header at DEBUG level: never the bearer token."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() == "authorization":
            record.args = (args[0], "[redacted]")
        return True


def redact_authorization(logger: logging.Logger) -> None:
    """Install the redaction on one of websockets' loggers (once)."""
    if not any(isinstance(f, _RedactAuthorization) for f in logger.filters):
        logger.addFilter(_RedactAuthorization())


class EndpointError(TransportError, ValueError):
    """An endpoint string that is not a websocket address."""


class LMTPConnectionError(TransportError, ConnectionError):
    """The server cannot be reached, or the connection dropped; the message names the URL.
    Retryable, unless the server answered the handshake with a status that says otherwise."""

    retryable = True


def endpoint_url(endpoint: str) -> str:
    """`host:port`, `ws://host:port`, `wss://...`, `lmtp://host:port`, `lmtp:host:port` or
    LMQL's `http://host:port` → `ws[s]://host:port/path` (port 8080 when omitted)."""
    raw = endpoint.strip()
    for prefix in ("lmtp://", "lmtp:"):
        if raw.startswith(prefix):
            raw = raw[len(prefix) :]
            break
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "ws", raw
    schemes = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
    if scheme.lower() not in schemes:
        raise EndpointError(f"endpoint {endpoint!r}: expected host:port, ws://host:port or lmtp:")
    scheme = schemes[scheme.lower()]
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise EndpointError(f"endpoint {endpoint!r}: {e}") from None
    if not parts.hostname:
        raise EndpointError(f"endpoint {endpoint!r} names no host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{scheme}://{host}:{port}{parts.path or '/'}"


@dataclass
class _Route:
    stream_id: Any  # the client's id, restored on every event
    on_event: EventCallback
    sent: bool = False
    timer: asyncio.TimerHandle | None = None


class _EndpointSocket:
    """The shared connection to one endpoint on one event loop."""

    def __init__(
        self, url: str, *, connect_timeout: float, info_timeout: float, token: str | None = None
    ) -> None:
        self.url = url
        self._token = token
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.info_timeout = info_timeout
        self.capabilities: frozenset[str] = frozenset()
        self._ids = itertools.count(1)
        self._routes: dict[int, _Route] = {}
        self._outbox: deque[tuple[str, list[int]]] = deque()
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()

    # ---- sending ------------------------------------------------------------------------

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Handle]:
        items: list[tuple[str, dict[str, Any]]] = []
        wire_ids: list[int] = []
        for op, sent in zip(ops, renumbered(ops, self._ids.__next__), strict=True):
            wire_id = sent.stream_id
            route = _Route(op.stream_id, on_event)
            self._routes[wire_id] = route
            kind, payload = op_to_wire(sent)
            if kind == MODEL_INFO:
                _last_info[self.url] = {**payload, "data": {}}  # never the tokenizer again
                route.timer = self.loop.call_later(self.info_timeout, self._expire, wire_id)
            items.append((kind, payload))
            wire_ids.append(wire_id)
        if len(items) > 1 and "batch" in self.capabilities:
            self._outbox.append((batch_frame(items), wire_ids))
        else:
            pairs = zip(items, wire_ids, strict=True)
            self._outbox.extend((request_frame(k, p), [w]) for (k, p), w in pairs)
        self._kick()
        return [Handle(functools.partial(self.cancel, w)) for w in wire_ids]

    def cancel(self, wire_id: int) -> None:
        route = self._routes.pop(wire_id, None)
        if route is None:
            return
        if route.timer is not None:
            route.timer.cancel()
        if route.sent and "cancel" in self.capabilities and self._ws is not None:
            self._outbox.append((cancel_frame(wire_id), []))
            self._kick()

    def _kick(self) -> None:
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = self.loop.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    await self._send_next()
        except asyncio.CancelledError:
            self._abort()
            raise

    async def _send_next(self) -> None:
        try:
            ws = await self.connected()
        except LMTPConnectionError as e:
            self._outbox.clear()
            self._fail(list(self._routes), str(e), retryable=e.retryable)
            return
        frame, wire_ids = self._outbox[0]  # read after connecting: a probe may lead now
        if wire_ids and not any(w in self._routes for w in wire_ids):
            self._outbox.popleft()  # every stream in it was cancelled before it left
            return
        try:
            await ws.send(frame)
        except ConnectionClosed:
            # not sent: it goes out on the next connection; the reader fails what was sent
            if self._ws is ws:
                self._ws = None
            return
        self._outbox.popleft()
        for w in wire_ids:
            if w in self._routes:
                self._routes[w].sent = True

    async def connected(self) -> ClientConnection:
        """The live connection, (re)connecting if needed; raises LMTPConnectionError."""
        async with self._connect_lock:
            if self._ws is None:
                self._ws = await self._open()
            return self._ws

    async def _open(self) -> ClientConnection:
        headers = None
        if self._token:
            headers = {"Authorization": f"Bearer {self._token}"}
            redact_authorization(logging.getLogger("websockets.client"))
            if self.url.startswith("ws://") and not _is_local(self.url):
                log.warning("sending the token to %s unencrypted: prefer wss://", self.url)
        try:
            ws = await connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.connect_timeout,
                max_size=MAX_REPLY_BYTES,
                compression=None,
                proxy=None,
                # pings keep idle connections open through middleboxes, but never time out:
                # a server at its stream cap stops reading (pongs included) on purpose
                ping_timeout=None,
            )
        except InvalidStatus as e:  # a server that answered, and refused: say why
            raise LMTPConnectionError(
                f"LMTP server at {self.url} refused the connection: {_refusal(e)}",
                retryable=retryable_status(e.response.status_code),
            ) from None
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as e:
            raise LMTPConnectionError(f"no LMTP server at {self.url}: {_reason(e)}") from None
        self.capabilities = frozenset()
        self._reader = self.loop.create_task(self._read_loop(ws))
        last = _last_info.get(self.url)
        if last is not None:  # learn the capabilities of this (maybe new) server again
            probe = next(self._ids)
            self._routes[probe] = _Route(None, lambda _event: None, sent=True)
            payload = {**last, "stream_id": probe}
            self._outbox.appendleft((request_frame(MODEL_INFO, payload), [probe]))
        return ws

    # ---- receiving ----------------------------------------------------------------------

    async def _read_loop(self, ws: ClientConnection) -> None:
        reason = "closed by the server"
        try:
            async for message in ws:
                if isinstance(message, str):
                    self._dispatch(message)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            self._abort()
            raise
        finally:
            if ws.close_code is not None:
                reason = f"closed with code {ws.close_code}"
                reason += f" ({ws.close_reason})" if ws.close_reason else ""
            if self._ws is ws:
                self._ws = None
            sent = [w for w, r in self._routes.items() if r.sent]
            lost = f"connection to LMTP server at {self.url} lost ({reason})"
            self._fail(sent, lost, retryable=True)

    def _dispatch(self, message: str) -> None:
        try:
            events = parse_server_message(message)
        except ProtocolError as e:
            log.warning("LMTP server at %s sent a malformed message: %s", self.url, e)
            return
        for event in events:
            route = self._routes.get(event.stream_id)
            if route is None:
                if isinstance(event, ErrorEvent) and event.stream_id is None:
                    log.warning("LMTP server at %s: %s", self.url, event.error)
                continue  # a duplicate after the end, or a stream the client cancelled
            if isinstance(event, InfoEvent) and isinstance(event.model_info, dict):
                self.capabilities = frozenset(event.model_info.get("capabilities", ()))
            if is_terminal(event):
                self._routes.pop(event.stream_id, None)
                if route.timer is not None:
                    route.timer.cancel()
            event.stream_id = route.stream_id
            route.on_event(event)

    def _expire(self, wire_id: int) -> None:
        self._fail(
            [wire_id],
            f"LMTP server at {self.url} did not answer MODEL_INFO within {self.info_timeout:g} s",
            retryable=True,
        )

    def _fail(self, wire_ids: list[int], message: str, *, retryable: bool = False) -> None:
        for w in wire_ids:
            route = self._routes.pop(w, None)
            if route is None:
                continue
            if route.timer is not None:
                route.timer.cancel()
            route.on_event(ErrorEvent(route.stream_id, message, as_msg=False, retryable=retryable))

    def _abort(self) -> None:
        """The event loop is shutting down: drop the socket without a closing handshake."""
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.transport.abort()

    async def close(self) -> None:
        for task in (self._writer, self._reader):
            if task is not None:
                task.cancel()
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        self._fail(list(self._routes), f"connection to LMTP server at {self.url} closed")


def _is_local(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reason(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, TimeoutError):
        return "timed out opening the connection"
    return str(e) or type(e).__name__


def _refusal(e: InvalidStatus) -> str:
    response = e.response
    body = bytes(response.body or b"").decode("utf-8", "replace").strip()
    return f"HTTP {response.status_code}" + (f": {body[:300]}" if body else "")


_connections: dict[tuple[int, str, str | None], _EndpointSocket] = {}
# the last MODEL_INFO a client sent per URL, with the model name it chose: a new connection
# (reconnect, or a new event loop) repeats it to learn the server's capabilities
_last_info: dict[str, dict[str, Any]] = {}


def _connection(
    url: str, *, connect_timeout: float, info_timeout: float, token: str | None
) -> _EndpointSocket:
    """The process's connection to `url` with `token` for the running loop; closed loops'
    are dropped."""
    loop = asyncio.get_running_loop()
    for key in [k for k, c in _connections.items() if c.loop.is_closed()]:
        del _connections[key]
    key = (id(loop), url, token)
    conn = _connections.get(key)
    if conn is None or conn.loop is not loop:
        conn = _EndpointSocket(
            url, connect_timeout=connect_timeout, info_timeout=info_timeout, token=token
        )
        _connections[key] = conn
    return conn


async def close_connections() -> None:
    """Close this loop's connections (their streams fail); for tests and clean shutdowns."""
    loop = asyncio.get_running_loop()
    for key in [k for k, c in _connections.items() if c.loop is loop]:
        await _connections.pop(key).close()


class WebSocketTransport:
    """The Transport for one endpoint; instances for the same endpoint share one connection."""

    def __init__(
        self,
        endpoint: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        info_timeout: float = INFO_TIMEOUT,
        token: str | None = None,
    ) -> None:
        """`token` (default: $COGQL_SERVE_TOKEN) is sent as `Authorization: Bearer` to a
        server started with one; wss:// endpoints verify the server's certificate against the
        system's CAs (SSL_CERT_FILE names another bundle)."""
        self.url = endpoint_url(endpoint)
        self.connect_timeout = connect_timeout
        self.info_timeout = info_timeout
        self._token = token or os.environ.get(TOKEN_ENV) or None

    def __repr__(self) -> str:  # never the token
        return f"WebSocketTransport({self.url!r})"

    def _conn(self) -> _EndpointSocket:
        return _connection(
            self.url,
            connect_timeout=self.connect_timeout,
            info_timeout=self.info_timeout,
            token=self._token,
        )

    async def open(self) -> None:
        """Connect now, so that a wrong endpoint fails here with a clear error."""
        await self._conn().connected()

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Handle]:
        return self._conn().send(ops, on_event)

    @property
    def capabilities(self) -> frozenset[str]:
        return self._conn().capabilities

    async def close(self) -> None:
        """The connection is shared by the process; it closes with its event loop."""
        return None


__all__ = [
    "EndpointError",
    "LMTPConnectionError",
    "WebSocketTransport",
    "close_connections",
    "endpoint_url",
]
