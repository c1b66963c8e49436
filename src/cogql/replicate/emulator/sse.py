"""Replicate's server-sent events for one prediction.

The official Python client drops events until it has seen an `id:`, knows only the names
output/logs/error/done, and times out after 30 s of silence (replicate-api-and-cog.md §2.6), so:
every event carries an id (`<created unix seconds>:<seq>`, increasing), only those four names
are sent, and a `: keep-alive` comment goes out whenever nothing else has for `heartbeat_s`
(also while the prediction is still starting). A chunk is split on line breaks into one `data:`
line each, with exactly one space after the colon, so the client's join restores it byte for
byte (LMTP lines end in a newline: the empty last piece carries it). A stream opened late or
reopened with Last-Event-ID replays the events it missed, then follows; it ends after `done`.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable

from .store import Prediction, StreamEvent

HEARTBEAT = b": keep-alive\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def format_event(event: StreamEvent) -> bytes:
    lines = [f"event: {event.event}", f"id: {event.id}"]
    lines += [f"data: {piece}" for piece in _LINE_BREAK.split(event.data)]
    return ("\n".join(lines) + "\n\n").encode()


def last_seq(last_event_id: str | None) -> int:
    """The sequence number a Last-Event-ID names; -1 (replay everything) when absent or foreign."""
    if not last_event_id:
        return -1
    try:
        return int(last_event_id.rpartition(":")[2])
    except ValueError:
        return -1


async def follow(
    prediction: Prediction,
    after: int,
    heartbeat_s: float,
    should_drop: Callable[[int], bool] = lambda sent: False,
) -> AsyncIterator[bytes]:
    """The stream's bytes; `should_drop(events sent)` cuts it short (injected faults)."""
    seq, sent, last_write = after, 0, time.monotonic()
    while True:
        for event in prediction.events_after(seq):
            if should_drop(sent):
                return
            yield format_event(event)
            seq, sent, last_write = event.seq, sent + 1, time.monotonic()
            if event.event == "done":
                return
        idle = time.monotonic() - last_write
        if idle >= heartbeat_s:
            yield HEARTBEAT
            last_write = time.monotonic()
            continue
        await prediction.changed(heartbeat_s - idle)
