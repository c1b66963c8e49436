"""Whole-program hypotheses for the search decoders (beam, beam_sample, best_k), by replay.

A compiled query is a Python async function, and a running coroutine cannot be forked. So a
hypothesis is the list of hole values decided so far plus the tokens generated so far in the
hole it stands at. To move a hypothesis past a finished hole, its program runs again from the
start with the decided values fed back (no model calls) until it reaches its next undecided
hole, where the replay stops. Python code in the prompt section therefore runs again on every
replay, as it does in LMQL (which forks by replay too).

Inside a hole, a hypothesis grows one token at a time: one GENERATE with `max_tokens=1` and
`top_logprobs=n` per hypothesis, its constraints applied as LMQL does against any LMTP server
(the hole's grammar tracked here, its mask sent as ±100 `logit_bias`; stop phrases, token
limits and `min_tokens` checked here, and so are the constraints only Python can evaluate,
with the ending rules of runtime/hole_endings.py that token-by-token decoding uses for argmax
and sample). The ops of all hypotheses of a step are sent at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..constraints.holespec import HoleSpec
from ..constraints.values import HoleText
from ..errors import RunError
from ..grammar import GrammarMatcher, mask_bias
from ..language.compiler import CompiledQuery
from ..lmtp.client import LMTPError
from ..lmtp.emulation import allows, eos_of, token_mask
from ..lmtp.messages import Generate, TokenEvent
from .calls import model_call
from .events import HypothesisGrown, OnEvent, SearchStep, TextAppended, details_wanted
from .hole_endings import HoleEndings, Step, hole_limit
from .hole_strategy import HoleRequest
from .interpreter import Decoding, QueryRun
from .model import ConnectedModel
from .token_by_token import TOP_CANDIDATES, grammar_compiler


class ReplayError(RunError, RuntimeError):
    """A program that took another path when it was run again with the same hole values."""


@dataclass(frozen=True)
class Frontier:
    """The undecided hole a hypothesis stands at."""

    name: str
    spec: HoleSpec
    prompt: tuple[int, ...]  # token ids before the hole
    limit: int  # most tokens the hole may take (its own limit within the max_len budget)


@dataclass(frozen=True)
class Decided:
    """A finished hole of a hypothesis: its generated tokens, as the interpreter takes them."""

    name: str
    tokens: tuple[int, ...]
    reason: str  # "stop" or "length", like a GENERATE's finish reason
    cut: int | None = None  # where a stop phrase cut the text (HoleSpec.cut), if one did


@dataclass(frozen=True)
class Hypothesis:
    decided: tuple[Decided, ...]
    logprob: float  # sum of the log-probs of every token chosen or scored so far
    run: QueryRun  # the replay that reached `frontier` (or the end of the program)
    frontier: Frontier | None  # None once the program has finished
    tokens: tuple[int, ...] = ()  # generated so far in the frontier hole
    id: int = 0  # its number in the search, and the one it grew from (the search tree)
    parent: int | None = None

    @property
    def complete(self) -> bool:
        return self.frontier is None


class _Suspended(BaseException):
    """Unwinds a replayed program at its first undecided hole. A BaseException, so that a
    query's own `except Exception` cannot swallow it."""

    def __init__(self, frontier: Frontier) -> None:
        super().__init__(frontier.name)
        self.frontier = frontier


class Replay:
    """The hole strategy of a replayed run: decided holes come back, the next one suspends."""

    def __init__(self, decided: tuple[Decided, ...], *, emit_values: bool = False) -> None:
        self.decided = list(decided)
        self.emit_values = emit_values
        self.fill_index: list[int] = []  # per hole handed out: its index among the run's fills
        self._next = 0

    async def generate(self, run: QueryRun, hole: HoleRequest) -> tuple[list[int], str]:
        name, spec = hole.name, hole.spec
        k = self._next
        self._next += 1
        self.fill_index.append(run.state.holes_filled)
        if k == len(self.decided):
            limit = hole_limit(spec, hole.budget)
            if limit > 0:
                raise _Suspended(Frontier(name, spec, tuple(run.state.ids), limit))
            self.decided.append(Decided(name, (), "length"))  # nothing to choose
        d = self.decided[k]
        if d.name != name:
            raise ReplayError(
                f"replaying the query reached hole {name} where it first reached {d.name}: "
                "beam-type decoders re-run the program and need it to be deterministic"
            )
        if d.cut is not None:
            spec.cut = d.cut  # as the client-side generator leaves it for HoleSpec.finish
        if self.emit_values and d.tokens:
            run.emit(TextAppended(run.conn.tokenizer.decode(list(d.tokens)), name, run.index))
        return list(d.tokens), d.reason

    def settle(self, run: QueryRun, name: str, prompt_text: str) -> None:
        """A replay reports a hole's text as it hands it out (when it reports at all)."""


class Explorer:
    """Creates, extends and finishes the hypotheses of one query on one connection."""

    def __init__(
        self,
        query: CompiledQuery,
        conn: ConnectedModel,
        scope: dict[str, Any],
        decoding: Decoding,
        on_event: OnEvent | None = None,
    ) -> None:
        self.query = query
        self.conn = conn
        self.scope = scope
        self.decoding = decoding
        self.on_event = on_event
        self.eos = eos_of(conn.tokenizer, "beam search and client-side sampling")
        self.details = on_event is not None and details_wanted() > 0  # report the tree
        self._ids = itertools.count(1)

    # ---- program replay -----------------------------------------------------------------

    async def start(self) -> Hypothesis:
        """The program run up to its first hole (or to its end, when it has none)."""
        root = replace(await self._replay((), 0.0), id=next(self._ids))
        self._grown(root, None, None, 0)
        return root

    def _grown(self, h: Hypothesis, variable: str | None, token: int | None, step: int) -> None:
        """The tree's new node `h`, grown by `token` (None: the root; EOS adds no text)."""
        if self.details and self.on_event is not None:
            text = ""
            if token is not None and token != self.eos:
                text = self.conn.tokenizer.decode([token])
            self.on_event(
                HypothesisGrown(h.id, h.parent, variable, text, h.logprob, h.complete, step)
            )

    def kept(
        self, step: int, open_: list[Hypothesis], done: list[Hypothesis], final: bool = False
    ) -> None:
        """A search step kept these hypotheses (`final`: these are the results)."""
        if self.details and self.on_event is not None:
            kept = tuple(h.id for h in open_)
            self.on_event(SearchStep(step, kept, tuple(h.id for h in done), final))

    async def _replay(self, decided: tuple[Decided, ...], logprob: float) -> Hypothesis:
        replay = Replay(decided)
        run = QueryRun(self.query, self.conn, self.scope, self.decoding, holes=replay, quiet=True)
        try:
            await run.run_program()
        except _Suspended as s:
            h = Hypothesis(tuple(replay.decided), logprob, run, s.frontier)
        else:
            h = Hypothesis(tuple(replay.decided), logprob, run, None)
        if decided:
            h = await self._score_program_text(h, replay.fill_index[len(decided) - 1])
        return h

    async def _score_program_text(self, h: Hypothesis, fill: int) -> Hypothesis:
        """Add the log-probs of the program text that follows the hole finished last: LMQL's
        beam decoders rank whole sequences, inserted text included."""
        end = h.run.state.hole_end(fill)
        ids = list(h.frontier.prompt) if h.frontier is not None else h.run.state.ids
        if len(ids) <= end:
            return h
        started = time.perf_counter()
        (scores,) = await self.conn.client.score(ids[:end], [ids[end:]])
        self._called("SCORE", end, len(ids) - end, started)
        return replace(h, logprob=h.logprob + sum(scores))

    async def result(self, h: Hypothesis, rank: int) -> Any:
        """The query's result for a finished hypothesis: its program replayed once more, now
        reporting events and warnings as result number `rank`."""
        replay = Replay(h.decided, emit_values=True)
        run = QueryRun(
            self.query, self.conn, self.scope, self.decoding, self.on_event, rank, holes=replay
        )
        run.state.add_logprob(h.logprob)  # the search's score is the result's log-prob
        try:
            value = await run.run_program()
        except _Suspended as s:
            raise ReplayError(
                f"replaying the query reached hole {s.frontier.name} after its program had "
                "finished: beam-type decoders re-run the program and need it to be deterministic"
            ) from None
        return await run.finish(value)

    # ---- growing a hole -------------------------------------------------------------------

    async def expand(
        self,
        h: Hypothesis,
        width: int,
        sampling: Decoding | None = None,
        place: tuple[int, ...] = (),
    ) -> list[Hypothesis]:
        """The children of `h`: its best `width` continuations under the hole's constraints
        (or `width` sampled ones, seeded by `place`, the hypothesis' position in the search).
        A child whose hole finishes moves on to its next hole."""
        assert h.frontier is not None
        allowed = self._allowed(h)
        if allowed is not None and allowed.sum() <= 1:
            # a single choice (or none: conflicting constraints end the hole) costs no call
            token = int(np.flatnonzero(allowed)[0]) if allowed.any() else self.eos
            choices = [(token, 0.0)]
        elif sampling is None:
            # a Python check may reject candidates: ask for more, keep the best `width`
            wanted = width if h.frontier.spec.check is None else max(width, TOP_CANDIDATES)
            choices = await self._top(h, allowed, wanted)
        else:
            choices = await self._samples(h, allowed, width, sampling, place)
        endings = HoleEndings(h.frontier.spec, self.conn.tokenizer, h.frontier.limit)
        before = self.conn.tokenizer.decode(list(h.tokens))
        steps = [(t, lp, self._take(h, endings, before, t)) for t, lp in choices]
        kept = [(t, lp, step) for t, lp, step in steps if step is not None][:width]
        at = place[0] if place else 0
        return list(await asyncio.gather(*(self._child(h, *k, at) for k in kept)))

    async def _child(
        self, h: Hypothesis, token: int, logprob: float, step: Step, at: int = 0
    ) -> Hypothesis:
        """`h` after `token`, which `step` says ends its hole or not (`at`: the search step)."""
        assert h.frontier is not None
        tokens = h.tokens if token == self.eos else (*h.tokens, token)
        if step.reason is None:
            child = replace(h, tokens=tokens, logprob=h.logprob + logprob)
        else:
            done = Decided(h.frontier.name, tokens, step.reason, step.cut)
            child = await self._replay((*h.decided, done), h.logprob + logprob)
        child = replace(child, id=next(self._ids), parent=h.id)
        self._grown(child, h.frontier.name, token, at)
        return child

    def _take(self, h: Hypothesis, endings: HoleEndings, before: str, token: int) -> Step | None:
        """Whether and why the hole ends after `token` (`before`: the hole's text so far), as
        the engine and token-by-token decoding decide it; None when the token may not be taken
        here, which includes a partial text that `HoleSpec.check` already rejects."""
        assert h.frontier is not None
        step = endings.after(h.tokens, token, before)
        spec = h.frontier.spec
        if step is None or step.reason is not None or spec.check is None:
            return step
        tokens = (*h.tokens, token)
        text = self.conn.tokenizer.decode(list(tokens))
        return None if spec.check(HoleText(text, tokens)) is False else step

    def _allowed(self, h: Hypothesis) -> np.ndarray | None:
        """The hole's mask after the hypothesis' tokens; None when any token may follow."""
        assert h.frontier is not None
        spec = h.frontier.spec
        matcher = self._matcher(spec, h.tokens)
        vocab = self.conn.tokenizer.vocab_size
        return token_mask(matcher, len(h.tokens), spec.min_tokens, self.eos, vocab)

    def _matcher(self, spec: HoleSpec, tokens: tuple[int, ...]) -> GrammarMatcher | None:
        grammar = spec.grammar()
        if grammar is None:
            return None
        matcher = grammar_compiler(self.conn.tokenizer).matcher(grammar)
        matcher.consume(list(tokens))
        return matcher

    async def _top(
        self, h: Hypothesis, allowed: np.ndarray | None, width: int
    ) -> list[tuple[int, float]]:
        event = await self._step(h, allowed, top_logprobs=width)
        top = event.top_logprobs or {event.token: event.logprob}
        ranked = sorted(top.items(), key=lambda kv: -kv[1])
        return [(t, lp) for t, lp in ranked if allows(allowed, t)][:width]

    async def _samples(
        self,
        h: Hypothesis,
        allowed: np.ndarray | None,
        width: int,
        s: Decoding,
        place: tuple[int, ...],
    ) -> list[tuple[int, float]]:
        """`width` draws; a token drawn twice is one child."""
        seeds = [None if s.seed is None else _mix(s.seed, *place, i) for i in range(width)]
        events = await asyncio.gather(*(self._step(h, allowed, s, sd) for sd in seeds))
        drawn: dict[int, float] = {}
        for e in events:
            if allows(allowed, e.token):
                drawn.setdefault(e.token, e.logprob)
        return list(drawn.items())

    async def _step(
        self,
        h: Hypothesis,
        allowed: np.ndarray | None,
        sampling: Decoding | None = None,
        seed: int | None = None,
        top_logprobs: int = 1,
    ) -> TokenEvent:
        """One GENERATE of a single token after the hypothesis' prompt and tokens."""
        assert h.frontier is not None
        prompt = [*h.frontier.prompt, *h.tokens]
        extra = {}
        if sampling is not None:
            extra = {k: v for k, v in (("top_k", sampling.top_k), ("top_p", sampling.top_p)) if v}
        op = Generate(
            stream_id=None,
            model="",
            prompt=prompt,
            max_tokens=1,
            temperature=sampling.temperature if sampling is not None else 0.0,
            logit_bias=mask_bias(allowed),
            top_logprobs=top_logprobs,
            extra=extra,
            seed=seed,
        )
        started = time.perf_counter()
        events = [e async for e in self.conn.client.generate(op)]
        if not events:
            raise LMTPError("the model answered a one-token GENERATE with no token")
        self._called("GENERATE", len(prompt), 1, started)
        return events[-1]

    def _called(self, kind: str, prompt_tokens: int, tokens: int, started: float) -> None:
        if self.on_event is not None:
            self.on_event(model_call(kind, prompt_tokens, tokens, started))


def _mix(*parts: int) -> int:
    """A seed for one draw, from the user's seed and the draw's place in the search."""
    value = 0
    for p in parts:
        value = (value * 1_000_003 + p) % (2**31)
    return value
