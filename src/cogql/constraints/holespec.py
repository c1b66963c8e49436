"""HoleSpec: everything the engine needs to generate one hole, and how to finish its value.

A hole's constraints become one llguidance grammar (what text may be generated), token
limits, stop phrases, and post-processing (stop trimming, int conversion, ESCAPED, ERASE).
Stop phrases are enforced server-side when the engine's rule for them (active from
`min_tokens` on) is exactly LMQL's; a stop that is conditional on other constraints (§6.5), and
every constraint that no grammar expresses (`check`), is decided by the client
(runtime/streamed.py, runtime/token_by_token.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .values import HoleText, Predicate

_NUMBER = re.compile(r"\s?([0-9]+)")


@dataclass(frozen=True)
class Stop:
    phrase: str
    keep: bool  # STOPS_AT keeps the phrase, STOPS_BEFORE drops it
    # the stop is active only while this holds (its `and` siblings, §6.5); None: always
    guard: Predicate | None = field(default=None, compare=False, repr=False)
    # the siblings about the value's form (REGEX, ==, in) among them, and the others
    form: Predicate | None = field(default=None, compare=False, repr=False)
    rest: Predicate | None = field(default=None, compare=False, repr=False)

    def active(self, left: HoleText, whole: HoleText) -> bool:
        """Whether the stop may cut, leaving `left` of the text so far, `whole`. Its siblings
        hold on what it leaves; or, as LMQL checks them, form siblings hold on the text so far
        (a REGEX that requires the phrase) while the others (lengths, functions) hold on what
        the cut leaves, so a value is never shorter than asked for (LMQL's can be)."""
        if self.guard is None or self.guard.allows(left):
            return True
        if self.form is None or not self.form.nodes:
            return False
        return (self.rest is None or self.rest.allows(left)) and self.form.allows(whole)


@dataclass
class HoleSpec:
    regex: str | None = None
    token_options: list[list[int]] | None = None
    stops: list[Stop] = field(default_factory=list)
    max_tokens: int | None = None
    min_tokens: int = 0
    is_int: bool = False
    escaped: bool = False
    erase: bool = False
    check: Predicate | None = None  # constraints only Python can evaluate (the slow path)
    client_stops: bool = False  # stops decided by the client (their guards are not trivial)
    cut: int | None = None  # where a client-side stop cut the raw text, once one fired
    # all of the hole's constraints, for messages
    constraint: Predicate | None = field(default=None, compare=False, repr=False)

    @property
    def client_side(self) -> bool:
        """Whether the client must take part in generating the hole (runtime/streamed.py)."""
        return self.client_stops or self.check is not None

    def streamed_hold(self) -> int | None:
        """Trailing characters of a streamed hole that may still be cut away (a stop phrase in
        the making, the character that ends an INT), so a UI is never shown text the value
        loses; None: all of it (ESCAPED and ERASE rewrite the whole text)."""
        if self.escaped or self.erase:
            return None
        return max((len(s.phrase) for s in self.stops), default=0) + int(self.is_int)

    def server_stops(self) -> list[str]:
        """Stop phrases for the engine to enforce."""
        return [] if self.client_stops else [s.phrase for s in self.stops]

    def grammar(self) -> str | None:
        """The llguidance (lark) grammar, or None when any text is allowed."""
        if self.token_options is not None:
            alts = sorted({"".join(f"<[{t}]>" for t in opt) for opt in self.token_options})
            return "start: " + " | ".join(alts)
        if self.is_int:
            # LMQL's INT ends at the first non-digit: one character of it may follow the
            # number (trimmed by finish), so the model can end it as it would, with "," or "."
            return f"start: VALUE END?\nVALUE: {self.regex or '/.*/'}\nEND: /[^0-9]/"
        if self.regex is None:
            return None
        return f"start: VALUE\nVALUE: {self.regex}"

    def stop_cut(self, text: str, new_from: int, tokens: tuple[int, ...] = ()) -> int | None:
        """Where an active stop phrase that ends after `new_from` (inside the newest token, so
        phrases straddling token boundaries count) cuts `text`; the earliest wins. None when
        no stop fires.

        Whether a stop is active is `Stop.active`'s rule; once a value that `==` / `in`
        forces is complete, its form siblings see it as final: LMQL then cuts the forced
        value at a stop phrase its last token holds (`X == 'abc",'` with `STOPS_BEFORE(X, '"')`
        is `abc`)."""
        whole = self._forced_complete(text, tokens) or HoleText(text, tokens)
        best: tuple[int, int] | None = None
        for stop in self.stops:
            at = text.find(stop.phrase, max(new_from - len(stop.phrase) + 1, 0))
            while at >= 0 and (best is None or at < best[0]):
                cut = at + len(stop.phrase) if stop.keep else at
                if stop.active(HoleText(text[:cut], tokens), whole):
                    best = (at, cut)
                    break
                at = text.find(stop.phrase, at + 1)
        return None if best is None else best[1]

    def _forced_complete(self, text: str, tokens: tuple[int, ...]) -> HoleText | None:
        """The hole's text as a final value when it is one of the options `==` / `in`
        force (and so cannot grow); None otherwise."""
        if self.token_options is None or list(tokens) not in self.token_options:
            return None
        return HoleText(text, tokens, final=True)

    def final_text(self, raw: str, stops_from: int = 0) -> str:
        """The hole's text once its stop phrases cut it (and an INT lost the character that
        ended it). Stop phrases that end within the first `stops_from` characters (generated
        before min_tokens, when stops are inactive) are ignored."""
        if self.cut is not None:
            text = raw[: self.cut]
        elif self.client_stops:
            text = raw  # no client-side stop fired
        else:
            text = trim_at_stop(raw, self.stops, stops_from)
        return _integer(text)[1] if self.is_int else text

    def holds(self, raw: str, tokens: tuple[int, ...]) -> bool:
        """Whether the finished text satisfies the hole's constraints (value semantics, in
        Python): a grammar can be cut short by a token limit where it does not accept."""
        if self.constraint is None:
            return True
        return self.constraint.allows(HoleText(self.final_text(raw), tokens, final=True))

    def finish(self, raw: str, stops_from: int = 0) -> tuple[Any, str]:
        """(program value, prompt text) of a completed hole (see final_text)."""
        text = self.final_text(raw, stops_from)
        value: Any = _integer(text)[0] if self.is_int else text
        if self.escaped:
            text = text.replace("\n", "\\n").replace("\t", "\\t")
            value = text if isinstance(value, str) else value
        return value, "" if self.erase else text


def _integer(text: str) -> tuple[Any, str]:
    """(int value, prompt text) of an INT hole: the number with its leading space, without
    the character that ended it; LMQL's digits-only reading when the text is something else."""
    m = _NUMBER.match(text)
    if m is not None:
        return int(m.group(1)), m.group(0)
    digits = "".join(ch for ch in text if ch.isdigit())
    return (int(digits) if digits else text), text


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
