"""HoleSpec: everything the engine needs to generate one hole, and how to finish its value.

A hole's constraints become one llguidance grammar (what text may be generated), token
limits, server-side stop phrases, and post-processing (stop trimming, int conversion).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stop:
    phrase: str
    keep: bool  # STOPS_AT keeps the phrase, STOPS_BEFORE drops it


@dataclass
class HoleSpec:
    regex: str | None = None
    token_options: list[list[int]] | None = None
    stops: list[Stop] = field(default_factory=list)
    max_tokens: int | None = None
    min_tokens: int = 0
    is_int: bool = False

    def grammar(self) -> str | None:
        """The llguidance (lark) grammar, or None when any text is allowed."""
        if self.token_options is not None:
            alts = sorted({"".join(f"<[{t}]>" for t in opt) for opt in self.token_options})
            return "start: " + " | ".join(alts)
        if self.regex is None:
            return None
        return f"start: VALUE\nVALUE: {self.regex}"

    def finish(self, raw: str, stops_from: int = 0) -> tuple[Any, str]:
        """(program value, prompt text) of a completed hole. Stop phrases that end within the
        first `stops_from` characters (generated before min_tokens, when stops are inactive)
        are ignored."""
        text = trim_at_stop(raw, self.stops, stops_from)
        if self.is_int:
            digits = "".join(ch for ch in text if ch.isdigit())
            if digits:
                number = int(digits)
                return number, str(number)
        return text, text


def trim_at_stop(raw: str, stops: list[Stop], start: int = 0) -> str:
    """Cut at the earliest occurrence of any stop phrase (LMQL's recommended semantics) that
    ends after `start`."""
    best: tuple[int, Stop] | None = None
    for stop in stops:
        at = raw.find(stop.phrase, max(start - len(stop.phrase) + 1, 0))
        if at >= 0 and (best is None or at < best[0]):
            best = (at, stop)
    if best is None:
        return raw
    at, stop = best
    return raw[: at + len(stop.phrase)] if stop.keep else raw[:at]
