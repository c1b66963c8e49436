"""One GENERATE stream's next token: logit bias, min_tokens, the grammar mask, the choice,
finish reasons (EOS, stop strings, the grammar's end, the token limit) and the event."""

from __future__ import annotations

import torch

from ..lmtp.messages import TokenEvent
from .jobs import GenerateStream
from .masks import mask_logits
from .sampling import apply_bias, choose
from .stops import ends_at_stop


class TokenStepper:
    def __init__(
        self, eos_ids: frozenset[int], eos_token_id: int, token_bytes: list[bytes]
    ) -> None:
        self.eos_ids = eos_ids
        self.eos_token_id = eos_token_id
        self._token_bytes = token_bytes

    def start(self, s: GenerateStream) -> None:
        op = s.op
        if op.temperature > 0:
            s.generator = torch.Generator()
            s.generator.manual_seed(op.seed if op.seed is not None else torch.seed())
        s.stops = [x.encode() for x in op.stop]

    def step(self, s: GenerateStream) -> bool:
        """Advance one stream by one token (or a run of grammar-forced tokens); True when done."""
        assert s.entry is not None
        return self.step_on(s, s.entry.logits)

    def step_on(self, s: GenerateStream, next_logits: torch.Tensor | None) -> bool:
        """`step`, given the logits of the stream's next position (an engine without cogql's
        cache entries, llama.cpp's, passes its own)."""
        if not s.started:
            s.started = True
            if s.limit == 0:
                s.ended = True
                s.sink(TokenEvent(s.op.stream_id, self.eos_token_id, 0.0, "length", {}))
                return True
        assert next_logits is not None
        forced = s.matcher.forced_tokens() if s.matcher else []
        if forced:
            return self._emit_forced(s, forced)
        logits = next_logits.clone()
        allowed = self._mask(s, logits)
        if allowed is not None and allowed.sum() == 1 and allowed[self.eos_token_id]:
            return self._emit(s, self.eos_token_id, 0.0, {self.eos_token_id: 0.0}, forward=False)
        op = s.op
        c = choose(
            logits,
            temperature=op.temperature,
            top_logprobs=op.top_logprobs,
            generator=s.generator,
            top_k=op.extra.get("top_k"),
            top_p=op.extra.get("top_p"),
        )
        return self._emit(s, c.token, c.logprob, c.top_logprobs, forward=True)

    def _mask(self, s: GenerateStream, logits: torch.Tensor):
        apply_bias(logits, s.op.logit_bias)
        if s.produced < s.op.min_tokens:
            for eos in self.eos_ids:
                logits[eos] = float("-inf")
        if s.matcher is None:
            return None
        return mask_logits(s.matcher, logits)

    def _finish_reason(self, s: GenerateStream, token: int) -> str | None:
        if token in self.eos_ids:
            return "stop"
        stops_active = s.stops and s.produced >= s.op.min_tokens
        if stops_active and ends_at_stop(s.text, len(self._token_bytes[token]), s.stops):
            return "stop"
        if s.matcher is not None and s.matcher.is_stopped():
            return "stop"
        if s.produced >= s.limit:
            return "length"
        return None

    def _emit(
        self, s: GenerateStream, token: int, logprob: float, top: dict[int, float], *, forward: bool
    ) -> bool:
        s.produced += 1
        s.text += self._token_bytes[token]
        if s.matcher is not None and token not in self.eos_ids:
            s.matcher.consume([token])
        reason = self._finish_reason(s, token)
        if reason is None or token not in self.eos_ids:
            s.tokens.append(token)
        s.ended = reason is not None
        s.sink(TokenEvent(s.op.stream_id, token, logprob, reason, top))
        if reason is None and forward:
            s.feed = [token]
        return reason is not None

    def _emit_forced(self, s: GenerateStream, forced: list[int]) -> bool:
        forced = forced[: max(s.limit - s.produced, 0)]
        fed: list[int] = []
        for token in forced:
            if self._emit(s, token, 0.0, {token: 0.0}, forward=False):
                return True
            fed.append(token)
        s.feed = fed
        return False
