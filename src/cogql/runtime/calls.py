"""The `ModelCall` event of a call just made: its number, wall time, and on Replicate the
prediction it went in."""

from __future__ import annotations

import time

from ..lmtp.cost import current_cost
from .events import ModelCall, next_call_id


def model_call(
    kind: str,
    prompt_tokens: int,
    tokens: int,
    started: float | None,
    run: int = 0,
    *,
    call_id: int | None = None,
    ahead: bool = False,
    status: str = "done",
) -> ModelCall:
    """`started` is the call's `time.perf_counter()` at its start (None: it never ran). The
    prediction is the query's latest: a call's own one, or for a call sent ahead the one of the
    call it went with (concurrent calls of a beam step may be told one of their step's)."""
    cost = current_cost()
    total = len(cost.predictions) if cost is not None and cost.predictions else None
    seconds = 0.0 if started is None else time.perf_counter() - started
    return ModelCall(
        kind,
        prompt_tokens,
        tokens,
        seconds,
        run,
        id=call_id if call_id is not None else next_call_id(),
        ahead=ahead,
        status=status,
        prediction=total,
        predictions=total,
    )
