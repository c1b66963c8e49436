"""Log lines a client cannot forge or flood: client-supplied text is escaped, and a line that
repeats (a client sending thousands of bad frames, asyncio failing to accept when file
descriptors run out) is let through a few times per window, then counted and summarized."""

from __future__ import annotations

import logging
import time

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x85: "\\x85",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def printable(text: object, limit: int = 200) -> str:
    """`text` on one line: control and line-separator characters escaped, cut at `limit`."""
    out = str(text).translate(_CONTROL)
    return out if len(out) <= limit else f"{out[: limit - 3]}..."


REPEATS = {"repeats": True}  # `extra=` for info lines a client can make the server repeat


class RepeatFilter(logging.Filter):
    """At most `burst` records per (logger, level, message template) per `window` seconds;
    the next one let through says how many were dropped. Applies to warnings and errors, and
    to records logged with `extra=REPEATS`; one line per finished request is never dropped."""

    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self._seen: dict[tuple[str, int, str], list[float | int]] = {}  # start, passed, dropped

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and not getattr(record, "repeats", False):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.window:
            dropped = int(state[2]) if state else 0
            self._seen[key] = [now, 1, 0]
            if len(self._seen) > 1024:  # keys are templates, but bound them anyway
                self._seen = {key: self._seen[key]}
            if dropped:
                record.msg = f"{record.msg} [{dropped} similar lines suppressed]"
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False


def limit_repeats(logger: logging.Logger | None = None) -> RepeatFilter:
    """Install one RepeatFilter on the handlers of `logger` (the root logger by default), so
    that it sees records from every library; idempotent."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        for existing in handler.filters:
            if isinstance(existing, RepeatFilter):
                return existing
    repeat = RepeatFilter()
    for handler in target.handlers:
        handler.addFilter(repeat)
    return repeat


def log_to_stderr(level: str) -> None:
    """A server's log: cogql's own lines at `level`, libraries' (websockets, uvicorn, torch)
    only when they warn, each with its time."""
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cogql").setLevel(level.upper())
