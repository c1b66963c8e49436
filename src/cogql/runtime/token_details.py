"""`TokenGenerated` events of a hole's tokens, for a listener that asked for details.

The engine enforces a hole's grammar server-side, so to say how many tokens the constraints
allowed at each step (and which alternatives they allowed) the client follows the same grammar
here with its own matcher: work per token that only runs when details are wanted. A hole
decoded token by token knows all that at each step already; its tokens are reported once its
search has settled on them (`SearchSteps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..grammar import GrammarError, GrammarMatcher
from ..lmtp.emulation import allows, token_mask
from ..lmtp.messages import Generate, TokenEvent
from .events import Alternative, TokenGenerated, details_wanted
from .token_by_token import grammar_compiler

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer
    from .interpreter import QueryRun


class TokenDetails:
    """Follows one GENERATE's tokens and reports each with its alternatives."""

    def __init__(self, run: QueryRun, variable: str, op: Generate, call_id: int) -> None:
        self.run = run
        self.variable = variable
        self.call_id = call_id
        self.min_tokens = op.min_tokens
        tokenizer = run.conn.tokenizer
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else -1
        self.matcher: GrammarMatcher | None = None
        self.followed = True  # the mask is known (no grammar, or the matcher kept up)
        if op.grammar is not None:
            try:
                self.matcher = grammar_compiler(tokenizer).matcher(op.grammar)
            except GrammarError:
                self.followed = False

    def token(self, event: TokenEvent, before: list[int]) -> None:
        """`event`'s token, generated after the hole's tokens `before`."""
        mask = self._mask(len(before))
        decode = self.tokenizer.decode
        start = len(decode(before))
        text = decode([*before, event.token])[start:]
        ranked = sorted((event.top_logprobs or {event.token: event.logprob}).items(),
                        key=lambda kv: -kv[1])  # fmt: skip
        alternatives = tuple(
            Alternative(t, decode([t]), lp, self._allows(mask, t)) for t, lp in ranked
        )
        vocab = self.tokenizer.vocab_size
        allowed = None if not self.followed else vocab if mask is None else int(mask.sum())
        self.run.emit(
            TokenGenerated(self.variable, event.token, text, event.logprob, start,
                           alternatives, allowed, self.call_id, self.run.index)
        )  # fmt: skip
        self._consume(event.token)

    def _mask(self, generated: int) -> np.ndarray | None:
        if not self.followed:
            return None
        vocab = self.tokenizer.vocab_size
        return token_mask(self.matcher, generated, self.min_tokens, self.eos, vocab)

    def _allows(self, mask: np.ndarray | None, token: int) -> bool | None:
        if not self.followed:
            return None
        return mask is None or (0 <= token < len(mask) and bool(mask[token]))

    def _consume(self, token: int) -> None:
        if self.matcher is None or not self.followed:
            return
        try:
            self.matcher.consume([token])
        except GrammarError:
            self.followed = False  # the server went another way: say nothing rather than wrong


@dataclass(frozen=True)
class _Step:
    alternatives: tuple[tuple[int, float, bool], ...]  # token, log-prob, allowed
    allowed: int
    call: int


class SearchSteps:
    """What a token-by-token search saw at each prefix it ranked, reported for the tokens it
    kept once it has kept them (the branches it backtracked from are not the hole's text)."""

    def __init__(self, run: QueryRun, variable: str, tokenizer: Tokenizer) -> None:
        self.run, self.variable, self.tokenizer = run, variable, tokenizer
        self.steps: dict[tuple[int, ...], _Step] = {}

    def ranked(
        self, prefix: list[int], top: dict[int, float], mask: np.ndarray | None, call: int
    ) -> None:
        ranked = sorted(top.items(), key=lambda kv: -kv[1])[: max(1, details_wanted())]
        alternatives = tuple((t, lp, allows(mask, t)) for t, lp in ranked)
        allowed = self.tokenizer.vocab_size if mask is None else int(mask.sum())
        self.steps[tuple(prefix)] = _Step(alternatives, allowed, call)

    def forced(self, prefix: list[int], mask: np.ndarray) -> None:
        self.steps[tuple(prefix)] = _Step((), int(mask.sum()), 0)

    def report(self, final: list[int], logprobs: dict[tuple[int, ...], float]) -> None:
        decode = self.tokenizer.decode
        for i, token in enumerate(final):
            step = self.steps.get(tuple(final[:i]))
            start = len(decode(final[:i]))
            seen = step.alternatives if step else ()
            alternatives = tuple(Alternative(t, decode([t]), lp, ok) for t, lp, ok in seen)
            self.run.emit(
                TokenGenerated(
                    self.variable, token, decode(final[: i + 1])[start:],
                    logprobs.get(tuple(final[: i + 1]), 0.0), start, alternatives,
                    step.allowed if step else None, step.call if step else 0, self.run.index,
                )
            )  # fmt: skip
