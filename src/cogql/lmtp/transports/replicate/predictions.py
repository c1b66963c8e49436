"""The life of one prediction: created for a batch of ops, its output followed (the create's
own output, then the event stream, resumed when it drops, then polling) until every op is
answered, canceled once nothing reads it, and its metrics read back for the cost record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Protocol

import httpx
from replicate.prediction import Prediction

from ...cost import Cost, PredictionCost
from ...messages import (
    GENERATE,
    ErrorEvent,
    Generate,
    InfoEvent,
    ProtocolError,
    TokenEvent,
    dumps,
    is_terminal,
    op_to_wire,
    parse_server_message,
)
from ...sse import SSEEvent
from .api import (
    ReplicateAPI,
    ReplicateAPIError,
    ReplicatePredictionError,
    ReplicateTransportError,
    Resolved,
    RetryPolicy,
)
from .model_info import ModelInfoCache
from .ops import OpState
from .settings import TransportSettings

__all__ = ["BatchPrediction", "PredictionHost"]

log = logging.getLogger("cogql.lmtp.replicate")

STREAM_RETRIES = 5  # reconnects of a dropped event stream before polling instead
POLL_INTERVAL_S = 0.5
FINAL_POLLS = 20  # GETs (POLL_INTERVAL_S apart) waiting for a canceled prediction's metrics
CANCEL_GRACE_S = 5.0  # a canceled prediction's stream normally ends at once; else stop reading
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})


class PredictionHost(Protocol):
    """What a prediction uses of the session that sent it (session.py's LoopSession)."""

    api: ReplicateAPI
    loop: asyncio.AbstractEventLoop
    transport: TransportSettings
    info_cache: ModelInfoCache
    predictions: set[BatchPrediction]

    async def resolve(self) -> Resolved: ...

    def spawn(self, work: Any) -> asyncio.Task[Any]: ...


class BatchPrediction:
    """Creates one prediction for a batch of ops, follows its output to the end, and reads
    back its metrics; every op of the batch gets its events or an error."""

    def __init__(self, session: PredictionHost, ops: list[OpState]) -> None:
        self.session = session
        self.api = session.api
        self.ops = {s.op.stream_id: s for s in ops}
        for s in ops:
            s.prediction = self
        self.id: str | None = None
        self.record: PredictionCost | None = None
        self.chunks = 0  # output chunks applied (SSE output events / output array items)
        self.buffer = ""
        self.seen_ids: set[str] = set()
        self.last_event_id: str | None = None
        self.error_detail: str | None = None
        self.cancel_sent = False
        self.stream_tokens = 0  # GENERATE tokens seen on the stream
        self.finalizing = False
        self._wire_open = set(self.ops)
        self.task = asyncio.get_running_loop().create_task(self._run())
        for cost in self._costs():  # a query's cost is complete when this task is
            cost.defer(self.task)

    # ---- bookkeeping ---------------------------------------------------------------------

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(s.kind for s in self.ops.values())

    @property
    def settled(self) -> bool:
        return all(s.settled for s in self.ops.values())

    @property
    def name(self) -> str:
        return f"Replicate prediction {self.id}" if self.id else "a Replicate prediction"

    def _costs(self) -> list[Cost]:
        seen: dict[int, Cost] = {}
        for s in self.ops.values():
            if s.cost is not None:
                seen[id(s.cost)] = s.cost
        return list(seen.values())

    def _fail_open(self, message: str, retryable: bool = False) -> None:
        for s in self.ops.values():
            s.fail(message, retryable)

    def op_cancelled(self) -> None:
        """The client stopped reading one of our ops; once none is read, cancel the prediction.
        Following it stops at its next event (or after a grace period, if none comes)."""
        if not self.session.transport.cancel:
            return
        if self.settled and self.id is not None and not self.cancel_sent:
            self.cancel_sent = True
            self.session.spawn(self.api.cancel(self.id))
            self.session.loop.call_later(CANCEL_GRACE_S, self._stop_following)

    def _stop_following(self) -> None:
        if not self.task.done() and not self.finalizing:
            self.task.cancel()

    # ---- the life of a prediction --------------------------------------------------------

    async def _run(self) -> None:
        try:
            prediction = await self._create()
            if prediction is not None:
                await self._follow(prediction)
        except asyncio.CancelledError:
            if self.settled:  # a canceled prediction that sent nothing more for a while
                return
            if self.id is not None and not self.cancel_sent:  # the transport closes
                self.cancel_sent = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.api.cancel(self.id), 5)
            self._fail_open(f"{self.name} was abandoned: the transport closed")
            raise
        except ReplicateTransportError as e:
            self._fail_open(str(e), e.retryable)
        except Exception as e:  # a bug or an unexpected answer must not hang the query
            log.exception("replicate transport: %s failed", self.name)
            self._fail_open(f"{self.name} could not be followed: {type(e).__name__}: {e}")
        finally:
            self.session.predictions.discard(self)
        self.finalizing = True
        await self._finalize()

    async def _create(self) -> Prediction | None:
        resolved = await self.session.resolve()
        items = [op_to_wire(s.op) for s in self.ops.values()]
        ops_json = dumps([[kind, payload] for kind, payload in items])
        wait = None if GENERATE in self.kinds else self.session.transport.wait
        prediction = await self.api.create(resolved, ops_json, wait=wait)
        self.id = prediction.id
        log.debug("%s: %s", self.name, ", ".join(self.kinds))
        self.record = PredictionCost(prediction.id, self.kinds, prediction.status)
        for cost in self._costs():
            cost.add_prediction(self.record)
        if self.settled:  # everything was cancelled while the create was on its way
            self.op_cancelled()
            return None
        return prediction

    async def _follow(self, prediction: Prediction) -> None:
        """Output until every op is answered: the create's own output when it waited, then
        the event stream (resumed when it drops), then polling when the stream fails."""
        self._apply_output(prediction.output)
        if prediction.status in TERMINAL:
            return self._finish(prediction.status, prediction.error)
        url = (prediction.urls or {}).get("stream")
        failures = 0
        deadline = IdleDeadline(self.session.transport.idle_timeout, self)
        while not self.settled:
            if url and failures <= STREAM_RETRIES:
                try:
                    done = await self._read_stream(url, deadline)
                except (httpx.HTTPError, ReplicateAPIError) as e:
                    log.info("%s: event stream lost (%s)", self.name, e)
                    done = None
                if done is not None:
                    return self._finish_from_done(done)
                if self.settled:
                    break
                failures += 1
            latest = await self._poll(deadline)
            if latest.status in TERMINAL:
                self._apply_output(latest.output)
                return self._finish(latest.status, latest.error)
            polling = not url or failures > STREAM_RETRIES
            if polling and self._apply_output(latest.output):  # the output array grows
                deadline.renew()
            await asyncio.sleep(POLL_INTERVAL_S if polling else _STREAM_BACKOFF.delay(failures))

    async def _poll(self, deadline: IdleDeadline) -> Prediction:
        assert self.id is not None
        for attempt in range(1, STREAM_RETRIES + 2):
            deadline.check()
            try:
                return await self.api.get(self.id)
            except (httpx.HTTPError, ReplicateAPIError) as e:
                if attempt > STREAM_RETRIES:
                    raise ReplicateAPIError(f"lost contact with {self.name}: {e}") from None
                await asyncio.sleep(POLL_INTERVAL_S * attempt)
        raise AssertionError("unreachable")

    async def _read_stream(self, url: str, deadline: IdleDeadline) -> SSEEvent | None:
        """Apply events until `done` (returned), EOF (None), or every op is settled (None).
        A stream opened without Last-Event-ID replays from the start, so the chunks already
        applied (from an earlier stream without ids, or the create's own output) are skipped;
        one resumed by id skips events it has seen, should the server replay them anyway."""
        skip = self.chunks if self.last_event_id is None else 0
        events = self.api.events(url, self.last_event_id)
        try:
            async with asyncio.timeout_at(deadline.at) as timer:
                async for event in events:
                    if event.id is not None:
                        if event.id in self.seen_ids:
                            continue
                        self.seen_ids.add(event.id)
                        self.last_event_id = event.id
                    if event.event == "output" and skip > 0:
                        skip -= 1
                        continue
                    if event.event == "output":
                        if self._apply_chunk(event.data):
                            timer.reschedule(deadline.renew())
                    elif event.event == "error":
                        self.error_detail = _detail(event.data)
                    elif event.event == "done":
                        return event
                    if self.settled:
                        return None
        except TimeoutError:
            deadline.expired()
        finally:
            await events.aclose()
        return None

    # ---- output ----------------------------------------------------------------------------

    def _apply_output(self, output: Any) -> bool:
        """Apply the chunks of an output array that were not applied yet."""
        progressed = False
        if isinstance(output, list):
            for chunk in output[self.chunks :]:
                progressed |= self._apply_chunk(chunk if isinstance(chunk, str) else str(chunk))
        elif isinstance(output, str) and output and self.chunks == 0:
            progressed = self._apply_chunk(output)
        return progressed

    def _apply_chunk(self, text: str) -> bool:
        """One output chunk (normally one line); True when it carried an LMTP line."""
        self.chunks += 1
        self.buffer += text
        progressed = False
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            progressed |= self._apply_line(line)
        return progressed

    def _apply_line(self, line: str) -> bool:
        if not line.strip():
            return False
        try:
            events = parse_server_message(line)
        except ProtocolError as e:
            log.warning("%s sent a line that is not LMTP (%s): %.200s", self.name, e, line)
            return False
        for event in events:
            state = self.ops.get(event.stream_id)
            if state is None or event.stream_id not in self._wire_open:
                continue  # another op's id, or a duplicate after the end (LMQL sends some)
            if is_terminal(event):
                self._wire_open.discard(event.stream_id)
            if isinstance(event, TokenEvent) and isinstance(state.op, Generate):
                self.stream_tokens += 1
            if isinstance(event, ErrorEvent):
                event.error = f"{event.error} ({self.name})"
            elif isinstance(event, InfoEvent):
                self._remember(state, event)
            state.deliver(event)
        return True

    def _remember(self, state: OpState, event: InfoEvent) -> None:
        """Keep a MODEL_INFO answer for this version ("<unavailable>" means still loading)."""
        if state.cache_key is not None and isinstance(event.model_info, dict):
            self.session.info_cache.put(state.cache_key, event.model_info)

    def _finish_from_done(self, done: SSEEvent) -> None:
        reason = _detail(done.data, key="reason") if done.data.strip() not in ("", "{}") else ""
        status = {"error": "failed", "canceled": "canceled"}.get(reason or "", "succeeded")
        self._finish(status, self.error_detail)

    def _finish(self, status: str, error: Any) -> None:
        """The prediction ended: ops it did not answer get an error that says why."""
        if self.buffer.strip():
            self._apply_line(self.buffer)
        self.buffer = ""
        if self.record is not None:
            self.record.status = status
        if self.settled:
            return
        if status == "failed" or self.error_detail:
            detail = error or self.error_detail or "no error message"
            self._fail_open(f"{self.name} failed: {detail}")
        elif status in ("canceled", "aborted"):
            self._fail_open(f"{self.name} was canceled before it answered")
        else:
            missing = [s.kind for s in self.ops.values() if not s.settled]
            self._fail_open(
                f"{self.name} ended ({status}) without answering {len(missing)} of its "
                f"{len(self.ops)} ops ({', '.join(missing)}): the model's output stopped early"
            )

    async def _finalize(self) -> None:
        """Read back predict_time and the tokens generated (all of them: also those the
        client never read, which a canceled prediction still produced)."""
        if self.id is None or self.record is None:
            return
        prediction = None
        for _ in range(FINAL_POLLS):
            try:
                prediction = await self.api.get(self.id)
            except (httpx.HTTPError, ReplicateTransportError) as e:
                log.debug("metrics of %s unavailable: %s", self.name, e)
                break
            if prediction.status in TERMINAL:
                break
            await asyncio.sleep(POLL_INTERVAL_S)
        record = self.record
        record.tokens_generated = self.stream_tokens
        if prediction is None:
            return
        record.status = prediction.status
        metrics = prediction.metrics or {}
        if isinstance(metrics.get("predict_time"), int | float):
            record.predict_time = float(metrics["predict_time"])
        generate_ids = {w for w, s in self.ops.items() if isinstance(s.op, Generate)}
        counted = _count_generated(prediction.output, generate_ids)
        record.tokens_generated = max(counted, self.stream_tokens)


class IdleDeadline:
    """The idle timeout: renewed by every LMTP line, checked while streaming and polling."""

    def __init__(self, seconds: float, prediction: BatchPrediction) -> None:
        self.seconds = seconds
        self.prediction = prediction
        self.at = asyncio.get_running_loop().time() + seconds

    def renew(self) -> float:
        self.at = asyncio.get_running_loop().time() + self.seconds
        return self.at

    def check(self) -> None:
        if asyncio.get_running_loop().time() >= self.at:
            self.expired()

    def expired(self) -> None:
        p = self.prediction
        if p.id is not None and not p.cancel_sent:
            p.cancel_sent = True
            p.session.spawn(p.api.cancel(p.id))
        raise ReplicatePredictionError(
            f"{p.name} produced no output for {self.seconds:g} s, so it was canceled "
            "(models that boot or run longer need a larger idle_timeout)",
            p.id or "",
        )


_STREAM_BACKOFF = RetryPolicy(base_delay=0.1, max_delay=2.0, jitter=0.0)  # stream reconnects


def _detail(data: str, key: str = "detail") -> str:
    try:
        value = json.loads(data)
    except ValueError:
        return data.strip()
    if isinstance(value, dict):
        return str(value.get(key) or value.get("detail") or value.get("error") or "")
    return str(value)


def _count_generated(output: Any, generate_ids: set[Any]) -> int:
    """GENERATE tokens in a prediction's output, each stream counted up to its end."""
    if not isinstance(output, list):
        return 0
    open_ids = set(generate_ids)
    count = 0
    for line in "".join(str(c) for c in output).splitlines():
        try:
            events = parse_server_message(line) if line.strip() else []
        except ProtocolError:
            continue
        for event in events:
            if event.stream_id in open_ids:
                count += isinstance(event, TokenEvent)
                if is_terminal(event):
                    open_ids.discard(event.stream_id)
    return count
