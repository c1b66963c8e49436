"""KV prefix cache: token sequences whose keys and values are already computed.

A request takes the entry sharing the longest prefix with its prompt, so the next hole of a
query, or a SCORE after a GENERATE on the same prompt, only computes the new tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..grammar import common_prefix

if TYPE_CHECKING:
    import torch


def full_cache(config: Any, layers: list[Any] | None = None) -> Any:
    """A transformers DynamicCache for `config`'s model (filled with `layers`' keys/values)
    that keeps every position of every layer.

    For a model with sliding-window layers (Mistral, Gemma 2/3, gpt-oss) transformers builds
    layers that drop the positions older than the window, but a prefix-cache entry is cropped
    to a shared prefix and left-padded into batches, which both need every position. The model
    applies the window in its attention mask itself, so full layers give the same logits, at
    the cost of keeping all positions of those layers."""
    from transformers import DynamicCache

    if has_sliding_layers(config):
        return DynamicCache(ddp_cache_data=layers) if layers is not None else DynamicCache()
    return DynamicCache(ddp_cache_data=layers, config=config)


def has_sliding_layers(config: Any) -> bool:
    """Whether transformers gives some of the model's layers a sliding-window cache."""
    key = id(config)
    if key not in _sliding:
        from transformers import DynamicCache

        probe = DynamicCache(config=config)
        _sliding[key] = (config, any(getattr(x, "is_sliding", False) for x in probe.layers))
    return _sliding[key][1]


_sliding: dict[int, tuple[Any, bool]] = {}  # id(config) -> (config, kept alive for the id)


@dataclass
class CacheEntry:
    """Keys/values for `ids`; `logits` are the next-token logits after the last id, if known.

    While the entry decodes inside a batch its keys/values are a row of the batch's cache,
    handed out only when someone reads `past` (see engine/batch.py)."""

    ids: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None
    _past: Any = None
    _row: Callable[[], Any] | None = None
    # keys/values as they were before a cast to a lower precision (mixed-precision decoding),
    # restored when the cache goes back: a prompt's scores must not depend on its history
    _exact: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def past(self) -> Any:
        if self._row is not None:
            self._past, self._row = self._row(), None
        return self._past

    @past.setter
    def past(self, value: Any) -> None:
        self._past, self._row = value, None

    def lend(self, row: Callable[[], Any]) -> None:
        """The batch now holds this entry's keys/values; `row()` extracts them."""
        self._past, self._row = None, row

    @property
    def row(self) -> Callable[[], Any] | None:
        return self._row

    def settle(self) -> None:
        """Own a compact copy of the keys/values, so that no batch tensor is kept alive."""
        if self._row is None:
            return
        past = self.past
        for layer in past.layers:
            layer.keys, layer.values = layer.keys.clone(), layer.values.clone()

    def crop(self, length: int) -> None:
        if length >= len(self.ids):
            return
        self.ids = self.ids[:length]
        self.logits = None
        if self._exact is not None:
            self._exact = [(k[..., :length, :], v[..., :length, :]) for k, v in self._exact]
        if self.past is None:
            return
        if length == 0:
            self.past, self._exact = None, None
            return
        for layer in self.past.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys[..., :length, :]
                layer.values = layer.values[..., :length, :]

    def cast(self, dtype: torch.dtype) -> None:
        """Keys/values in the precision of the model that reads them next. Positions that
        were computed at a higher precision are taken from that original, never from an
        intermediate rounding (fp16 then bf16 would round twice)."""
        layers = [
            x for x in (self.past.layers if self.past is not None else ()) if x.keys is not None
        ]
        if not layers or layers[0].keys.dtype == dtype:
            return
        if self._exact is None and dtype.itemsize < layers[0].keys.dtype.itemsize:
            self._exact = [(x.keys, x.values) for x in layers]
        exact = self._exact
        if exact is not None and exact[0][0] is layers[0].keys:
            exact = None  # the current keys/values are the originals themselves
        for i, layer in enumerate(layers):
            keys, values = layer.keys.to(dtype), layer.values.to(dtype)
            if exact is not None:
                exact_keys, exact_values = exact[i]
                n = min(exact_keys.shape[-2], keys.shape[-2])
                keys[..., :n, :] = exact_keys[..., :n, :]
                values[..., :n, :] = exact_values[..., :n, :]
            layer.keys, layer.values = keys, values
        if self._exact is not None and self._exact[0][0].dtype == dtype:
            self._exact = None

    def tokens_held(self) -> int:
        return len(self.ids)


def left_padded(entries: list[CacheEntry], width: int) -> list[Any] | None:
    """Per layer, (keys, values) of the entries as one batch: row i holds entry i's right-
    aligned in `width` columns, zeros before (all zeros for an entry without any); None when
    no entry has any."""
    import torch

    pasts = [e.past for e in entries]
    layout = next((p for p in pasts if p is not None and p.layers), None)
    if layout is None:
        return None
    layers = []
    for j, first in enumerate(layout.layers):
        _, heads, _, dim = first.keys.shape
        keys = first.keys.new_zeros(len(entries), heads, width, dim)
        values = torch.zeros_like(keys)
        for i, past in enumerate(pasts):
            if past is None:
                continue
            n = past.layers[j].keys.shape[-2]
            keys[i, :, width - n :] = past.layers[j].keys[0]
            values[i, :, width - n :] = past.layers[j].values[0]
        layers.append((keys, values))
    return layers


class PrefixCache:
    """A bounded pool of entries; bounded by entry count and by total tokens held."""

    def __init__(self, max_entries: int = 8, max_tokens: int = 65536) -> None:
        self.max_entries = max_entries
        self.max_tokens = max_tokens
        self._free: list[CacheEntry] = []

    def acquire(self, prompt: list[int]) -> CacheEntry:
        """Take the entry with the longest common prefix out of the pool (or a new one)."""
        best, best_len = None, 0
        for entry in self._free:
            n = common_prefix(entry.ids, prompt)
            if n > best_len:
                best, best_len = entry, n
        if best is None:
            return CacheEntry()
        self._free.remove(best)
        return best

    def longest_prefix(self, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` the best entry holds."""
        return max((common_prefix(entry.ids, prompt) for entry in self._free), default=0)

    def release(self, entry: CacheEntry) -> None:
        if not entry.ids:
            return
        self._free.insert(0, entry)
        del self._free[self.max_entries :]
        while len(self._free) > 1 and sum(e.tokens_held() for e in self._free) > self.max_tokens:
            self._free.pop()

    def clear(self) -> None:
        self._free.clear()

    def __len__(self) -> int:
        return len(self._free)
