"""Continuous batching of decode steps: the streams that each need one more token share one
forward pass.

Their keys/values are left-padded into one cache that is kept from step to step and rebuilt
only when the set of streams changes (a stream joins, finishes, or takes a multi-token step).
Between rebuilds every entry's `past` is lent out as a lazily cut row of that cache.

Which precision is faster for a batched step depends on the CPU and the batch size (on the
2-core development machine fp16 wins at one row, bf16 at four and more, and fp16 loses badly to
both at sixteen), so the batch times real steps with each candidate model per batch-size class
and keeps the fastest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from .kvcache import CacheEntry, full_cache, left_padded


class PrecisionTuner:
    """Per batch-size class, the candidate whose fastest trial step was fastest.

    Every candidate gets one trial; only those within `CONTENDER` of the best so far get the
    rest, so a clearly slower precision costs one slow step, not `TRIALS`."""

    TRIALS = 3
    CONTENDER = 1.3

    def __init__(self, candidates: int) -> None:
        self.candidates = candidates
        self._times: dict[tuple[int, int], list[float]] = {}

    def pick(self, rows: int) -> int:
        size = rows.bit_length()
        times = [self._times.get((size, i), []) for i in range(self.candidates)]
        untried = [i for i, t in enumerate(times) if not t]
        if untried:
            return untried[0]
        best = min(min(t) for t in times)
        for i, t in enumerate(times):
            if len(t) < self.TRIALS and min(t) < self.CONTENDER * best:
                return i
        return min(range(self.candidates), key=lambda i: min(times[i]))

    def record(self, rows: int, candidate: int, seconds: float) -> None:
        trials = self._times.setdefault((rows.bit_length(), candidate), [])
        if len(trials) < self.TRIALS:
            trials.append(seconds)


class DecodeBatch:
    def __init__(self, candidates: list[Callable[[], torch.nn.Module]], tokens: int) -> None:
        """`candidates` give the same weights in the precisions worth trying (distinct dtypes);
        each is asked for its model only when the tuner first tries it. Logits are kept for
        the first `tokens` ids (the ones the tokenizer has)."""
        self.candidates = candidates
        self.tokens = tokens
        self.model = candidates[0]()
        self.tuner = PrecisionTuner(len(candidates))
        self.steps = self.rows = self.rebuilds = 0  # counters, for tests and benchmarks
        self._entries: list[CacheEntry] = []
        self._rows: list[Any] = []
        self._cache: DynamicCache | None = None
        self._width = 0

    def step(self, entries: list[CacheEntry], tokens: list[int]) -> None:
        """Feed one token to each entry; sets each entry's next-token logits."""
        choice = self.tuner.pick(len(entries))
        model = self.candidates[choice]()
        if model is not self.model or not self._holds(entries):
            self.model = model
            self._rebuild(entries)
        lengths = [len(e.ids) for e in entries]
        width = self._width
        mask = torch.zeros(len(entries), width + 1, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, width - n :] = 1
        start = time.perf_counter()
        out = self.model(
            input_ids=torch.tensor([[t] for t in tokens]),
            attention_mask=mask,
            position_ids=torch.tensor([[n] for n in lengths]),
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.tuner.record(len(entries), choice, time.perf_counter() - start)
        self.steps += 1
        self.rows += len(entries)
        self._width = width + 1
        logits = out.logits[:, -1, : self.tokens].float()
        assert self._cache is not None
        layers = [(layer.keys, layer.values) for layer in self._cache.layers]
        self._rows = [self._row(layers, i, n + 1) for i, n in enumerate(lengths)]
        for i, (entry, token) in enumerate(zip(entries, tokens, strict=True)):
            entry.ids.append(token)
            entry.logits = logits[i]
            entry.lend(self._rows[i])

    def _holds(self, entries: list[CacheEntry]) -> bool:
        return (
            self._cache is not None
            and len(entries) == len(self._entries)
            and all(a is b for a, b in zip(entries, self._entries, strict=True))
            and all(e.row is r for e, r in zip(entries, self._rows, strict=True))
        )

    def _rebuild(self, entries: list[CacheEntry]) -> None:
        """Copy every entry's keys/values, right-aligned, into a fresh batch cache."""
        for entry in entries:
            entry.cast(self.model.dtype)
        width = max(len(e.ids) for e in entries)
        layers = left_padded(entries, width)
        self._cache = full_cache(self.model.config, layers)
        self._entries = list(entries)
        self._width = width
        self.rebuilds += 1

    def _row(self, layers: list[tuple[torch.Tensor, torch.Tensor]], i: int, length: int) -> Any:
        """Row i as a batch-1 cache of `length` positions (views, no copy until settled)."""
        start, config = self._width - length, self.model.config

        def cut() -> DynamicCache:
            kv = [(k[i : i + 1, :, start:], v[i : i + 1, :, start:]) for k, v in layers]
            return full_cache(config, kv)

        return cut
