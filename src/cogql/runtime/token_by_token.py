"""Holes whose constraints the engine cannot enforce alone: the client takes part.

Both paths below use only the engine's ordinary GENERATE op, so they work on every transport.

* **Conditional stops** (§6.5): a stop phrase inside an `and` is active only while its siblings
  hold, and when a sibling is not a token minimum (`len(X) > 20`, `REGEX(...)`, a user
  function...) the engine's rule cannot express that. The hole is then one GENERATE streamed
  as usual, without server-side stops; after each token the client checks whether an active
  stop phrase ended inside it and, if so, ends the hole there and cancels the stream.

* **Constraints only Python can evaluate** (a user function in `where`, arithmetic over
  lengths, ...; `HoleSpec.check`): the slow path. The hole is generated one token per GENERATE
  (`max_tokens=1`) that also returns the model's top candidates under the grammar part of the
  constraints (tracked here with llguidance and sent as ±100 `logit_bias`). The client evaluates
  the predicate on the text each candidate would make and takes the model's favourite that keeps
  it true; it ends the hole only where the predicate holds on the final text, and backtracks to
  the next candidate when a branch cannot end well. That costs one model call (one round trip)
  per token plus Python calls per candidate, which is why only constraints no grammar can
  express take this path. The result always satisfies the predicate; when no value within the
  token limit does, it is an error rather than a wrong value (LMQL returns the wrong value).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..constraints.holespec import HoleSpec
from ..constraints.values import ConstraintError, HoleText, Predicate
from ..engine.kvcache import common_prefix
from ..engine.masks import GrammarCompiler, GrammarMatcher
from ..lmtp.emulation import mask_bias
from ..lmtp.messages import Generate
from ..tokenizer import Tokenizer
from .events import ModelCall

if TYPE_CHECKING:
    from .interpreter import QueryRun

TOP_CANDIDATES = 16  # candidates per slow-path step
_compilers: dict[int, tuple[Tokenizer, GrammarCompiler]] = {}


class ConstraintUnsatisfiedError(ConstraintError):
    """The model produced no value that satisfies a constraint checked in Python."""


def grammar_compiler(tokenizer: Tokenizer) -> GrammarCompiler:
    """One compiler per tokenizer (building llguidance's tokenizer takes a while)."""
    entry = _compilers.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        entry = (tokenizer, GrammarCompiler(tokenizer))
        _compilers[id(tokenizer)] = entry
    return entry[1]


async def generate(run: QueryRun, name: str, spec: HoleSpec, budget: int) -> tuple[list[int], str]:
    """The hole's tokens and finish reason: one GENERATE (watched when its stops are
    conditional), or the slow path when a Python check is needed or when the token limit cut
    the text where the grammar does not accept it (e.g. `not X in [...]` under a limit)."""
    if spec.check is not None:
        return await _SlowPath(run, name, spec, budget).generate()
    until = stop_watch(spec) if spec.client_stops else None
    tokens, reason = await run._generate(name, spec, budget, until=until)
    at_limit = spec.max_tokens is not None and len(tokens) >= spec.max_tokens
    grammar = spec.regex is not None or spec.token_options is not None
    if reason == "length" and at_limit and grammar:
        raw = run.conn.tokenizer.decode(tokens)
        if not spec.holds(raw, tuple(tokens)):
            spec.cut = None
            return await _SlowPath(run, name, spec, budget).generate()
    return tokens, reason


def stop_watch(spec: HoleSpec) -> Callable[[list[int], str], bool]:
    """A per-token test for the streamed path, given the tokens and their text: True (and
    `spec.cut` set) once a stop fires."""
    seen = {"text": ""}

    def fired(tokens: list[int], text: str) -> bool:
        new_from = common_prefix(seen["text"], text)
        seen["text"] = text
        if len(tokens) < spec.min_tokens:
            return False
        spec.cut = spec.stop_cut(text, new_from, tuple(tokens))
        return spec.cut is not None

    return fired


@dataclass
class _Frame:
    """The choices at one position of the hole, best first; `next` is the one to try next."""

    choices: list[int]
    next: int = 0


class _SlowPath:
    """Token-by-token generation with backtracking, for `HoleSpec.check`."""

    def __init__(self, run: QueryRun, name: str, spec: HoleSpec, budget: int) -> None:
        self.run = run
        self.name = name
        self.spec = spec
        self.check = spec.check or Predicate(None, ())  # type: ignore[arg-type]
        self.tokenizer = run.conn.tokenizer
        self.eos = self.tokenizer.eos_token_id
        self.by_max_len = spec.max_tokens is None or budget < spec.max_tokens
        self.limit = budget if spec.max_tokens is None else min(spec.max_tokens, budget)
        self.max_calls = 2 * self.limit + 16
        self.calls = 0
        grammar = spec.grammar()
        self.compiler = grammar_compiler(self.tokenizer) if grammar else None
        self.grammar = grammar
        self._matcher: tuple[GrammarMatcher, list[int]] | None = None
        self.logprobs: dict[tuple[int, ...], float] = {}

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
            ending = self._ending(tokens, token)
            if ending is not None:
                return self._done(tokens, token, ending)
            if token != self.eos and len(tokens) + 1 < self.limit:
                tokens.append(token)

    # ---- choosing -------------------------------------------------------------------------
    def _ending(self, tokens: list[int], token: int) -> str | None:
        """The finish reason if taking `token` ends the hole well here, else None."""
        if token == self.eos:
            return "stop"
        new = [*tokens, token]
        before = self.tokenizer.decode(tokens)
        text = self.tokenizer.decode(new)
        self.spec.cut = None
        if len(new) >= self.spec.min_tokens:
            self.spec.cut = self.spec.stop_cut(text, common_prefix(before, text), tuple(new))
        if self.spec.cut is not None:
            value = text[: self.spec.cut]
            if self.check.allows(HoleText(value, tuple(new), final=True)):
                return "stop"
            self.spec.cut = None
        if len(new) < self.limit:
            return None
        if self.by_max_len:
            return "length"  # max_len cut it: a truncated value, with a warning
        if self._accepts(new) and self.check.allows(HoleText(text, tuple(new), final=True)):
            return "length"
        return None

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
        allowed = matcher.allowed().copy() if matcher is not None else None
        if len(tokens) < self.spec.min_tokens:
            if allowed is None:
                allowed = np.ones(self.tokenizer.vocab_size, dtype=bool)
            allowed[self.eos] = False
        return allowed

    async def _ranked(self, tokens: list[int], allowed: np.ndarray | None) -> list[int]:
        """The model's candidates at this position, best first (the sampled one first)."""
        if self.calls >= self.max_calls:
            raise self._unsatisfied()
        self.calls += 1
        run, d = self.run, self.run.decoding
        seed = run.hole_seed()
        op = Generate(
            stream_id=None,
            model="",
            prompt=[*run.ids, *tokens],
            max_tokens=1,
            temperature=d.temperature,
            logit_bias=mask_bias(allowed),
            top_logprobs=TOP_CANDIDATES,
            extra=d.extra(),
            seed=None if seed is None else (seed + 7919 * len(tokens)) % (2**31),
        )
        started = time.perf_counter()
        events = [e async for e in run.conn.client.generate(op)]
        run.calls += 1
        run.emit(ModelCall("GENERATE", len(op.prompt), 1, time.perf_counter() - started, run.index))
        first = events[0]
        top = dict(first.top_logprobs or {})
        top.setdefault(first.token, first.logprob)
        order = [first.token, *sorted(top, key=lambda t: -top[t])]
        ranked = [t for t in dict.fromkeys(order) if allowed is None or _ok(allowed, t)]
        for t in ranked:
            self.logprobs[(*tokens, t)] = top[t]
        return ranked

    # ---- results --------------------------------------------------------------------------
    def _done(self, tokens: list[int], token: int, reason: str) -> tuple[list[int], str]:
        final = tokens if token == self.eos else [*tokens, token]
        run = self.run
        run.logprob += sum(self.logprobs.get(tuple(final[: i + 1]), 0.0) for i in range(len(final)))
        return final, reason

    def _unsatisfied(self) -> ConstraintUnsatisfiedError:
        where = self.check if self.check.nodes else self.spec.constraint
        lineno, col = where.position if where is not None else (1, 0)
        described = where.describe() if where is not None else "its constraints"
        return ConstraintUnsatisfiedError(
            f"the model produced no value of {self.name} that satisfies "
            f"`{described}` within {self.limit} tokens ({self.calls} model calls)",
            source=self.run.query.source,
            lineno=lineno,
            col=col,
        )


def _ok(allowed: np.ndarray, token: int) -> bool:
    return 0 <= token < len(allowed) and bool(allowed[token])
