"""A grammar's token mask applied to the engine's logits (the torch side of grammar/)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ..grammar import GrammarMatcher


def mask_logits(matcher: GrammarMatcher, logits: torch.Tensor) -> np.ndarray:
    """Set disallowed entries of a 1-D logits row to -inf; returns the allowed array."""
    allowed = matcher.allowed()
    n = min(len(allowed), logits.shape[-1])
    logits[n:] = float("-inf")  # ids the grammar's tokenizer does not know
    logits[:n].masked_fill_(torch.from_numpy(~allowed[:n]), float("-inf"))
    return allowed
