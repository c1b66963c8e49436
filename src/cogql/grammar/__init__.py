"""Grammars and token masks, shared by the client side and the engine (no torch here).

Offers the layers above: llguidance grammars compiled for a tokenizer and matched token by
token (`GrammarCompiler`, `GrammarMatcher`, a boolean mask over the vocabulary per step), the
limits on grammar size and compile time, a mask as LMQL's ±100 `logit_bias` (`mask_bias`), and
`common_prefix`. The engine applies a mask to its logits itself (engine/masks.py); runtime/ and
lmtp/emulation.py track a hole's grammar on the client side with the same matcher.
"""

from .bias import BIAS, mask_bias
from .matching import (
    COMPILE_THREADS,
    GRAMMAR_TIMEOUT_S,
    MAX_GRAMMAR_BYTES,
    GrammarCompiler,
    GrammarError,
    GrammarMatcher,
)
from .prefix import common_prefix

__all__ = [
    "BIAS",
    "COMPILE_THREADS",
    "GRAMMAR_TIMEOUT_S",
    "MAX_GRAMMAR_BYTES",
    "GrammarCompiler",
    "GrammarError",
    "GrammarMatcher",
    "common_prefix",
    "mask_bias",
]
