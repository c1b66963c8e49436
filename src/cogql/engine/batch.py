"""Continuous batching of decode steps: the streams that each need one more token share one
forward pass.

Streams are grouped by context length first (engine/scheduler.py), so one long stream does
not pad every short one to its length. Each group's keys/values are left-padded into one cache
that is kept from step to step and rebuilt only when the group changes (a stream joins,
finishes, or takes a multi-token step). Between rebuilds every entry's `past` is lent out as a
lazily cut row of that cache.

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
from .lm import CausalLM, as_causal_lm


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


class _Slot:
    """One group's padded batch cache, kept from step to step while the group is unchanged."""

    def __init__(self, model: CausalLM, entries: list[CacheEntry]) -> None:
        for entry in entries:
            entry.cast(model.dtype)
        self.model = model
        self.entries = list(entries)
        self.width = max(len(e.ids) for e in entries)
        self.cache = full_cache(model.config, left_padded(entries, self.width))
        self.rows: list[Any] = []
        self.used = True

    def holds(self, entries: list[CacheEntry], model: CausalLM) -> bool:
        return (
            model is self.model
            and len(entries) == len(self.entries)
            and all(a is b for a, b in zip(entries, self.entries, strict=True))
            and all(e.row is r for e, r in zip(entries, self.rows, strict=True))
        )

    def shares(self, entries: list[CacheEntry]) -> bool:
        return any(a is b for a in entries for b in self.entries)


class DecodeBatch:
    def __init__(self, candidates: list[Callable[[], torch.nn.Module]], tokens: int) -> None:
        """`candidates` give the same weights in the precisions worth trying (distinct dtypes);
        each is asked for its model only when the tuner first tries it. Logits are kept for
        the first `tokens` ids (the ones the tokenizer has)."""
        self.candidates = candidates
        self.tokens = tokens
        self.tuner = PrecisionTuner(len(candidates))
        self.steps = self.rows = self.rebuilds = 0  # counters, for tests and benchmarks
        self._slots: list[_Slot] = []

    def step(self, entries: list[CacheEntry], tokens: list[int]) -> None:
        """Feed one token to each entry of one group; sets each entry's next-token logits. On
        an error the group's batch cache is dropped and every entry is as it was before."""
        choice = self.tuner.pick(len(entries))
        slot = self._slot(entries, as_causal_lm(self.candidates[choice]()))
        lengths = [len(e.ids) for e in entries]
        width = slot.width
        mask = torch.zeros(len(entries), width + 1, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, width - n :] = 1
        start = time.perf_counter()
        try:
            out = slot.model(
                input_ids=torch.tensor([[t] for t in tokens]),
                attention_mask=mask,
                position_ids=torch.tensor([[n] for n in lengths]),
                past_key_values=slot.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        except BaseException:
            self._slots.remove(slot)  # its cache may hold the new token in some layers only
            raise
        self.tuner.record(len(entries), choice, time.perf_counter() - start)
        self.steps += 1
        self.rows += len(entries)
        slot.width = width + 1
        slot.used = True
        logits = out.logits[:, -1, : self.tokens].float()
        layers = [(layer.keys, layer.values) for layer in slot.cache.layers]
        slot.rows = [_row(slot, layers, i, n + 1) for i, n in enumerate(lengths)]
        for i, (entry, token) in enumerate(zip(entries, tokens, strict=True)):
            entry.ids.append(token)
            entry.logits = logits[i]
            entry.lend(slot.rows[i])

    def retire(self) -> None:
        """Drop the batch caches that no step used since the last call (their groups changed
        or ended), so they do not hold memory."""
        self._slots = [s for s in self._slots if s.used]
        for slot in self._slots:
            slot.used = False

    def _slot(self, entries: list[CacheEntry], model: CausalLM) -> _Slot:
        """The slot that holds exactly this group, or a new one built from the entries' own
        keys/values (the slots they were in before are dropped)."""
        for slot in self._slots:
            if slot.holds(entries, model):
                return slot
        self._slots = [s for s in self._slots if not s.shares(entries)]
        slot = _Slot(model, entries)
        self._slots.append(slot)
        self.rebuilds += 1
        return slot


def _row(slot: _Slot, layers: list[tuple[torch.Tensor, torch.Tensor]], i: int, length: int) -> Any:
    """Row i as a batch-1 cache of `length` positions (views, no copy until settled)."""
    start, config = slot.width - length, slot.model.config

    def cut() -> DynamicCache:
        kv = [(k[i : i + 1, :, start:], v[i : i + 1, :, start:]) for k, v in layers]
        return full_cache(config, kv)

    return cut
