"""What a query cost: predictions made, their compute time, tokens generated and used.

On Replicate every prediction is a queued, billed round trip, and tokens a model generates after
the query stopped reading them are paid for and wasted, so each query result carries a `Cost`.
The record follows the query through a context variable: `track_cost()` opens one, and the
layers that know a figure add it as they go (the LMTP client counts tokens it receives and
hands on; the Replicate transport records each prediction, its id, `predict_time` and the tokens
it generated server-side, which it reads back from the finished prediction). Tasks a query
starts inherit the variable, so concurrent branches of one query add to the same record, and
concurrent queries never mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field

SETTLE_TIMEOUT_S = 10.0  # the last prediction's metrics are one GET away; never wait forever


@dataclass
class PredictionCost:
    """One Replicate prediction: the LMTP ops packed into it and what it consumed."""

    id: str
    ops: tuple[str, ...]
    status: str = "starting"
    predict_time: float | None = None  # seconds of compute (Replicate's metrics.predict_time)
    tokens_generated: int = 0  # GENERATE tokens the model produced, read or not


@dataclass
class Cost:
    """A query's cost. `tokens_generated` counts what the model produced (on Replicate, from the
    predictions' own output, so tokens produced after the client stopped reading count too);
    `tokens_used` counts the generated tokens the query consumed; the difference is waste."""

    predictions: list[PredictionCost] = field(default_factory=list)
    tokens_received: int = 0  # GENERATE tokens that reached the client
    tokens_used: int = 0
    tokens_scored: int = 0
    prompt_tokens: int = 0  # prompt tokens sent with GENERATE and SCORE ops
    _pending: set[asyncio.Future[object]] = field(default_factory=set, repr=False, compare=False)

    @property
    def prediction_ids(self) -> list[str]:
        return [p.id for p in self.predictions]

    @property
    def predict_time(self) -> float:
        return sum(p.predict_time or 0.0 for p in self.predictions)

    @property
    def tokens_generated(self) -> int:
        """Server-side counts where the transport reports them (Replicate), else tokens received."""
        if self.predictions:
            return sum(p.tokens_generated for p in self.predictions)
        return self.tokens_received

    @property
    def tokens_wasted(self) -> int:
        return max(self.tokens_generated - self.tokens_used, 0)

    def add_prediction(self, prediction: PredictionCost) -> None:
        if prediction not in self.predictions:
            self.predictions.append(prediction)

    def defer(self, work: Awaitable[object]) -> None:
        """Work that completes a figure later (a finished prediction's metrics); `settle` waits."""
        future = asyncio.ensure_future(work)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def settle(self, timeout: float = SETTLE_TIMEOUT_S) -> Cost:
        """Wait (bounded) until deferred figures are in; what is still missing stays None."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
        return self

    def summary(self) -> str:
        """One line for humans, e.g. for `cogql run --trace`."""
        parts = []
        if self.predictions:
            n = len(self.predictions)
            parts.append(f"{n} prediction{'s' if n != 1 else ''}")
            parts.append(f"predict_time {self.predict_time:.3f} s")
        parts.append(f"tokens generated {self.tokens_generated}")
        parts.append(f"used {self.tokens_used}")
        if self.tokens_scored:
            parts.append(f"scored {self.tokens_scored}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "predictions": [
                {
                    "id": p.id,
                    "ops": list(p.ops),
                    "status": p.status,
                    "predict_time": p.predict_time,
                    "tokens_generated": p.tokens_generated,
                }
                for p in self.predictions
            ],
            "predict_time": self.predict_time,
            "tokens_generated": self.tokens_generated,
            "tokens_used": self.tokens_used,
            "tokens_scored": self.tokens_scored,
            "prompt_tokens": self.prompt_tokens,
        }


_current: contextvars.ContextVar[Cost | None] = contextvars.ContextVar("cogql_cost", default=None)


def current_cost() -> Cost | None:
    """The record of the query running in this context, if any."""
    return _current.get()


@contextlib.contextmanager
def track_cost() -> Iterator[Cost]:
    """A record for the code (and the tasks it starts) inside the block: a fresh one, or the
    enclosing query's when there is one (a nested query's cost is part of its caller's)."""
    active = _current.get()
    if active is not None:
        yield active
        return
    cost = Cost()
    token = _current.set(cost)
    try:
        yield cost
    finally:
        _current.reset(token)
