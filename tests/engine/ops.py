"""Running ops on any engine from a test: submit them together, collect every stream's events
until it ends (shared by the tests of each engine)."""

from __future__ import annotations

import queue
import time
from typing import Any

from cogql.engine.protocol import LMTPEngine
from cogql.lmtp.messages import Event, Op


def run(engine: LMTPEngine, ops: list[Op], timeout: float = 120) -> dict[Any, list[Event]]:
    """Submit ops together; every stream's events until it ends."""
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    engine.submit(ops, events.put)
    out: dict[Any, list[Event]] = {op.stream_id: [] for op in ops}
    left = set(out)
    deadline = time.monotonic() + timeout
    while left:
        event = events.get(timeout=max(deadline - time.monotonic(), 0.01))
        out[event.stream_id].append(event)
        if getattr(event, "finish_reason", "end") is not None:
            left.discard(event.stream_id)
    return out


def tokens(events: list[Event]) -> list[int]:
    return [e.token for e in events if hasattr(e, "token")]


def logprobs(events: list[Event]) -> list[float]:
    return [e.logprob for e in events if hasattr(e, "logprob")]
