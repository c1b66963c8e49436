"""A token mask as `logit_bias`: how LMQL sends a grammar to a server that cannot run one."""

from __future__ import annotations

import numpy as np

BIAS = 100.0


def mask_bias(allowed: np.ndarray | None) -> dict[int, float]:
    """A token mask as LMQL sends it: +100 on the allowed ids or -100 on the others, whichever
    set is smaller (None: no mask, no bias)."""
    if allowed is None:
        return {}
    on = np.flatnonzero(allowed)
    if len(on) <= len(allowed) - len(on):
        return {int(i): BIAS for i in on}
    return {int(i): -BIAS for i in np.flatnonzero(~allowed)}
