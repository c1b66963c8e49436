"""Faults to inject on demand, so clients can be tested against Replicate's bad days: a burst
of 429s on prediction creates (with Retry-After), 5xx answers to creates (before or after the
prediction was made: a client that retries must not run it twice), and SSE streams that drop
mid-prediction. Set from any thread (tests drive the emulator from their own); read on the
event loop."""

from __future__ import annotations

import threading


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._throttles = 0
        self._retry_after = 1
        self._drops = 0
        self._drop_after = 0
        self._failures = 0
        self._failure: tuple[int, bool] = (500, False)
        self.throttled = 0  # how many 429s were answered
        self.dropped = 0  # how many streams were cut
        self.failed = 0  # how many creates answered 5xx

    def throttle_creates(self, times: int, retry_after: int = 1) -> None:
        """The next `times` prediction creates answer 429 with `Retry-After: retry_after`."""
        with self._lock:
            self._throttles, self._retry_after = times, retry_after

    def fail_creates(self, times: int, status: int = 500, *, after_create: bool = False) -> None:
        """The next `times` prediction creates answer `status` (5xx); with `after_create` the
        prediction is made and runs all the same (the answer was lost on the way back)."""
        with self._lock:
            self._failures, self._failure = times, (status, after_create)

    def drop_streams(self, after_events: int, times: int = 1) -> None:
        """The next `times` SSE streams close after `after_events` events, with no `done`."""
        with self._lock:
            self._drops, self._drop_after = times, after_events

    def take_throttle(self) -> int | None:
        """Retry-After seconds when this create is to be refused, else None."""
        with self._lock:
            if self._throttles <= 0:
                return None
            self._throttles -= 1
            self.throttled += 1
            return self._retry_after

    def take_failure(self) -> tuple[int, bool] | None:
        """(status, after_create) when this create is to fail, else None."""
        with self._lock:
            if self._failures <= 0:
                return None
            self._failures -= 1
            self.failed += 1
            return self._failure

    def take_drop(self) -> int | None:
        """The number of events after which this new stream is to be cut, else None."""
        with self._lock:
            if self._drops <= 0:
                return None
            self._drops -= 1
            self.dropped += 1
            return self._drop_after

    def clear(self) -> None:
        with self._lock:
            self._throttles = self._drops = self._failures = 0
