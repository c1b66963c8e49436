"""One websocket connection to the LMTP server: parse frames, run ops on the engine, stream
replies back, and keep a bad request, a slow reader or a disconnect from hurting anyone else.

Stream ids are remapped to session-unique integers before ops reach the engine (clients may
reuse ids or use strings or null; LMQL's server does not care either), and restored on the way
out. Events come from the engine's thread and are handed to the event loop one by one.

Errors for a GENERATE or SCORE stream go out as `TOKEN {stream_id, error}`: LMQL's websocket
client routes MSG only to MODEL_INFO requests, so a MSG error would hang its stream forever.
Errors that belong to no stream (malformed frames) and to MODEL_INFO go out as MSG.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from ..engine.sink import LoopSink
from ..lmtp.messages import (
    BATCH,
    CANCEL,
    GENERATE,
    MSG,
    SCORE,
    TOKEN,
    TOKENIZER,
    ErrorEvent,
    Event,
    Generate,
    ModelInfo,
    Op,
    ProtocolError,
    TokenEvent,
    event_to_wire,
    is_terminal,
    op_from_wire,
    renumbered,
    split_batch,
    split_message,
    ws_frame,
)
from .host import EngineHost, ModelUnavailable, State

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from ..engine.engine import StreamHandle
    from .server import Limits, Stats

log = logging.getLogger("cogql.serve")


@dataclass
class _Stream:
    """A GENERATE or SCORE in flight: what the log line and the id restore need."""

    wire_id: Any
    op: Generate | Any
    kind: str
    started: float
    handle: StreamHandle | None = None
    produced: int = 0
    finish: str | None = None


class Session:
    def __init__(
        self, ws: ServerConnection, host: EngineHost, limits: Limits, stats: Stats
    ) -> None:
        self.ws = ws
        self.host = host
        self.limits = limits
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self._sink = LoopSink(self.loop, self._on_event)  # the engine's events, on this loop
        addr = ws.remote_address
        self.peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self._ids = itertools.count(1)
        self._streams: dict[int, _Stream] = {}
        self._out: deque[str] = deque()
        self._out_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._waiters: set[asyncio.Task[None]] = set()

    # ---- connection lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the client leaves; cancel whatever it left running."""
        writer = asyncio.create_task(self._write_loop())
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    await self.ws.close(1003, "LMTP messages are text frames: TYPE {json}")
                    break
                self._handle(message)
                await self._room.wait()  # back-pressure: stop reading while full
        except ConnectionClosed:
            pass
        finally:
            self._closing = True
            self._cancel_all("client disconnected")
            for task in self._waiters:
                task.cancel()
            writer.cancel()

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._out_ready.wait()
                while self._out:
                    await self.ws.send(self._out.popleft())
                    if not self._room.is_set():
                        self._update_room()
                self._out_ready.clear()
        except ConnectionClosed:
            pass

    def _push(self, frame: str) -> None:
        if self._closing:
            return
        self._out.append(frame)
        self._out_ready.set()
        self.stats.backlog_high = max(self.stats.backlog_high, len(self._out))
        if len(self._out) > self.limits.backlog_close:
            self._closing = True
            self._cancel_all("client is not reading its replies")
            self._out.clear()
            self._room.set()  # let the reader see the close
            log.warning("closing %s: it is not reading its replies", self.peer)
            task = asyncio.ensure_future(self.ws.close(1008, "client is not reading its replies"))
            self._waiters.add(task)
            task.add_done_callback(self._waiters.discard)
        elif len(self._out) >= self.limits.backlog_pause:
            self._room.clear()

    def _update_room(self) -> None:
        if (
            len(self._streams) < self.limits.max_streams_per_connection
            and len(self._out) < self.limits.backlog_pause
        ):
            self._room.set()
        else:
            self._room.clear()

    # ---- inbound ------------------------------------------------------------------------

    def _handle(self, text: str) -> None:
        try:
            kind, body = split_message(text)
            self.stats.frames[kind] += 1
            items = split_batch(body, self.limits.max_batch_ops) if kind == BATCH else None
        except ProtocolError as e:
            self._reply_error(None, str(e), as_msg=True)
            log.info("%s rejected: %s", self.peer, e)
            return
        if kind == CANCEL:
            self._cancel_request(body)
            return
        ops = [op for k, p in items or [(kind, body)] if (op := self._parse(k, p)) is not None]
        for op in ops:
            if isinstance(op, ModelInfo):
                self._model_info(op)
        opened = [op for op in ops if not isinstance(op, ModelInfo)]
        ours = renumbered(opened, lambda: next(self._ids))
        streams = [self._open(op.stream_id, mine) for op, mine in zip(opened, ours, strict=True)]
        if streams:
            self._start(streams)

    def _parse(self, kind: str, payload: Any) -> Op | None:
        try:
            return op_from_wire(kind, payload)
        except ProtocolError as e:
            has_id = isinstance(payload, dict) and "stream_id" in payload
            sid = payload["stream_id"] if has_id else None
            self._reply_error(sid, str(e), as_msg=not (has_id and kind in (GENERATE, SCORE)))
            log.info("%s %s stream=%s rejected: %s", self.peer, kind, sid, e)
            return None

    def _model_info(self, op: ModelInfo) -> None:
        want_tokenizer = op.data.get(TOKENIZER) is True
        try:
            info = self.host.model_info(with_tokenizer=want_tokenizer)
        except ModelUnavailable as e:
            self._reply_error(op.stream_id, str(e), as_msg=True)
            outcome = "error"
        else:
            self._push(ws_frame(MSG, {"stream_id": op.stream_id, "model_info": info}))
            outcome = "loading" if isinstance(info, str) else "ok"
        extra = " +tokenizer" if want_tokenizer else ""
        log.info("%s MODEL_INFO stream=%s %s%s", self.peer, op.stream_id, outcome, extra)

    def _cancel_request(self, body: Any) -> None:
        if not isinstance(body, dict) or "stream_id" not in body:
            self._reply_error(None, "CANCEL needs a stream_id", as_msg=True)
            return
        for st in [s for s in self._streams.values() if s.wire_id == body["stream_id"]]:
            if st.handle is not None:
                st.handle.cancel()
            self._close_stream(st, "cancelled")

    # ---- streams ------------------------------------------------------------------------

    def _open(self, wire_id: Any, op: Op) -> _Stream:
        """Track a stream under our own id `op.stream_id`; `wire_id` is the client's."""
        kind = GENERATE if isinstance(op, Generate) else SCORE
        st = _Stream(wire_id, op, kind, time.perf_counter())
        self._streams[op.stream_id] = st
        self.stats.streams_high = max(self.stats.streams_high, len(self._streams))
        self._update_room()
        return st

    def _start(self, streams: list[_Stream]) -> None:
        if self.host.state is State.LOADING:
            task = asyncio.create_task(self._start_when_loaded(streams))
            self._waiters.add(task)
            task.add_done_callback(self._waiters.discard)
            return
        if self.host.state is State.FAILED:
            for st in streams:
                self._fail(st, self.host.error or "model unavailable")
            return
        assert self.host.engine is not None
        handles = self.host.engine.submit([st.op for st in streams], self._sink)
        for st, handle in zip(streams, handles, strict=True):
            st.handle = handle

    async def _start_when_loaded(self, streams: list[_Stream]) -> None:
        assert self.host.settled is not None
        await self.host.settled.wait()
        live = [st for st in streams if self._streams.get(st.op.stream_id) is st]
        if live:
            self._start(live)

    def _on_event(self, event: Event) -> None:
        st = self._streams.get(event.stream_id)
        if st is None:  # cancelled, or a duplicate after the end
            return
        if isinstance(event, ErrorEvent):
            event = ErrorEvent(event.stream_id, event.error, as_msg=False)
        elif isinstance(event, TokenEvent):
            st.produced += 1
        kind, payload = event_to_wire(event)
        payload["stream_id"] = st.wire_id  # restore the client's id, in place (key order)
        self._push(ws_frame(kind, payload))
        if is_terminal(event):
            outcome = (
                f"error: {event.error}"
                if isinstance(event, ErrorEvent)
                else str(getattr(event, "finish_reason", ""))
            )
            self._close_stream(st, outcome)

    def _fail(self, st: _Stream, message: str) -> None:
        self._reply_error(st.wire_id, message, as_msg=False)
        self._close_stream(st, f"error: {message}")

    def _close_stream(self, st: _Stream, outcome: str) -> None:
        if self._streams.pop(st.op.stream_id, None) is None:
            return
        seconds = time.perf_counter() - st.started
        log.info(
            "%s %s stream=%s prompt=%d tokens=%d %.3fs %s",
            self.peer,
            st.kind,
            st.wire_id,
            len(st.op.prompt),
            st.produced,
            seconds,
            outcome,
        )
        self._update_room()

    def _cancel_all(self, reason: str) -> None:
        for st in list(self._streams.values()):
            if st.handle is not None:
                st.handle.cancel()
            self._close_stream(st, f"cancelled ({reason})")

    def _reply_error(self, stream_id: Any, message: str, *, as_msg: bool) -> None:
        payload = {"stream_id": stream_id, "error": message}
        self._push(ws_frame(MSG if as_msg else TOKEN, payload))
