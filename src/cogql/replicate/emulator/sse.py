"""Replicate's server-sent events for one prediction.

The official Python client drops events until it has seen an `id:`, knows only the names
output/logs/error/done, and times out after 30 s of silence (replicate-api-and-cog.md §2.6), so:
every event carries an id (`<created unix seconds>:<seq>`, increasing), only those four names
are sent, and a `: keep-alive` comment goes out whenever nothing else has for `heartbeat_s`
(also while the prediction is still starting). A chunk is split on line breaks into one `data:`
line each, with exactly one space after the colon, so the client's join restores it byte for
byte (LMTP lines end in a newline: the empty last piece carries it). A stream opened late or
reopened with Last-Event-ID replays the events it missed, then follows; it ends after `done`.

A Last-Event-ID must be an id this stream sent: anything else (not `<stamp>:<seq>`, another
prediction's stamp, a negative seq, a seq past the last event sent so far) is a 400 before the
stream starts, so a confused client learns it instead of heartbeating forever or skipping
output. Resuming after the last event of a finished prediction sends its `done` again and ends.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable

from .errors import BadRequest
from .store import Prediction, StreamEvent

HEARTBEAT = b": keep-alive\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def format_event(event: StreamEvent) -> bytes:
    lines = [f"event: {event.event}", f"id: {event.id}"]
    lines += [f"data: {piece}" for piece in _LINE_BREAK.split(event.data)]
    return ("\n".join(lines) + "\n\n").encode()


def resume_after(prediction: Prediction, last_event_id: str | None) -> int:
    """The seq a stream (re)opened with `last_event_id` starts after: -1 (from the start)
    without one; BadRequest for an id this stream never sent."""
    if last_event_id is None or not last_event_id.strip():
        return -1
    given = last_event_id.strip()
    stamp, _, seq = given.rpartition(":")
    expected = str(int(prediction.created))
    last = len(prediction.events) - 1
    sent = f"{expected}:0 to {expected}:{last} so far" if last >= 0 else "none sent yet"
    hint = f"send the id of the last event received ({sent}), or none to replay from the start"
    shown = repr(given[:80])
    if stamp != expected or not re.fullmatch(r"-?[0-9]{1,18}", seq):
        raise BadRequest(f"Last-Event-ID {shown} is not an event of this stream; {hint}")
    if int(seq) < 0:
        raise BadRequest(f"Last-Event-ID {shown} has a negative sequence number; {hint}")
    if int(seq) > last:
        raise BadRequest(f"Last-Event-ID {shown} is past the last event sent; {hint}")
    return int(seq)


async def follow(
    prediction: Prediction,
    after: int,
    heartbeat_s: float,
    should_drop: Callable[[int], bool] = lambda sent: False,
) -> AsyncIterator[bytes]:
    """The stream's bytes; `should_drop(events sent)` cuts it short (injected faults)."""
    seq, sent, last_write = after, 0, time.monotonic()
    if prediction.terminal and after >= len(prediction.events) - 1:
        if not should_drop(sent):  # resumed after the end: the client learns it is over
            yield format_event(prediction.events[-1])
        return
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
