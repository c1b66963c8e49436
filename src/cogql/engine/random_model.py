"""The `random` model: seeded random logits over a real tokenizer, with no weights.

To the engine it looks like a Hugging Face causal LM (a config that builds a one-layer
`DynamicCache`, `forward` with attention masks, positions, a cache and `logits_to_keep`), so
it runs through every path a real model takes: prefill alone or padded together, batched
decode, scoring with repeated cache rows, the prefix cache. Tests of constraints, batching and
the wire protocol then run in milliseconds, on any tokenizer.

The logits after a token sequence depend only on the seed and that exact sequence: a
position's cache entry (its "keys") holds a 64-bit rolling hash of the sequence up to it, and
its logits are drawn from a generator seeded with that hash. Batching, padding, the prefix
cache and what ran before cannot change them.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import DynamicCache, GenerationConfig, PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

__all__ = ["LOGIT_SCALE", "RandomConfig", "RandomModel", "sequence_hash"]

# standard normal logits times this: the top token gets a few percent of the probability mass,
# so greedy text is arbitrary and sampling still differs from greedy
LOGIT_SCALE = 3.0

_MASK64 = (1 << 64) - 1
_CHUNK_BITS = 16  # float32 holds integers below 2**24 exactly; a hash is 4 such chunks
_CHUNKS = 64 // _CHUNK_BITS


def _mix(x: int) -> int:
    """splitmix64's finaliser: a bijection on 64 bits that spreads every input bit."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _start(seed: int) -> int:
    """The hash of the empty sequence under `seed`."""
    return _mix((seed & _MASK64) ^ 0x243F6A8885A308D3)


def _step(state: int, token: int) -> int:
    return _mix(state ^ _mix(token))


def sequence_hash(seed: int, tokens: list[int]) -> int:
    """The hash a position holds after `tokens`: what its logits are drawn from."""
    state = _start(seed)
    for token in tokens:
        state = _step(state, token)
    return state


def _to_chunks(state: int) -> list[float]:
    shifts = range(64 - _CHUNK_BITS, -1, -_CHUNK_BITS)
    return [float((state >> s) & ((1 << _CHUNK_BITS) - 1)) for s in shifts]


def _from_chunks(chunks: list[float]) -> int:
    state = 0
    for chunk in chunks:
        state = (state << _CHUNK_BITS) | int(chunk)
    return state


class RandomConfig(PretrainedConfig):
    """One cache layer of one head whose "keys" are the hash chunks; no attention, no weights."""

    model_type = "cogql-random"

    def __init__(self, seed: int = 0, vocab_size: int = 1, **kwargs: Any) -> None:
        self.seed = seed
        self.vocab_size = vocab_size
        kwargs.setdefault("num_hidden_layers", 1)
        super().__init__(**kwargs)


class _Vocabulary(torch.nn.Module):
    """What the engine reads from `get_input_embeddings()`: the number of token ids."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.num_embeddings = size


class RandomModel(torch.nn.Module):
    def __init__(self, config: RandomConfig, *, eos_token_id: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.generation_config = GenerationConfig(eos_token_id=eos_token_id)
        self._vocabulary = _Vocabulary(config.vocab_size)
        self._empty = _start(config.seed)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def get_input_embeddings(self) -> torch.nn.Module:
        return self._vocabulary

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        past_key_values: DynamicCache | None = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
        **_: Any,
    ) -> CausalLMOutputWithPast:
        """Like a causal LM's: `attention_mask` covers the cached positions and the new ones
        (0 = padding, which neither holds a hash nor gets logits); positions are implied by the
        mask, so `position_ids` is not needed."""
        del position_ids, use_cache
        cache = cache if cache is not None else past_key_values
        if cache is None:
            cache = DynamicCache(config=self.config)
        rows, new = input_ids.shape
        past = _held(cache)
        held = 0 if past is None else past.shape[-2]
        if past is not None and past.shape[0] != rows:
            raise ValueError(f"the cache holds {past.shape[0]} rows, the input {rows}")
        if attention_mask is None:
            attention_mask = torch.ones(rows, held + new, dtype=torch.long)
        if tuple(attention_mask.shape) != (rows, held + new):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                f"{(rows, held + new)} (cached {held} + new {new} positions)"
            )
        mask = attention_mask.cpu().bool()
        states = self._states(input_ids.tolist(), mask[:, held:].tolist(), _last(past, mask))
        chunks = [[_to_chunks(s) if s is not None else [0.0] * _CHUNKS for s in r] for r in states]
        keys = torch.tensor(chunks, dtype=torch.float32).reshape(rows, 1, new, _CHUNKS)
        cache.update(keys.to(input_ids.device), keys.to(input_ids.device), 0)
        keep = new if not logits_to_keep or logits_to_keep >= new else logits_to_keep
        logits = torch.zeros(rows, keep, self.config.vocab_size)
        for r, row in enumerate(states):
            for j, state in enumerate(row[new - keep :]):
                if state is not None:
                    logits[r, j] = self._draw(state)
        out = logits.to(input_ids.device)
        return CausalLMOutputWithPast(logits=cast(torch.FloatTensor, out), past_key_values=cache)

    def _states(
        self, ids: list[list[int]], valid: list[list[bool]], before: list[int | None]
    ) -> list[list[int | None]]:
        """Per row and new position, the hash of the sequence up to it (None for padding)."""
        out = []
        for row, flags, state in zip(ids, valid, before, strict=True):
            current = self._empty if state is None else state
            hashes: list[int | None] = []
            for token, real in zip(row, flags, strict=True):
                if real:
                    current = _step(current, token)
                hashes.append(current if real else None)
            out.append(hashes)
        return out

    def _draw(self, state: int) -> torch.Tensor:
        generator = torch.Generator()
        generator.manual_seed(state)
        return torch.randn(self.config.vocab_size, generator=generator) * LOGIT_SCALE


def _held(cache: DynamicCache) -> torch.Tensor | None:
    """The cached hash chunks, (rows, 1, positions, 4), or None while nothing is cached."""
    layer = cache.layers[0] if cache.layers else None
    keys = getattr(layer, "keys", None)
    if keys is None or keys.numel() == 0:
        return None
    return keys


def _last(past: torch.Tensor | None, mask: torch.Tensor) -> list[int | None]:
    """Per row, the hash at its last unpadded cached position (None: nothing cached)."""
    rows = mask.shape[0]
    if past is None:
        return [None] * rows
    held = past.shape[-2]
    valid = mask[:, :held]
    last = held - 1 - valid.flip(1).int().argmax(1)
    chunks = past[torch.arange(rows), 0, last.to(past.device)].cpu().tolist()
    return [
        _from_chunks(c) if any_valid else None
        for c, any_valid in zip(chunks, valid.any(1).tolist(), strict=True)
    ]
