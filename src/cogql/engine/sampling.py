"""Choosing the next token from one row of logits, and the log-probabilities LMTP reports."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Choice:
    token: int
    logprob: float
    top_logprobs: dict[int, float]


def apply_bias(logits: torch.Tensor, bias: dict[int, float]) -> None:
    if not bias:
        return
    ids = torch.tensor([i for i in bias if 0 <= i < logits.shape[-1]], dtype=torch.long)
    if len(ids) != len(bias):
        bad = sorted(i for i in bias if not 0 <= i < logits.shape[-1])
        raise ValueError(f"logit_bias names token ids outside the vocabulary: {bad[:5]}")
    vals = torch.tensor([bias[int(i)] for i in ids], dtype=logits.dtype)
    logits.index_add_(0, ids, vals)


def _filter_top_k_top_p(scores: torch.Tensor, top_k: int | None, top_p: float | None) -> None:
    if top_k and 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k).values[-1]
        scores.masked_fill_(scores < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=True)
        cum = torch.softmax(sorted_scores, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_scores, -1) > top_p
        scores[order[drop]] = float("-inf")


def choose(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_logprobs: int = 1,
    generator: torch.Generator | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Choice:
    """Greedy when temperature is 0, else sample; logprobs of the processed distribution."""
    scores = logits.float()
    if temperature > 0:
        scores = scores / temperature
        _filter_top_k_top_p(scores, top_k, top_p)
    logprobs = torch.log_softmax(scores, -1)
    if temperature > 0:
        token = int(torch.multinomial(logprobs.exp(), 1, generator=generator))
    else:
        token = int(torch.argmax(logprobs))
    top: dict[int, float] = {token: float(logprobs[token])}
    if top_logprobs > 0:
        values, ids = torch.topk(logprobs, min(top_logprobs, logprobs.shape[-1]))
        for v, i in zip(values.tolist(), ids.tolist(), strict=True):
            top.setdefault(i, v)
    return Choice(token, top[token], top)
