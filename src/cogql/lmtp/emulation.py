"""cogql's GENERATE extensions, emulated against a server that speaks only LMQL's LMTP.

A server without the `grammar`, `stop` and `min_tokens` capabilities (LMQL's own
`serve-model`, LMQL-built Replicate models) gets LMQL's method: the grammar's mask travels as
±100 `logit_bias` (on the smaller of the allowed and disallowed sets), a step with a single
allowed token is taken here without a request, stop phrases are checked here, and a new
GENERATE is sent whenever the mask differs from the one the running request was opened with:
the server applies one bias to every step of a request, so a token is only accepted when the
mask it was chosen under is the mask that holds at its position.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import ModelError
from ..grammar import GrammarCompiler, GrammarMatcher, mask_bias
from ..tokenizer import Tokenizer
from .messages import Generate, TokenEvent

RawGenerate = Callable[[Generate], AsyncIterator[TokenEvent]]


@dataclass
class _Progress:
    """What the emulated stream has produced so far."""

    op: Generate
    matcher: GrammarMatcher | None
    tokens: list[int] = field(default_factory=list)
    text: bytes = b""

    @property
    def stops_active(self) -> bool:
        return stops_active(len(self.tokens), self.op.min_tokens)


class ExtensionEmulator:
    """Runs extended GENERATE ops through a plain LMTP `raw_generate`."""

    def __init__(self, raw_generate: RawGenerate, tokenizer: Tokenizer) -> None:
        self.raw_generate = raw_generate
        self.eos = eos_of(tokenizer, "emulated extensions")
        self.tokenizer = tokenizer
        self.grammars = GrammarCompiler(tokenizer)
        self._bytes = tokenizer.all_token_bytes()

    async def generate(self, op: Generate) -> AsyncGenerator[TokenEvent, None]:
        p = _Progress(op, self.grammars.matcher(op.grammar) if op.grammar else None)
        while len(p.tokens) < op.max_tokens:
            allowed = self._allowed(p)
            if allowed is not None and allowed.sum() == 1:
                event = self._accept(p, TokenEvent(None, int(allowed.argmax()), 0.0))
                yield event
                if event.finish_reason:
                    return
                continue
            async for event in self._request(p, allowed):
                yield event
                if event.finish_reason:
                    return
        if op.max_tokens == 0:
            yield TokenEvent(op.stream_id, self.eos, 0.0, "length", {})

    async def _request(
        self, p: _Progress, allowed: np.ndarray | None
    ) -> AsyncGenerator[TokenEvent, None]:
        """One plain GENERATE, consumed while its bias still matches the current mask."""
        request = Generate(
            stream_id=None,
            model=p.op.model,
            prompt=p.op.prompt + p.tokens,
            max_tokens=p.op.max_tokens - len(p.tokens),
            temperature=p.op.temperature,
            logit_bias=mask_bias(allowed),
            top_logprobs=p.op.top_logprobs,
            extra=dict(p.op.extra),
        )
        async for event in self.raw_generate(request):
            accepted = self._accept(p, event)
            yield accepted
            if accepted.finish_reason:
                return
            if not _same_mask(self._allowed(p), allowed):
                return  # the mask moved on: the rest was chosen under a stale bias

    def _allowed(self, p: _Progress) -> np.ndarray | None:
        return token_mask(p.matcher, len(p.tokens), p.op.min_tokens, self.eos, len(self._bytes))

    def _accept(self, p: _Progress, event: TokenEvent) -> TokenEvent:
        token = event.token
        p.tokens.append(token)
        if token != self.eos:
            p.text += self._bytes[token]
            if p.matcher is not None:
                p.matcher.consume([token])
        return replace(event, stream_id=p.op.stream_id, finish_reason=self._finish_reason(p, token))

    def _finish_reason(self, p: _Progress, token: int) -> str | None:
        if token == self.eos:
            return "stop"
        if p.op.stop and p.stops_active and _ends_with_stop(p.text, self._bytes[token], p.op.stop):
            return "stop"
        if p.matcher is not None and p.matcher.is_stopped():
            return "stop"
        if len(p.tokens) >= p.op.max_tokens:
            return "length"
        return None


# The token rules below are the engine's, written once for everything that applies them on the
# client side: this emulation, the runtime's token-by-token decoding and its beam search.


def eos_of(tokenizer: Tokenizer, what: str) -> int:
    """The end-of-sequence id, which decoding on the client side needs to end a hole."""
    if tokenizer.eos_token_id is None:
        raise ModelError(f"{what} need a tokenizer with an end-of-sequence token")
    return tokenizer.eos_token_id


def stops_active(generated: int, min_tokens: int) -> bool:
    """Whether stop phrases may end a generation that has `generated` tokens (a phrase ending
    inside an earlier token is ignored): from `min_tokens` on."""
    return generated >= min_tokens


def token_mask(
    matcher: GrammarMatcher | None,
    generated: int,
    min_tokens: int,
    eos: int,
    vocab_size: int,
) -> np.ndarray | None:
    """The tokens allowed after `generated` tokens: the grammar's (as `matcher` stands), and
    no EOS before `min_tokens`; None when every token is allowed."""
    allowed = matcher.allowed() if matcher is not None else None  # a fresh array each call
    if generated < min_tokens:
        if allowed is None:
            allowed = np.ones(vocab_size, dtype=bool)
        allowed[eos] = False
    return allowed


def allows(mask: np.ndarray | None, token: int) -> bool:
    """Whether `mask` lets `token` through (ids beyond the grammar's vocabulary never)."""
    return mask is None or (0 <= token < len(mask) and bool(mask[token]))


def _ends_with_stop(text: bytes, last: bytes, stops: list[str]) -> bool:
    """A stop phrase that ends inside the last token (earlier ones were already checked)."""
    end = len(text) - len(last)
    for phrase in stops:
        needle = phrase.encode()
        if needle in text[max(end - len(needle) + 1, 0) :]:
            return True
    return False


def _same_mask(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))
