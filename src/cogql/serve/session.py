"""One websocket connection to the LMTP server: parse frames, run ops on the engine, stream
replies back, and keep a bad request, a flood, a slow reader or a disconnect from hurting anyone
else.

Stream ids are remapped to session-unique integers before ops reach the engine (clients may
reuse ids or use strings or null; LMQL's server does not care either), and restored on the way
out. Events come from the engine's thread and are handed to the event loop one by one.

The connection is always read, so pings are always answered: ops beyond the running-stream cap
wait in a bounded queue and start as streams end; ops beyond the queue get an error naming the
limit. Unsent replies are bounded in bytes; a client that lets them pile up is disconnected.

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
    Score,
    TokenEvent,
    event_to_wire,
    finite_event,
    is_terminal,
    misplaced_after,
    op_from_wire,
    renumbered,
    show_id,
    split_batch,
    split_message,
    strict_json,
    ws_frame,
)
from .host import EngineHost, ModelUnavailable, State
from .limits import Limits, Stats
from .logs import REPEATS, printable

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from ..engine.protocol import StreamHandle

log = logging.getLogger("cogql.serve")

Group = list[tuple[Any, Generate | Score]]  # (client's id, op under our id): sent together


@dataclass
class _Stream:
    """A GENERATE or SCORE in flight: what the log line and the id restore need."""

    wire_id: Any
    op: Generate | Score
    kind: str
    started: float
    handle: StreamHandle | None = None
    produced: int = 0


class Session:
    def __init__(
        self, ws: ServerConnection, host: EngineHost, limits: Limits, stats: Stats[Session]
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
        self._queue: deque[Group] = deque()
        self.queued_ops = 0
        self.queued_tokens = 0
        self._out: deque[str] = deque()
        self.out_bytes = 0  # unsent reply bytes, the frame being sent included
        self._out_ready = asyncio.Event()
        self._last_active = self.loop.time()
        self._closing = False
        self._waiters: set[asyncio.Task[None]] = set()

    # ---- connection lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the client leaves; cancel whatever it left running."""
        tasks = [asyncio.create_task(self._write_loop())]
        if self.limits.idle_timeout:
            tasks.append(asyncio.create_task(self._idle_watch()))
        try:
            async for message in self.ws:
                self._last_active = self.loop.time()
                if isinstance(message, bytes):
                    await self.ws.close(1003, "LMTP messages are text frames: TYPE {json}")
                    break
                self._handle(message)
        except ConnectionClosed:
            pass
        finally:
            self._shut("client disconnected")
            for task in [*self._waiters, *tasks]:
                task.cancel()

    def _shut(self, reason: str) -> None:
        """Stop everything this connection holds and drop its unsent replies."""
        self._closing = True
        self._queue.clear()
        self.queued_ops = self.queued_tokens = 0
        self._cancel_all(reason)
        self._out.clear()
        self.out_bytes = 0

    def _close(self, code: int, reason: str) -> None:
        """Close from inside a synchronous handler (the close handshake runs as a task)."""
        task = asyncio.ensure_future(self.ws.close(code, reason))
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)

    async def _idle_watch(self) -> None:
        """Close a connection that holds no streams and sent nothing for `idle_timeout`
        (pings do not count: a client that only pings is still idle)."""
        timeout = self.limits.idle_timeout
        while True:
            wait = self._last_active + timeout - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif self._streams or self._queue:
                self._last_active = self.loop.time()
            else:
                log.info("closing %s: idle for %g s", self.peer, timeout, extra=REPEATS)
                self.stats.closed["idle"] += 1
                await self.ws.close(1000, f"idle for {timeout:g} s (no streams, no frames)")
                return

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._out_ready.wait()
                while self._out:
                    frame = self._out.popleft()
                    await self.ws.send(frame)
                    if not self._closing:
                        self.out_bytes -= len(frame)
                        if self._queue:
                            self._drain_queue()
                self._out_ready.clear()
        except ConnectionClosed:
            pass

    def _push(self, frame: str) -> None:
        if self._closing:
            return
        self._out.append(frame)
        self._out_ready.set()
        self.out_bytes += len(frame)
        self.stats.backlog_high = max(self.stats.backlog_high, self.out_bytes)
        # one reply of any size may wait (a tokenizer hand-out can be tens of MB); more than
        # the bound means the client is not reading what it asked for
        if self.out_bytes > self.limits.max_backlog_bytes and self.out_bytes > len(frame):
            self._overflow()

    def _overflow(self) -> None:
        mb = self.limits.max_backlog_bytes / 2**20
        log.warning("closing %s: over %g MB of replies unsent, it is not reading", self.peer, mb)
        self.stats.closed["backlog"] += 1
        self._shut("client is not reading its replies")
        self._close(1008, f"over {mb:g} MB of replies unsent: the client is not reading them")

    def _send(self, kind: str, payload: dict[str, Any]) -> None:
        try:
            frame = ws_frame(kind, payload)
        except ValueError as e:  # NaN/inf somewhere: strict JSON refuses it
            sid = payload.get("stream_id")
            error = f"the reply could not be written as JSON ({e})"
            frame = ws_frame(kind, {"stream_id": sid if strict_json(sid) else None, "error": error})
        self._push(frame)

    # ---- inbound ------------------------------------------------------------------------

    def _handle(self, text: str) -> None:
        if self._closing:  # read only to see the close: replies would be dropped
            return
        try:
            kind, body = split_message(text)
            self.stats.frames[kind] += 1
            items = split_batch(body, self.limits.max_batch_ops) if kind == BATCH else None
        except ProtocolError as e:
            self._reply_error(None, str(e), as_msg=True)
            log.info("%s rejected: %s", self.peer, printable(e), extra=REPEATS)
            return
        if kind == CANCEL:
            self._cancel_request(body)
            return
        refused: set[Any] = set()  # client ids of GENERATEs refused here: their followers fail
        ops = [op for k, p in items or [(kind, body)] if (op := self._parse(k, p, refused))]
        for op in ops:
            if isinstance(op, ModelInfo):
                self._model_info(op)
        streams = [op for op in ops if isinstance(op, Generate | Score)]
        problems = misplaced_after(streams, refused)
        for i, why in problems.items():
            self._refuse(streams[i].stream_id, kind, why)
        streams = [op for i, op in enumerate(streams) if i not in problems]
        if streams:
            ours = renumbered(streams, lambda: next(self._ids))
            self._admit([(op.stream_id, mine) for op, mine in zip(streams, ours, strict=True)])

    def _parse(self, kind: str, payload: Any, refused: set[Any]) -> Op | None:
        try:
            op = op_from_wire(kind, payload)
            if isinstance(op, Generate) and op.top_logprobs > self.limits.max_top_logprobs:
                raise ProtocolError(
                    f"GENERATE stream_id={show_id(op.stream_id)}: top_logprobs is "
                    f"{op.top_logprobs}; this server sends at most "
                    f"{self.limits.max_top_logprobs} per token (--max-top-logprobs)",
                    op.stream_id,
                )
            return op
        except ProtocolError as e:
            has_id = (
                isinstance(payload, dict)
                and "stream_id" in payload
                and strict_json(payload["stream_id"])  # one with NaN in it is not echoed
            )
            sid = payload["stream_id"] if has_id else None
            if has_id and kind == GENERATE and not isinstance(sid, list | dict):
                refused.add(sid)
            self._reply_error(sid, str(e), as_msg=not (has_id and kind in (GENERATE, SCORE)))
            log.info("%s rejected: %s", self.peer, printable(e), extra=REPEATS)
            return None

    def _refuse(self, wire_id: Any, kind: str, why: str) -> None:
        self._reply_error(wire_id, why, as_msg=False)
        log.info("%s rejected: %s", self.peer, printable(why), extra=REPEATS)

    def _model_info(self, op: ModelInfo) -> None:
        want_tokenizer = op.data.get(TOKENIZER) is True
        try:
            info = self.host.model_info(with_tokenizer=want_tokenizer)
        except ModelUnavailable as e:
            self._reply_error(op.stream_id, str(e), as_msg=True)
            outcome = "error"
        else:
            self._send(MSG, {"stream_id": op.stream_id, "model_info": info})
            outcome = "loading" if isinstance(info, str) else "ok"
        extra = " +tokenizer" if want_tokenizer else ""
        log.info("%s MODEL_INFO stream=%s %s%s", self.peer, show_id(op.stream_id), outcome, extra)

    def _cancel_request(self, body: Any) -> None:
        if not isinstance(body, dict) or "stream_id" not in body:
            self._reply_error(None, "CANCEL needs a stream_id", as_msg=True)
            return
        wire_id = body["stream_id"]
        for st in [s for s in self._streams.values() if s.wire_id == wire_id]:
            if st.handle is not None:
                st.handle.cancel()
            self._close_stream(st, "cancelled")
        if self._queue:
            self._cancel_queued(wire_id)

    def _cancel_queued(self, wire_id: Any) -> None:
        """Drop queued ops with this client id; ops that follow one of them get an error."""
        for group in self._queue:
            gone: set[int] = set()
            keep: Group = []
            for w, op in group:
                if w == wire_id:
                    gone.add(op.stream_id)
                elif op.after is not None and op.after in gone:
                    gone.add(op.stream_id)
                    why = f"stream_id={show_id(w)}: the GENERATE it follows was cancelled"
                    self._reply_error(w, why, as_msg=False)
                else:
                    keep.append((w, op))
            if gone:
                self._dequeued([(w, op) for w, op in group if op.stream_id in gone])
                group[:] = keep
        self._queue = deque(g for g in self._queue if g)

    # ---- admission ----------------------------------------------------------------------

    def _admit(self, group: Group) -> None:
        """Start the ops now, queue them, or refuse them all (they were sent together)."""
        if not self._queue and self._has_room(len(group)):
            self._start(group)
            return
        tokens = _tokens(group)
        limits = self.limits
        if (
            self.queued_ops + len(group) > limits.max_queued_ops
            or self.queued_tokens + tokens > limits.max_queued_tokens
        ):
            why = (
                f"server busy: this connection has {len(self._streams)} streams running and "
                f"{self.queued_ops} ops ({self.queued_tokens} prompt tokens) queued; the limits "
                f"are {limits.max_streams_per_connection} running and {limits.max_queued_ops} "
                f"ops or {limits.max_queued_tokens} tokens queued. Send more once replies end"
            )
            self.stats.busy += len(group)
            for wire_id, op in group:
                self._refuse(wire_id, GENERATE if isinstance(op, Generate) else SCORE, why)
            return
        self._queue.append(group)
        self.queued_ops += len(group)
        self.queued_tokens += tokens
        self.stats.queued_high = max(self.stats.queued_high, self.queued_ops)

    def _has_room(self, n: int) -> bool:
        """Whether `n` more streams may start: under the stream cap (a message larger than the
        cap starts alone) and while replies are being read (under half the backlog bound)."""
        running = len(self._streams)
        fits = running == 0 or running + n <= self.limits.max_streams_per_connection
        return fits and self.out_bytes <= self.limits.max_backlog_bytes // 2

    def _drain_queue(self) -> None:
        while self._queue and not self._closing and self._has_room(len(self._queue[0])):
            group = self._queue.popleft()
            self._dequeued(group)
            self._start(group)

    def _dequeued(self, group: Group) -> None:
        self.queued_ops -= len(group)
        self.queued_tokens -= _tokens(group)

    # ---- streams ------------------------------------------------------------------------

    def _start(self, group: Group) -> None:
        now = time.perf_counter()
        streams = []
        for wire_id, op in group:
            kind = GENERATE if isinstance(op, Generate) else SCORE
            st = _Stream(wire_id, op, kind, now)
            self._streams[op.stream_id] = st
            streams.append(st)
        self.stats.streams_high = max(self.stats.streams_high, len(self._streams))
        self._submit(streams)

    def _submit(self, streams: list[_Stream]) -> None:
        if self.host.state is State.LOADING:
            task = asyncio.create_task(self._submit_when_loaded(streams))
            self._waiters.add(task)
            task.add_done_callback(self._waiters.discard)
            return
        if self.host.state is State.FAILED:
            for st in streams:
                self._fail(st, self.host.public_error or "model unavailable")
            return
        engine = self.host.engine
        assert engine is not None
        limit = engine.context_length
        for st in streams:
            if isinstance(st.op, Generate):
                st.op.max_tokens = self._capped(st.op, limit)
        handles = engine.submit([st.op for st in streams], self._sink)
        for st, handle in zip(streams, handles, strict=True):
            st.handle = handle

    def _capped(self, op: Generate, context: int | None) -> int:
        """max_tokens within the model's remaining context (a stream there ends with
        "length"); for a model that states no context, within `max_tokens_without_context`."""
        if context is None:
            return min(op.max_tokens, self.limits.max_tokens_without_context)
        return min(op.max_tokens, max(context - len(op.prompt), 0))

    async def _submit_when_loaded(self, streams: list[_Stream]) -> None:
        assert self.host.settled is not None
        await self.host.settled.wait()
        live = [st for st in streams if self._streams.get(st.op.stream_id) is st]
        if live:
            self._submit(live)

    def _on_event(self, event: Event) -> None:
        st = self._streams.get(event.stream_id)
        if st is None:  # cancelled, or a duplicate after the end
            return
        clean = finite_event(event)
        if clean is not event and isinstance(clean, ErrorEvent) and st.handle is not None:
            st.handle.cancel()  # a non-finite logprob ends the stream in the engine too
        event = clean
        if isinstance(event, ErrorEvent):
            event = ErrorEvent(event.stream_id, event.error, as_msg=False)
        elif isinstance(event, TokenEvent):
            st.produced += 1
        kind, payload = event_to_wire(event)
        payload["stream_id"] = st.wire_id  # restore the client's id, in place (key order)
        self._send(kind, payload)
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
        self._last_active = self.loop.time()
        seconds = time.perf_counter() - st.started
        log.info(
            "%s %s stream=%s prompt=%d tokens=%d %.3fs %s",
            self.peer,
            st.kind,
            show_id(st.wire_id),
            len(st.op.prompt),
            st.produced,
            seconds,
            printable(outcome),
        )
        if self._queue:
            self._drain_queue()

    def _cancel_all(self, reason: str) -> None:
        for st in list(self._streams.values()):
            if st.handle is not None:
                st.handle.cancel()
            self._close_stream(st, f"cancelled ({reason})")

    def _reply_error(self, stream_id: Any, message: str, *, as_msg: bool) -> None:
        self._send(MSG if as_msg else TOKEN, {"stream_id": stream_id, "error": message})


def _tokens(group: Group) -> int:
    return sum(len(op.prompt) + len(getattr(op, "scored", ())) for _, op in group)
