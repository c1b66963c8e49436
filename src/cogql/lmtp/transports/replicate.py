"""Replicate transport: LMTP ops as predictions of an LMTP Cog model on Replicate.

A prediction's one input, `ops_batch_json`, holds `[[TYPE, payload], ...]`; its output streams
one `TOKEN {...}` / `MSG {...}` line per event (reference: lmtp-and-replicate-tunnel.md §2.3).
That is LMQL's protocol, so LMQL-built models work unchanged; cogql-built ones also advertise
extensions in MODEL_INFO, which the client then uses (stop strings and grammars server-side).

Every prediction is a queued, billed round trip, so this transport spends as few as it can:

- ops sent within `batch_window` seconds of each other share one prediction (all options of a
  `distribution` clause arrive together; concurrent branches of `sample(n=...)` usually do);
- the version lookup happens once per process, and one HTTP session serves each event loop;
- MODEL_INFO answers are remembered per model version (in memory and on disk), so only the
  first query against a version pays a prediction for them;
- batches without a GENERATE are created with `Prefer: wait`, so their answer comes back with
  the create, without opening a stream;
- a prediction whose ops the client no longer reads is canceled at once.

Nothing waits forever and nothing runs twice: creates are retried on 429/5xx only where no
duplicate can result (replicate_api.py); a dropped event stream is resumed with Last-Event-ID,
or, failing that, the prediction is polled; a prediction that is silent for `idle_timeout`
seconds is canceled; an `error` event, a failed prediction or one that ends without answering
all its ops fails those ops with a message that names the prediction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
from replicate.prediction import Prediction

from ...locations import cache_dir
from ..cost import Cost, PredictionCost, current_cost
from ..messages import (
    GENERATE,
    ErrorEvent,
    Event,
    Generate,
    InfoEvent,
    ModelInfo,
    Op,
    ProtocolError,
    Score,
    TokenEvent,
    dumps,
    is_terminal,
    op_kind,
    op_to_wire,
    parse_server_message,
    renumbered,
)
from ..sse import SSEEvent
from .base import EventCallback, Handle
from .replicate_api import (
    API_BASE,
    ReplicateAPI,
    ReplicateAPIError,
    ReplicateConfigError,
    ReplicatePredictionError,
    ReplicateTarget,
    ReplicateTransportError,
    Resolved,
    RetryPolicy,
)

log = logging.getLogger("cogql.lmtp.replicate")

DEFAULT_BATCH_WINDOW_S = 0.02
DEFAULT_WAIT_S = 60  # Replicate's longest `Prefer: wait`
DEFAULT_IDLE_TIMEOUT_S = 600.0  # covers a cold boot; a prediction silent this long is dropped
MAX_OPS_PER_PREDICTION = 64
STREAM_RETRIES = 5  # reconnects of a dropped event stream before polling instead
POLL_INTERVAL_S = 0.5
FINAL_POLLS = 20  # GETs (POLL_INTERVAL_S apart) waiting for a canceled prediction's metrics
CANCEL_GRACE_S = 5.0  # a canceled prediction's stream normally ends at once; else stop reading
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

__all__ = [
    "ReplicateAPIError",
    "ReplicateConfigError",
    "ReplicatePredictionError",
    "ReplicateTarget",
    "ReplicateTransport",
    "ReplicateTransportError",
    "parse_endpoint",
]


# --------------------------------------------------------------------------- endpoint strings


def parse_endpoint(endpoint: str, model: str | None = None) -> ReplicateTarget:
    """`replicate:owner/name`, `replicate:owner/name/version` (or Replicate's own
    `owner/name:version`), `replicate:deployment/owner/name`, or bare `replicate`, which takes
    the Replicate name from the model's name (LMQL: `lmql.model("owner/name", endpoint="replicate")`)."""
    raw = endpoint.strip()
    if raw in ("replicate", "replicate:"):
        desc = (model or "").strip().removeprefix("replicate:")
        if not desc:
            raise ReplicateConfigError(
                f"endpoint {endpoint!r} takes the Replicate model from the model's name, and "
                "none was given: use cogql.model('owner/name', endpoint='replicate') or "
                "endpoint='replicate:owner/name'"
            )
    elif raw.startswith("replicate:"):
        desc = raw.removeprefix("replicate:").strip()
    else:
        raise ReplicateConfigError(f"endpoint {endpoint!r} is not a replicate: endpoint")
    base, colon, pinned = desc.partition(":")
    parts = base.split("/")
    if colon and len(parts) == 2:
        target = ReplicateTarget(parts[0], parts[1], version=pinned)
    elif not colon and len(parts) == 2:
        target = ReplicateTarget(parts[0], parts[1])
    elif not colon and len(parts) == 3 and parts[0] == "deployment":
        target = ReplicateTarget(parts[1], parts[2], deployment=True)
    elif not colon and len(parts) == 3:
        target = ReplicateTarget(parts[0], parts[1], version=parts[2])
    else:
        target = None
    fields = [] if target is None else [target.owner, target.name]
    fields += [] if target is None or target.version is None else [target.version]
    if target is None or not all(_NAME.match(f) for f in fields):
        raise ReplicateConfigError(
            f"endpoint {endpoint!r}: expected replicate:owner/name, replicate:owner/name/version "
            "(or owner/name:version), replicate:deployment/owner/name, or bare replicate with "
            "the Replicate name as the model's name"
        )
    return target


def base_url_from(value: str | None) -> str:
    """REPLICATE_BASE_URL as the 1.x client wants it: no trailing slash, no `/v1` (the 2.x
    client's form, which users may have set)."""
    url = (value or os.environ.get("REPLICATE_BASE_URL") or API_BASE).strip().rstrip("/")
    return url.removesuffix("/v1")


def api_token_from(value: str | None) -> str:
    token = value if value is not None else os.environ.get("REPLICATE_API_TOKEN", "")
    if not token.strip():
        raise ReplicateConfigError(
            "REPLICATE_API_TOKEN is not set: running a model on Replicate needs an API token "
            "(https://replicate.com/account/api-tokens); export REPLICATE_API_TOKEN=r8_... "
            "(for `cogql replicate serve`, the token it prints)"
        )
    return token.strip()


# --------------------------------------------------------------------------- MODEL_INFO cache


class _InfoCache:
    """MODEL_INFO answers per (API, version, request data): a version never changes, so its
    answer is fetched once. On disk under $COGQL_REPLICATE_CACHE (\"off\" disables the disk),
    else cogql's cache folder."""

    _memory: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    @staticmethod
    def default_folder() -> Path | None:
        env = os.environ.get("COGQL_REPLICATE_CACHE")
        if env is not None and env.strip().lower() in ("", "0", "off", "false", "no"):
            return None
        if env:
            return Path(env).expanduser()
        return cache_dir() / "replicate"

    @staticmethod
    def key(base_url: str, version: str, data: dict[str, Any]) -> str:
        raw = json.dumps([base_url, version, data], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:40]

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._memory:
            return self._memory[key]
        if self.folder is None:
            return None
        try:
            info = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(info, dict):
            self._memory[key] = info
            return info
        return None

    def put(self, key: str, info: dict[str, Any]) -> None:
        self._memory[key] = info
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{key}.{secrets.token_hex(4)}.tmp"
            tmp.write_text(json.dumps(info), encoding="utf-8")
            tmp.replace(self.folder / f"{key}.json")
        except OSError as e:
            log.debug("cannot write the MODEL_INFO cache in %s: %s", self.folder, e)


# --------------------------------------------------------------------------- ops and handles


@dataclass(eq=False)
class _OpState:
    """One op the client sent: how to reach the client, and where the op is."""

    op: Op  # with its wire id
    client_id: Any
    on_event: EventCallback
    cost: Cost | None
    cache_key: str | None = None
    group: int | None = None  # ops that must share one prediction
    closed: bool = False  # the client has its terminal event
    cancelled: bool = False  # the client stopped reading before that
    prediction: _Prediction | None = None

    @property
    def kind(self) -> str:
        return op_kind(self.op)

    @property
    def settled(self) -> bool:
        return self.closed or self.cancelled

    def deliver(self, event: Event) -> None:
        if self.settled:
            return
        event.stream_id = self.client_id
        if is_terminal(event):
            self.closed = True
        self.on_event(event)

    def fail(self, message: str, retryable: bool = False) -> None:
        self.deliver(ErrorEvent(None, message, as_msg=False, retryable=retryable))


# --------------------------------------------------------------------------- one prediction


class _Prediction:
    """Creates one prediction for a batch of ops, follows its output to the end, and reads
    back its metrics; every op of the batch gets its events or an error."""

    def __init__(self, session: _Session, ops: list[_OpState]) -> None:
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
        deadline = _Deadline(self.session.transport.idle_timeout, self)
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

    async def _poll(self, deadline: _Deadline) -> Prediction:
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

    async def _read_stream(self, url: str, deadline: _Deadline) -> SSEEvent | None:
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

    def _remember(self, state: _OpState, event: InfoEvent) -> None:
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


class _Deadline:
    """The idle timeout: renewed by every LMTP line, checked while streaming and polling."""

    def __init__(self, seconds: float, prediction: _Prediction) -> None:
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


# --------------------------------------------------------------------------- per event loop


class _Session:
    """The transport's state on one event loop: HTTP session, pending batch, predictions."""

    def __init__(self, transport: ReplicateTransport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.api = ReplicateAPI(
            transport.token,
            transport.base_url,
            http_transport=transport.http_transport,
            retry=transport.retry,
        )
        self.info_cache = transport.info_cache
        self.pending: list[_OpState] = []
        self.predictions: set[_Prediction] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._resolve_lock = asyncio.Lock()
        self._closer: AsyncGenerator[None, None] | None = None

    async def _close_with_the_loop(self) -> AsyncGenerator[None, None]:
        """An async generator, which the loop closes when it shuts down (asyncio.run's
        shutdown_asyncgens): the hook that lets an idle HTTP session close its connections
        before the loop that owns them goes away."""
        try:
            yield
        finally:
            await self.api.aclose()

    async def resolve(self) -> Resolved:
        if self._closer is None:
            self._closer = self._close_with_the_loop()
            await anext(self._closer)
        key = (self.transport.base_url, self.transport.target)
        async with self._resolve_lock:
            if key not in _resolved:
                _resolved[key] = await self.api.resolve(self.transport.target)
        return _resolved[key]

    def spawn(self, work: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # ---- sending ---------------------------------------------------------------------------

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Handle]:
        cost = current_cost()
        states = []
        sent = renumbered(ops, _wire_ids.__next__)
        together = any(isinstance(op, Generate | Score) and op.after is not None for op in sent)
        group = next(_wire_ids) if together else None
        for op, wire_op in zip(ops, sent, strict=True):
            state = _OpState(wire_op, op.stream_id, on_event, cost, group=group)
            states.append(state)
            if isinstance(op, ModelInfo) and self._answer_from_cache(state):
                continue
            self.pending.append(state)
        if len(self.pending) >= self.transport.max_ops:
            self.flush()
        elif self.pending and self._timer is None:
            self._timer = self.loop.call_later(self.transport.batch_window, self.flush)
        return [Handle(functools.partial(self.cancel_op, s)) for s in states]

    def _answer_from_cache(self, state: _OpState) -> bool:
        resolved = _resolved.get((self.transport.base_url, self.transport.target))
        if resolved is None or resolved.version is None:
            return False
        assert isinstance(state.op, ModelInfo)
        state.cache_key = self.info_cache.key(
            self.transport.base_url, resolved.version, state.op.data
        )
        info = self.info_cache.get(state.cache_key)
        if info is None:
            return False
        self.loop.call_soon(state.deliver, InfoEvent(None, info))
        return True

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.pending:
            n = self._batch_size()
            batch = self.pending[:n]
            del self.pending[:n]
            self.predictions.add(_Prediction(self, batch))

    def _batch_size(self) -> int:
        """How many pending ops go into the next prediction: up to max_ops, but never a group
        split (a SCORE `after` a GENERATE must travel with it)."""
        n = 0
        while n < len(self.pending):
            group = self.pending[n].group
            end = n + 1
            while (
                group is not None and end < len(self.pending) and self.pending[end].group == group
            ):
                end += 1
            if n and end > self.transport.max_ops:
                break
            n = end
        return n

    def cancel_op(self, state: _OpState) -> None:
        if state.settled:
            return
        state.cancelled = True
        if state in self.pending:
            self.pending.remove(state)
        elif state.prediction is not None:
            state.prediction.op_cancelled()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for state in self.pending:
            state.fail("the replicate transport was closed before this op was sent")
        self.pending.clear()
        tasks = [p.task for p in self.predictions]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5)
        if self._closer is not None:
            await self._closer.aclose()
        else:
            await self.api.aclose()


# process-wide: wire ids unique across transports and processes (a batch is found again by its
# exact input when a create's outcome is unknown), and one version lookup per target
_wire_ids = itertools.count(secrets.randbelow(2**40) * 1000 + 1)
_resolved: dict[tuple[str, ReplicateTarget], Resolved] = {}


class ReplicateTransport:
    """The Transport for one Replicate model (see the module docstring)."""

    def __init__(
        self,
        target: ReplicateTarget,
        *,
        api_token: str | None = None,
        base_url: str | None = None,
        batch_window: float = DEFAULT_BATCH_WINDOW_S,
        wait: int | None = DEFAULT_WAIT_S,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        max_ops: int = MAX_OPS_PER_PREDICTION,
        cancel: bool = True,
        info_cache: Path | bool | None = True,
        http_transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`info_cache`: a folder, True for the default one, False/None for memory only.
        `http_transport` is handed to the official client's httpx session (tests use it to
        inject faults). `cancel=False` leaves a prediction running when nothing reads it any
        more, as LMQL does (to compare with its traffic); it is still followed, for its cost."""
        self.target = target
        self.cancel = cancel
        self.token = api_token_from(api_token)
        self.base_url = base_url_from(base_url)
        self.batch_window = max(float(batch_window), 0.0)
        self.wait = max(1, min(int(wait), 60)) if wait else None
        self.idle_timeout = float(idle_timeout)
        self.max_ops = max(int(max_ops), 1)
        folder = _InfoCache.default_folder() if info_cache is True else info_cache or None
        self.info_cache = _InfoCache(Path(folder) if folder else None)
        self.http_transport = http_transport
        self.retry = retry
        self.url = f"replicate:{target} at {self.base_url}"
        self._session: _Session | None = None

    def _current(self) -> _Session:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.loop is not loop:
            self._session = _Session(self)
        return self._session

    async def open(self) -> None:
        """Look the model up now, so a wrong name or token fails here, clearly."""
        await self._current().resolve()

    @property
    def version(self) -> str | None:
        resolved = _resolved.get((self.base_url, self.target))
        return resolved.version if resolved is not None else None

    @property
    def advertised(self) -> frozenset[str] | None:
        """The extensions the version's schema lists (cogql-built models); None if none."""
        resolved = _resolved.get((self.base_url, self.target))
        return resolved.capabilities if resolved is not None else None

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Handle]:
        return self._current().send(ops, on_event)

    async def close(self) -> None:
        """Cancel what is still running and close the HTTP session of this event loop."""
        session, self._session = self._session, None
        if session is not None and session.loop is asyncio.get_running_loop():
            await session.close()


def forget_lookups() -> None:
    """Drop the process's version lookups and in-memory MODEL_INFO answers (for tests)."""
    _resolved.clear()
    _InfoCache._memory.clear()
