"""Predictions: their state, their output so far, and the events their streams replay.

Every change happens on the emulator's event loop; readers (`Prefer: wait`, SSE subscribers,
cancel) wait for the next change rather than poll. A prediction keeps its whole event log, so a
stream opened late, or reopened with Last-Event-ID, replays what it missed, then follows.
States follow Replicate's machine: starting → processing → succeeded | failed | canceled;
`started_at` is set on processing, `completed_at` and `metrics` when terminal.

Finished predictions are forgotten (a 404 afterwards, their input, output and events freed)
once more than `max_kept` have finished, oldest first, or `keep_s` seconds after they finished
(Replicate removes an API prediction's data after an hour); running ones are always kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .catalog import ModelEntry, iso

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
PAGE_SIZE = 100
MAX_KEPT = 1000
KEEP_S = 3600.0


def new_id() -> str:
    """26 lowercase base32 characters, the shape of Replicate's prediction ids."""
    return base64.b32encode(secrets.token_bytes(16)).decode().lower().rstrip("=")[:26]


@dataclass(frozen=True)
class StreamEvent:
    seq: int
    id: str
    event: str  # output | logs | error | done: the only names the clients accept
    data: str


@dataclass
class Prediction:
    id: str
    entry: ModelEntry
    input: dict[str, Any]
    deployment: str | None = None
    status: str = "starting"
    output: list[Any] | None = None
    final_output: Any = None
    logs: str = ""
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    started: float | None = None
    completed: float | None = None
    events: list[StreamEvent] = field(default_factory=list)
    cancel_requested: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # ---- reading --------------------------------------------------------------------------

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def url(self, base_url: str) -> str:
        return f"{base_url}/v1/predictions/{self.id}"

    def to_json(self, base_url: str, *, status: str | None = None) -> dict[str, Any]:
        """The prediction object. `status` overrides the reported status (Prefer: wait's
        timeout reports `starting`), and then no output is shown: the clients' polling
        iterators skip the chunks the first answer had, so they must come with the next."""
        url = self.url(base_url)
        urls = {"get": url, "cancel": f"{url}/cancel", "web": f"https://replicate.com/p/{self.id}"}
        if self.entry.streams:
            urls["stream"] = f"{url}/stream"
        body: dict[str, Any] = {
            "id": self.id,
            "model": self.entry.ref,
            "version": self.entry.version_id,
            "input": self.input,
            "output": None if status else self.final_output if self.terminal else self.output,
            "logs": self.logs,
            "error": self.error,
            "status": status or self.status,
            "source": "api",
            "data_removed": False,
            "created_at": iso(self.created),
            "started_at": iso(self.started) if self.started else None,
            "completed_at": iso(self.completed) if self.completed else None,
            "urls": urls,
            "metrics": self.metrics,
        }
        if self.deployment:
            body["deployment"] = self.deployment
        return body

    async def changed(self, timeout: float | None) -> None:
        """Return at the next change (or after `timeout` seconds)."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def wait_terminal(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.terminal and (left := deadline - time.monotonic()) > 0:
            await self.changed(left)
        return self.terminal

    def events_after(self, seq: int) -> list[StreamEvent]:
        return self.events[seq + 1 :]

    # ---- changing -------------------------------------------------------------------------

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _emit(self, event: str, data: str) -> None:
        seq = len(self.events)
        self.events.append(StreamEvent(seq, f"{int(self.created)}:{seq}", event, data))

    def start(self) -> None:
        if self.status == "starting":
            self.status, self.started = "processing", time.time()
            self._notify()

    def add_output(self, chunk: Any) -> None:
        if self.terminal:
            return
        self.start()
        self.output = [*(self.output or []), chunk]
        self._emit("output", chunk if isinstance(chunk, str) else json.dumps(chunk))
        self._notify()

    def add_logs(self, text: str) -> None:
        if self.terminal or not text:
            return
        self.logs += text
        self._emit("logs", text)
        self._notify()

    def finish(
        self,
        status: str,
        *,
        error: str | None = None,
        output: Any = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Enter a terminal state once; later calls (a late Cog event) change nothing."""
        if self.terminal:
            return
        self.status, self.completed = status, time.time()
        self.error = error
        self.final_output = output if output is not None else self.output
        self.metrics = {
            **(metrics or {}),
            "total_time": round(self.completed - self.created, 6),
        }
        self.metrics.setdefault(
            "predict_time", round(self.completed - (self.started or self.completed), 6)
        )
        if status == "failed":
            self._emit("error", json.dumps({"detail": error or "prediction failed"}))
            self._emit("done", json.dumps({"reason": "error"}))
        elif status == "canceled":
            self._emit("done", json.dumps({"reason": "canceled"}))
        else:
            self._emit("done", "{}")
        self._notify()


class Store:
    """The predictions of this emulator still kept, newest last; ids are unique across models."""

    def __init__(self, max_kept: int = MAX_KEPT, keep_s: float = KEEP_S) -> None:
        self._by_id: dict[str, Prediction] = {}
        self.max_kept = max_kept
        self.keep_s = keep_s

    def add(self, entry: ModelEntry, inputs: dict[str, Any], deployment: str | None) -> Prediction:
        self.forget_old()
        prediction = Prediction(new_id(), entry, inputs, deployment)
        self._by_id[prediction.id] = prediction
        return prediction

    def forget_old(self) -> None:
        """Drop finished predictions past `keep_s`, then the oldest past `max_kept`."""
        now = time.time()
        ended = sorted((p.completed, p) for p in self._by_id.values() if p.completed is not None)
        finished = [p for _, p in ended]
        expired = [p for completed, p in ended if now - completed >= self.keep_s]
        kept = finished[len(expired) :]
        for prediction in expired + kept[: max(len(kept) - self.max_kept, 0)]:
            del self._by_id[prediction.id]

    def get(self, prediction_id: str) -> Prediction | None:
        return self._by_id.get(prediction_id)

    def page(
        self, offset: int, created_after: float | None, created_before: float | None
    ) -> tuple[list[Prediction], int | None]:
        """Newest first, PAGE_SIZE per page; returns (predictions, next offset or None)."""
        chosen = [
            p
            for p in reversed(self._by_id.values())
            if (created_after is None or p.created > created_after)
            and (created_before is None or p.created < created_before)
        ]
        page = chosen[offset : offset + PAGE_SIZE]
        more = offset + PAGE_SIZE < len(chosen)
        return page, (offset + PAGE_SIZE if more else None)

    def all(self) -> list[Prediction]:
        return list(self._by_id.values())

    def unfinished(self) -> list[Prediction]:
        return [p for p in self._by_id.values() if not p.terminal]
