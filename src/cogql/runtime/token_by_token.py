"""Token-by-token decoding, for holes with constraints only Python can evaluate (a user function
in `where`, arithmetic over lengths, ...; `HoleSpec.check`).

The hole is generated one token per GENERATE (`max_tokens=1`) that also returns the model's top
candidates under the grammar part of the constraints (tracked here with llguidance and sent as
±100 `logit_bias`). The client evaluates the predicate on the text each candidate would make and
takes the model's favourite that keeps it true; it ends the hole only where the predicate holds
on the final text, and backtracks to the next candidate when a branch cannot end well. That costs
one model call (one round trip) per token plus Python calls per candidate, which is why only
constraints no grammar can express take this path. The result always satisfies the predicate;
when no value within the token limit does, it is an error rather than a wrong value (LMQL
returns the wrong value). It uses only the engine's ordinary GENERATE op, so it works on every
transport.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..constraints.holespec import HoleSpec
from ..constraints.values import HoleText, Predicate
from ..errors import RunError, point_at
from ..grammar import GrammarCompiler, GrammarMatcher, mask_bias
from ..lmtp.emulation import allows, eos_of, token_mask
from ..lmtp.messages import Generate
from ..tokenizer import Tokenizer
from .calls import model_call
from .events import details_wanted
from .hole_endings import HoleEndings, hole_limit
from .hole_strategy import HoleRequest, report_rest

if TYPE_CHECKING:
    from .interpreter import QueryRun
    from .token_details import SearchSteps

TOP_CANDIDATES = 16  # candidates per step
_compilers: dict[int, tuple[Tokenizer, GrammarCompiler]] = {}


class ConstraintUnsatisfiedError(RunError):
    """The model produced no value that satisfies a constraint checked in Python; `lineno`
    and `offset` (1-based) point at that constraint in the query's source."""

    def __init__(self, message: str, *, source: str, lineno: int, col: int) -> None:
        self.message = message
        self.source_text = source
        self.lineno = max(lineno, 1)
        self.offset = col + 1
        super().__init__(point_at(message, source, self.lineno, self.offset))


def grammar_compiler(tokenizer: Tokenizer) -> GrammarCompiler:
    """One compiler per tokenizer (building llguidance's tokenizer takes a while)."""
    entry = _compilers.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        entry = (tokenizer, GrammarCompiler(tokenizer))
        _compilers[id(tokenizer)] = entry
    return entry[1]


class TokenByToken:
    """The hole strategy for `HoleSpec.check`: one GENERATE per token, with backtracking."""

    async def generate(self, run: QueryRun, hole: HoleRequest) -> tuple[list[int], str]:
        return await _Search(run, hole.name, hole.spec, hole.budget).generate()

    def settle(self, run: QueryRun, name: str, prompt_text: str) -> None:
        report_rest(run, name, prompt_text)  # all of it: nothing is reported while deciding


@dataclass
class _Frame:
    """The choices at one position of the hole, best first; `next` is the one to try next."""

    choices: list[int]
    next: int = 0


class _Search:
    """Token-by-token generation of one hole, backtracking where a branch cannot end well."""

    def __init__(self, run: QueryRun, name: str, spec: HoleSpec, budget: int) -> None:
        self.run = run
        self.name = name
        self.spec = spec
        self.check = spec.check or Predicate(None, ())  # type: ignore[arg-type]
        self.tokenizer = run.conn.tokenizer
        self.eos = eos_of(self.tokenizer, "constraints decoded token by token")
        self.limit = hole_limit(spec, budget)
        self.endings = HoleEndings(spec, self.tokenizer, self.limit, accepts=self._accepts)
        self.max_calls = 2 * self.limit + 16
        self.requests = 0
        grammar = spec.grammar()
        self.compiler = grammar_compiler(self.tokenizer) if grammar else None
        self.grammar = grammar
        self._matcher: tuple[GrammarMatcher, list[int]] | None = None
        self.logprobs: dict[tuple[int, ...], float] = {}
        self.details: SearchSteps | None = None
        if run.on_event is not None and details_wanted():
            from .token_details import SearchSteps

            self.details = SearchSteps(run, name, self.tokenizer)

    async def generate(self) -> tuple[list[int], str]:
        tokens: list[int] = []
        frames: list[_Frame] = []
        while True:
            if len(frames) == len(tokens):
                frames.append(await self._frame(tokens))
            frame = frames[-1]
            if frame.next >= len(frame.choices):
                frames.pop()
                if not tokens:
                    raise self._unsatisfied()
                tokens.pop()
                continue
            token = frame.choices[frame.next]
            frame.next += 1
            step = self.endings.after(tokens, token)
            if step is None:
                continue
            self.spec.cut = step.cut
            if step.reason is not None:
                return self._done(tokens, token, step.reason)
            tokens.append(token)

    # ---- choosing -------------------------------------------------------------------------
    def _order(self, tokens: list[int], ranked: list[int], eos_allowed: bool) -> list[int]:
        """Candidates that keep the predicate true (ending only where it holds on the final
        text), then ending here, then the rest: they may make it true later."""
        text = self.tokenizer.decode(tokens)
        can_end = (
            eos_allowed
            and len(tokens) >= self.spec.min_tokens
            and self.check.allows(HoleText(text, tuple(tokens), final=True))
        )
        good: list[int] = []
        later: list[int] = []
        for t in ranked:
            if t == self.eos:
                if can_end:
                    good.append(t)
                continue
            new = [*tokens, t]
            hole = HoleText(self.tokenizer.decode(new), tuple(new))
            (good if self.check(hole) is not False else later).append(t)
        if can_end and self.eos not in good:
            good.append(self.eos)
        return good + later

    async def _frame(self, tokens: list[int]) -> _Frame:
        allowed = self._allowed(tokens)
        eos_allowed = allowed is None or bool(allowed[self.eos])
        if allowed is not None and allowed.sum() <= 1:
            ranked = [int(i) for i in np.flatnonzero(allowed)]  # forced: no model call
            if self.details is not None:
                self.details.forced(tokens, allowed)
        else:
            ranked = await self._ranked(tokens, allowed)
        return _Frame(self._order(tokens, ranked, eos_allowed))

    def _matched(self, tokens: list[int]) -> GrammarMatcher | None:
        """The grammar's matcher after `tokens` (rebuilt after a backtrack)."""
        if self.compiler is None or self.grammar is None:
            return None
        if self._matcher is None or self._matcher[1] != tokens[: len(self._matcher[1])]:
            self._matcher = (self.compiler.matcher(self.grammar), [])
        matcher, fed = self._matcher
        matcher.consume(tokens[len(fed) :])
        self._matcher = (matcher, list(tokens))
        return matcher

    def _accepts(self, tokens: list[int]) -> bool:
        matcher = self._matched(tokens)
        return matcher is None or matcher.is_accepting()

    def _allowed(self, tokens: list[int]) -> np.ndarray | None:
        matcher = self._matched(tokens)
        vocab = self.tokenizer.vocab_size
        return token_mask(matcher, len(tokens), self.spec.min_tokens, self.eos, vocab)

    async def _ranked(self, tokens: list[int], allowed: np.ndarray | None) -> list[int]:
        """The model's candidates at this position, best first (the sampled one first)."""
        if self.requests >= self.max_calls:
            raise self._unsatisfied()
        self.requests += 1
        run, d = self.run, self.run.decoding
        seed = run.hole_seed()
        op = Generate(
            stream_id=None,
            model="",
            prompt=[*run.state.ids, *tokens],
            max_tokens=1,
            temperature=d.temperature,
            logit_bias=mask_bias(allowed),
            top_logprobs=TOP_CANDIDATES,
            extra=d.extra(),
            seed=None if seed is None else (seed + 7919 * len(tokens)) % (2**31),
        )
        started = time.perf_counter()
        events = [e async for e in run.conn.client.generate(op)]
        run.state.count_call()
        call = model_call("GENERATE", len(op.prompt), 1, started, run.index)
        run.emit(call)
        first = events[0]
        top = dict(first.top_logprobs or {})
        top.setdefault(first.token, first.logprob)
        if self.details is not None:
            self.details.ranked(tokens, top, allowed, call.id)
        order = [first.token, *sorted(top, key=lambda t: -top[t])]
        ranked = [t for t in dict.fromkeys(order) if allows(allowed, t)]
        for t in ranked:
            self.logprobs[(*tokens, t)] = top[t]
        return ranked

    # ---- results --------------------------------------------------------------------------
    def _done(self, tokens: list[int], token: int, reason: str) -> tuple[list[int], str]:
        final = tokens if token == self.eos else [*tokens, token]
        logprobs = (self.logprobs.get(tuple(final[: i + 1]), 0.0) for i in range(len(final)))
        self.run.state.add_logprob(sum(logprobs))
        if self.details is not None:
            self.details.report(final, self.logprobs)
        return final, reason

    def _unsatisfied(self) -> ConstraintUnsatisfiedError:
        where = self.check if self.check.nodes else self.spec.constraint
        lineno, col = where.position if where is not None else (1, 0)
        described = where.describe() if where is not None else "its constraints"
        return ConstraintUnsatisfiedError(
            f"the model produced no value of {self.name} that satisfies "
            f"`{described}` within {self.limit} tokens ({self.requests} model calls)",
            source=self.run.query.source,
            lineno=lineno,
            col=col,
        )
