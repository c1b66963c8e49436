"""When a hole that the client watches token by token ends, written once for the strategies
that decide it on the client side: the watched stream (conditional stops), token-by-token
decoding (constraints only Python can check) and the beam decoders' hypotheses.

The rules are the engine's (stop phrases active from `min_tokens` on, the token limit) plus
what only the client knows: a stop whose guard does not hold does not cut, and a value that
`HoleSpec.check` rejects may not end the hole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..constraints.holespec import HoleSpec
from ..constraints.values import HoleText
from ..grammar import common_prefix
from ..lmtp.emulation import stops_active
from ..tokenizer import Tokenizer


@dataclass(frozen=True)
class Step:
    """What taking one token does to a hole: it ends ("stop" / "length") or goes on (None);
    `cut` is where a stop phrase cut the text (`HoleSpec.cut`), if one did."""

    reason: str | None
    cut: int | None = None


GOES_ON = Step(None)


def hole_limit(spec: HoleSpec, budget: int) -> int:
    """The most tokens a hole may take: its own limit within the max_len `budget`."""
    return budget if spec.max_tokens is None else min(spec.max_tokens, budget)


def stop_cut(spec: HoleSpec, before: str, text: str, tokens: Sequence[int]) -> int | None:
    """Where an active stop phrase ending in the newest token cuts `text` (`before`: the text
    without that token), or None."""
    if not stops_active(len(tokens), spec.min_tokens):
        return None
    return spec.stop_cut(text, common_prefix(before, text), tuple(tokens))


def stops_inactive_in(spec: HoleSpec, tokens: list[int]) -> list[int]:
    """The leading tokens of a finished hole in which a stop phrase did not end it (stops are
    active from `min_tokens` on)."""
    return tokens[: spec.min_tokens - 1] if spec.stops and spec.min_tokens > 1 else []


def may_end(spec: HoleSpec, text: str, tokens: Sequence[int]) -> bool:
    """Whether the hole may end with `text` (the constraints only Python can check)."""
    return spec.check is None or spec.check.allows(HoleText(text, tuple(tokens), final=True))


class HoleEndings:
    """The ending rules of one hole, `limit` tokens long at most."""

    def __init__(
        self,
        spec: HoleSpec,
        tokenizer: Tokenizer,
        limit: int,
        accepts: Callable[[list[int]], bool] | None = None,
    ) -> None:
        self.spec = spec
        self.decode = tokenizer.decode
        self.eos = tokenizer.eos_token_id
        self.limit = limit
        # max_len, not the hole's own limit, ends it: a truncated value, with a warning
        self.by_max_len = spec.max_tokens is None or limit < spec.max_tokens
        self.accepts = accepts  # whether the grammar accepts the tokens (None: not checked)

    def after(self, tokens: Sequence[int], token: int, before: str | None = None) -> Step | None:
        """Whether and why the hole ends when `token` follows `tokens` (`before`: their text,
        when known); None when `token` may not be taken there."""
        before = self.decode(list(tokens)) if before is None else before
        if token == self.eos:
            return Step("stop") if may_end(self.spec, before, tokens) else None
        new = [*tokens, token]
        text = self.decode(new)
        cut = stop_cut(self.spec, before, text, new)
        if cut is not None and may_end(self.spec, text[:cut], new):
            return Step("stop", cut)
        if len(new) < self.limit:
            return GOES_ON
        if self.by_max_len:
            return Step("length")
        if (self.accepts is None or self.accepts(new)) and may_end(self.spec, text, new):
            return Step("length")
        return None
