"""Holes generated as one streamed GENERATE, and the choice of strategy per hole.

A hole costs one GENERATE carrying its whole grammar, stop phrases and token limit
(`SingleGenerate`). A stop phrase inside an `and` is active only while its siblings hold (§6.5);
when a sibling is not a token minimum (`len(X) > 20`, `REGEX(...)`, a user function...) the
engine's rule cannot express that, so the hole is streamed without server-side stops and the
client checks after each token whether an active stop phrase ended inside it, ending the hole
there and cancelling the stream (`WatchedStream`). Constraints only Python can evaluate take
token-by-token decoding (runtime/token_by_token.py), and so does a hole whose token limit cut
its text where the grammar does not accept it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

from ..lmtp.client import Followup, GenerateAfter
from ..lmtp.messages import Generate
from .calls import model_call
from .events import details_wanted, next_call_id
from .hole_endings import hole_limit, stop_cut
from .hole_strategy import HoleRequest, HoleStrategy, report_rest
from .token_by_token import TokenByToken
from .token_details import TokenDetails

if TYPE_CHECKING:
    from ..constraints.holespec import HoleSpec
    from .interpreter import QueryRun

Until = Callable[[list[int], str], bool]  # (tokens so far, their text) -> stop now?


class SingleGenerate:
    """The hole is one GENERATE; the engine enforces all of its constraints."""

    async def generate(self, run: QueryRun, hole: HoleRequest) -> tuple[list[int], str]:
        spec = hole.spec
        tokens, reason = await self._stream(run, hole)
        at_limit = spec.max_tokens is not None and len(tokens) >= spec.max_tokens
        grammar = spec.regex is not None or spec.token_options is not None
        if reason == "length" and at_limit and grammar:
            raw = run.conn.tokenizer.decode(tokens)
            if not spec.holds(raw, tuple(tokens)):  # e.g. `not X in [...]` under a limit
                spec.cut = None
                return await TokenByToken().generate(run, hole)
        return tokens, reason

    def settle(self, run: QueryRun, name: str, prompt_text: str) -> None:
        report_rest(run, name, prompt_text)

    def until(self, spec: HoleSpec) -> Until | None:
        return None

    async def _stream(self, run: QueryRun, hole: HoleRequest) -> tuple[list[int], str]:
        spec = hole.spec
        op = run.hole_op(spec, hole_limit(spec, hole.budget), run.state.ids, run.hole_seed())
        sent_ahead = run.ahead.take(op)
        then = (
            []
            if sent_ahead is not None or hole.plan is None
            else run.ahead.followups(run, *hole.plan)
        )
        until = self.until(spec)
        return await stream(run, hole.name, op, until, spec.streamed_hold(), then, sent_ahead)


class WatchedStream(SingleGenerate):
    """One GENERATE without server-side stops; the client ends it where an active stop phrase
    ends (a stop conditional on its siblings)."""

    def until(self, spec: HoleSpec) -> Until | None:
        seen = {"text": ""}

        def fired(tokens: list[int], text: str) -> bool:
            before, seen["text"] = seen["text"], text
            spec.cut = stop_cut(spec, before, text, tokens)
            return spec.cut is not None

        return fired


class Generation:
    """The strategy of a run that generates its holes: per hole, the cheapest one that enforces
    its constraints."""

    single = SingleGenerate()
    watched = WatchedStream()
    token_by_token = TokenByToken()

    def pick(self, spec: HoleSpec) -> HoleStrategy:
        if spec.check is not None:
            return self.token_by_token
        return self.watched if spec.client_stops else self.single

    async def generate(self, run: QueryRun, hole: HoleRequest) -> tuple[list[int], str]:
        return await self.pick(hole.spec).generate(run, hole)

    def settle(self, run: QueryRun, name: str, prompt_text: str) -> None:
        report_rest(run, name, prompt_text)


async def stream(
    run: QueryRun,
    name: str,
    op: Generate,
    until: Until | None = None,
    hold: int | None = 0,
    then: Sequence[Followup] = (),
    sent_ahead: GenerateAfter | None = None,
) -> tuple[list[int], str]:
    """Run `op` (or read `sent_ahead`, the same request sent ahead), with `then` in its
    message, reporting its text as it arrives but the last `hold` characters (None: nothing),
    which are reported once the value is known (`settle`); `until(tokens, text)` may end it
    early (the stream is then cancelled server-side)."""
    tokenizer = run.conn.tokenizer
    eos = {tokenizer.eos_token_id}
    tokens: list[int] = []
    reason = "stop"
    ended = False
    started = time.perf_counter()
    if run.on_event is None:
        hold = None  # nobody listens: no text to work out per token
    call_id = next_call_id()
    details = None
    if run.on_event is not None and details_wanted():
        details = TokenDetails(run, name, op, call_id)
    source = sent_ahead.events() if sent_ahead else run.conn.client.generate(op, then)
    async with aclosing(source) as events:
        async for event in events:
            if event.token not in eos or event.finish_reason is None:
                if details is not None:
                    details.token(event, tokens)
                tokens.append(event.token)
                if run.on_tokens is not None:
                    run.on_tokens(tokens)
            reason = event.finish_reason or reason
            ended = event.finish_reason is not None
            run.state.add_logprob(event.logprob)
            watched = until is not None and event.token not in eos
            text = tokenizer.decode(tokens) if watched or hold is not None else ""
            if until is not None and watched and until(tokens, text):
                reason = "stop"
                break
            if event.finish_reason is None and hold is not None:
                _show_settled(run, name, text, hold)
    run.ahead.read(op, tokens, ended, then)
    run.state.count_call()
    ahead = sent_ahead is not None
    call = model_call("GENERATE", len(op.prompt), len(tokens), started, run.index,
                      call_id=call_id, ahead=ahead)  # fmt: skip
    run.emit(call)
    return tokens, reason


def _show_settled(run: QueryRun, name: str, text: str, hold: int) -> None:
    if text.endswith("\ufffd"):  # a character split across tokens
        return
    settled = text[: max(len(text) - hold, 0)]
    if len(settled) > len(run.shown) and settled.startswith(run.shown):
        run.report(name, settled[len(run.shown) :])
