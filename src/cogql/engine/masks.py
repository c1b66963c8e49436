"""Token masks from llguidance grammars.

llguidance computes a next-token bitmask in microseconds; this module turns that bitmask into
a logits mask with numpy bit unpacking (llguidance's own CPU helper loops in Python and costs
more than a forward pass), so no per-token loop over the vocabulary ever runs in Python.
"""

from __future__ import annotations

import threading
import weakref
from functools import cached_property
from typing import TYPE_CHECKING

import llguidance
import llguidance.numpy
import numpy as np

if TYPE_CHECKING:
    import torch

    from ..tokenizer import Tokenizer


class GrammarError(ValueError):
    """A grammar that llguidance rejects; the message is llguidance's own."""


_ll_tokenizers: weakref.WeakKeyDictionary[Tokenizer, llguidance.LLTokenizer] = (
    weakref.WeakKeyDictionary()
)
_ll_lock = threading.Lock()


def _ll_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """Built once per tokenizer (a third of a second for 49k ids), not once per engine: the
    random model gives every seed its own engine over the same tokenizer."""
    with _ll_lock:
        found = _ll_tokenizers.get(tokenizer)
        if found is None:
            import llguidance.hf

            found = _ll_tokenizers[tokenizer] = llguidance.hf.from_tokenizer(tokenizer.to_hf())
        return found


class GrammarCompiler:
    """Builds matchers for one tokenizer (the llguidance tokenizer is built once)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    @cached_property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        return _ll_tokenizer(self.tokenizer)

    def matcher(self, grammar: str) -> GrammarMatcher:
        text = grammar if "start" in grammar else f"start: {grammar}"
        serialized = llguidance.LLMatcher.grammar_from_lark(text)
        m = llguidance.LLMatcher(self.ll_tokenizer, serialized, log_level=0)
        if m.is_error():
            raise GrammarError(m.get_error())
        return GrammarMatcher(m, self.ll_tokenizer.vocab_size)


class GrammarMatcher:
    """One grammar's progress over one generation."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._m = matcher
        self._vocab = vocab_size
        words = (vocab_size + 31) // 32
        self._bitmask = np.zeros((1, words), dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """Boolean array over the tokenizer's vocabulary."""
        llguidance.numpy.fill_next_token_bitmask(self._m, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        return bits[: self._vocab].view(np.bool_)

    def mask_logits(self, logits: torch.Tensor) -> np.ndarray:
        """Set disallowed entries of a 1-D logits row to -inf; returns the allowed array."""
        import torch

        allowed = self.allowed()
        n = min(len(allowed), logits.shape[-1])
        logits[n:] = float("-inf")  # ids the grammar's tokenizer does not know
        logits[:n].masked_fill_(torch.from_numpy(~allowed[:n]), float("-inf"))
        return allowed

    def consume(self, tokens: list[int]) -> None:
        if not self._m.consume_tokens(tokens):
            raise GrammarError(self._m.get_error() or f"tokens {tokens} violate the grammar")

    def forced_tokens(self) -> list[int]:
        return list(self._m.compute_ff_tokens())

    def is_accepting(self) -> bool:
        return self._m.is_accepting()

    def is_stopped(self) -> bool:
        return self._m.is_stopped()
