"""Faults to inject on demand, so clients can be tested against Replicate's bad days: a burst
of 429s on prediction creates (with Retry-After), 5xx answers to creates (before or after the
prediction was made: a client that retries must not run it twice), and SSE streams that drop
mid-prediction. Set from any thread (tests drive the emulator from their own); read on the
event loop."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class _Budget:
    """How many more times a fault is to happen, and how many times it did."""

    left: int = 0
    used: int = 0

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        self.used += 1
        return True


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._throttles, self._failures, self._drops = _Budget(), _Budget(), _Budget()
        self._retry_after = 1
        self._failure: tuple[int, bool] = (500, False)
        self._drop_after = 0

    @property
    def throttled(self) -> int:
        """How many 429s were answered."""
        return self._throttles.used

    @property
    def failed(self) -> int:
        """How many creates answered 5xx."""
        return self._failures.used

    @property
    def dropped(self) -> int:
        """How many streams were cut."""
        return self._drops.used

    def throttle_creates(self, times: int, retry_after: int = 1) -> None:
        """The next `times` prediction creates answer 429 with `Retry-After: retry_after`."""
        with self._lock:
            self._throttles.left, self._retry_after = times, retry_after

    def fail_creates(self, times: int, status: int = 500, *, after_create: bool = False) -> None:
        """The next `times` prediction creates answer `status` (5xx); with `after_create` the
        prediction is made and runs all the same (the answer was lost on the way back)."""
        with self._lock:
            self._failures.left, self._failure = times, (status, after_create)

    def drop_streams(self, after_events: int, times: int = 1) -> None:
        """The next `times` SSE streams close after `after_events` events, with no `done`."""
        with self._lock:
            self._drops.left, self._drop_after = times, after_events

    def take_throttle(self) -> int | None:
        """Retry-After seconds when this create is to be refused, else None."""
        with self._lock:
            return self._retry_after if self._throttles.take() else None

    def take_failure(self) -> tuple[int, bool] | None:
        """(status, after_create) when this create is to fail, else None."""
        with self._lock:
            return self._failure if self._failures.take() else None

    def take_drop(self) -> int | None:
        """The number of events after which this new stream is to be cut, else None."""
        with self._lock:
            return self._drop_after if self._drops.take() else None

    def clear(self) -> None:
        with self._lock:
            self._throttles.left = self._drops.left = self._failures.left = 0
