"""`cogql.score`: how likely a model finds each of several continuations of a prompt (LMQL §7.3).

The prompt and each value are tokenized separately (a value's tokens are those it has on its
own, as in a `distribution` clause), and every value is scored in one batched SCORE message:
one round trip however many values there are. Each op scores the prompt's tokens too, so
`full_token_scores` covers the whole sequence, as LMQL's does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import QueryError
from .model import ConnectedModel, Model, as_model

AGGREGATIONS = ("sum", "mean", "normalized")


class ScoringError(QueryError, ValueError):
    """Values that cannot be scored, or an aggregation that does not exist."""


@dataclass
class ScoredSequence:
    """One value after the prompt: the token ids of both and a log-prob for every one of them."""

    value: str
    input_ids: np.ndarray  # prompt ids then value ids (BOS not included)
    logprobs: np.ndarray  # log p(token | everything before it), aligned with input_ids


class ScoringResult:
    """Per-value log-probs with LMQL's views: token scores, aggregated scores, a softmax over
    the values, and the most likely value."""

    def __init__(
        self, prompt: str, seqs: list[ScoredSequence], prompt_tokens: int, model: str
    ) -> None:
        self.prompt = prompt
        self.seqs = seqs
        self.continuations = [s.value for s in seqs]
        self.prompt_tokens = prompt_tokens
        self.model_identifier = model

    @property
    def full_token_scores(self) -> list[np.ndarray]:
        """Log-probs of the prompt's and the value's tokens, per value."""
        return [s.logprobs for s in self.seqs]

    @property
    def token_scores(self) -> list[np.ndarray]:
        """Log-probs of the value's tokens only, per value."""
        return [s.logprobs[self.prompt_tokens :] for s in self.seqs]

    def scores(self, agg: str = "sum", alpha: float = 0.7) -> np.ndarray:
        """One number per value: the sum of its token log-probs, their mean, or the sum
        divided by len**alpha ("normalized", a length penalty between the two)."""
        sums = np.array([s.sum() for s in self.token_scores])
        lengths = np.array([len(s) for s in self.token_scores], dtype=float)
        if agg == "sum":
            return sums
        if agg == "mean":
            return sums / lengths
        if agg == "normalized":
            return sums / lengths**alpha
        raise ScoringError(f"unknown aggregation {agg!r} (use one of {', '.join(AGGREGATIONS)})")

    def logprobs(self, agg: str = "sum", alpha: float = 0.7) -> np.ndarray:
        """Log of the softmax over values of `scores(agg)`: a distribution over the values."""
        s = self.scores(agg, alpha)
        top = s.max()
        return s - (top + np.log(np.exp(s - top).sum()))

    def probs(self, agg: str = "sum", alpha: float = 0.7) -> np.ndarray:
        return np.exp(self.logprobs(agg, alpha))

    def argmax(self, agg: str = "sum", alpha: float = 0.7) -> str:
        """The most likely value (the first one on ties)."""
        return self.continuations[int(np.argmax(self.scores(agg, alpha)))]

    def __repr__(self) -> str:
        lines = [f"cogql.ScoringResult(model={self.model_identifier!r})"]
        lines += [f"-{v!r}: {s}" for v, s in zip(self.continuations, self.scores(), strict=True)]
        return "\n".join(lines)


async def score(
    prompt: str, values: str | list[str], model: Model | str | None = None
) -> ScoringResult:
    """Score every value as a continuation of `prompt`; `model` as in a query's `from`."""
    options = _options(values)  # checked before the model is loaded
    m = as_model(model)
    return await score_on(await m.connect(), prompt, options, m.model_identifier)


async def score_on(
    conn: ConnectedModel, prompt: str, values: str | list[str], model_identifier: str
) -> ScoringResult:
    """`score` on an open connection (a query's `context.score` uses the query's)."""
    options = _options(values)
    encode = conn.tokenizer.encode
    prompt_ids = encode(prompt, start=True)
    value_ids = [encode(v) for v in options]
    start, unscored = _start(conn.bos_token_id, prompt_ids)
    rows = [prompt_ids[len(unscored) :] + ids for ids in value_ids]
    logprobs = await conn.client.score(start, rows)
    seqs = [
        ScoredSequence(v, np.array(prompt_ids + ids), np.array([0.0] * len(unscored) + lps))
        for v, ids, lps in zip(options, value_ids, logprobs, strict=True)
    ]
    return ScoringResult(prompt, seqs, len(prompt_ids), model_identifier)


def _options(values: str | list[str]) -> list[str]:
    options = [values] if isinstance(values, str) else list(values)
    if not options:
        raise ScoringError("score() needs at least one value")
    bad = [v for v in options if not isinstance(v, str) or not v]
    if bad:
        raise ScoringError(f"values must be non-empty strings, got {bad[0]!r}")
    return options


def _start(bos: int | None, prompt_ids: list[int]) -> tuple[list[int], list[int]]:
    """The ids everything is scored after, and the prompt ids that come before any context
    (the first one, on a model without BOS: reported with log-prob 0)."""
    if bos is not None:
        return [bos], []
    if not prompt_ids:
        raise ScoringError("this model has no BOS token, so score() needs a non-empty prompt")
    return prompt_ids[:1], prompt_ids[:1]


def score_sync(
    prompt: str, values: str | list[str], model: Model | str | None = None
) -> ScoringResult:
    """`score`, blocking; not callable from inside a running event loop."""
    from .query import run_blocking

    return run_blocking(score(prompt, values, model))
