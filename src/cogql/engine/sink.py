"""Where the engine's events go: a sink, called on the engine's thread.

Hosts run an event loop (the in-process client's, the websocket server's, an async Cog
predictor's); `LoopSink` carries events over to it. Nothing here imports torch, so a host can
use it before the engine (and torch) is loaded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable

from ..lmtp.messages import Event

Sink = Callable[[Event], None]

log = logging.getLogger("cogql.engine")


def tell(sink: Sink, event: Event) -> None:
    """Deliver an error or a last event; a failing sink is logged, never raised into the
    engine (it is already answering a failure)."""
    try:
        sink(event)
    except Exception:
        log.exception("an event sink failed")


class LoopSink:
    """A sink that hands the engine's events to `deliver` on an event loop, in order, waking
    the loop once per burst (one decode step's events for all its streams) rather than once
    per event: fewer wake-ups, less contention with the engine thread. Events for a loop that
    has closed are dropped."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[Event], None]) -> None:
        self.loop = loop
        self.deliver = deliver
        self._pending: collections.deque[Event] = collections.deque()
        self._scheduled = False

    def __call__(self, event: Event) -> None:
        self._pending.append(event)
        if not self._scheduled:
            self._scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        while self._pending:
            self.deliver(self._pending.popleft())
