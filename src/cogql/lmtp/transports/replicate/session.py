"""The transport's state on one event loop: the HTTP session, the version lookup, the batch
of ops waiting for its window to close, and the predictions in flight."""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets
from collections.abc import AsyncGenerator
from typing import Any

from ...cost import current_cost
from ...messages import Generate, InfoEvent, ModelInfo, Op, Score, renumbered
from ..base import EventCallback, Handle
from .api import ReplicateAPI, ReplicateTarget, Resolved
from .ops import OpState
from .predictions import BatchPrediction
from .settings import TransportSettings

__all__ = ["LoopSession", "resolved_targets", "wire_ids"]

# process-wide: wire ids unique across transports and processes (a batch is found again by its
# exact input when a create's outcome is unknown), and one version lookup per target
wire_ids = itertools.count(secrets.randbelow(2**40) * 1000 + 1)
resolved_targets: dict[tuple[str, ReplicateTarget], Resolved] = {}


class LoopSession:
    """The transport's state on one event loop: HTTP session, pending batch, predictions."""

    def __init__(self, transport: TransportSettings) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.api = ReplicateAPI(
            transport.token,
            transport.base_url,
            http_transport=transport.http_transport,
            retry=transport.retry,
        )
        self.info_cache = transport.info_cache
        self.pending: list[OpState] = []
        self.predictions: set[BatchPrediction] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._resolve_lock = asyncio.Lock()
        self._closer: AsyncGenerator[None, None] | None = None

    async def _close_with_the_loop(self) -> AsyncGenerator[None, None]:
        """An async generator, which the loop closes when it shuts down (asyncio.run's
        shutdown_asyncgens): the hook that lets an idle HTTP session close its connections
        before the loop that owns them goes away."""
        try:
            yield
        finally:
            await self.api.aclose()

    async def resolve(self) -> Resolved:
        if self._closer is None:
            self._closer = self._close_with_the_loop()
            await anext(self._closer)
        key = (self.transport.base_url, self.transport.target)
        async with self._resolve_lock:
            if key not in resolved_targets:
                resolved_targets[key] = await self.api.resolve(self.transport.target)
        return resolved_targets[key]

    def spawn(self, work: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # ---- sending ---------------------------------------------------------------------------

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Handle]:
        cost = current_cost()
        states = []
        sent = renumbered(ops, wire_ids.__next__)
        together = any(isinstance(op, Generate | Score) and op.after is not None for op in sent)
        group = next(wire_ids) if together else None
        for op, wire_op in zip(ops, sent, strict=True):
            state = OpState(wire_op, op.stream_id, on_event, cost, group=group)
            states.append(state)
            if isinstance(op, ModelInfo) and self._answer_from_cache(state):
                continue
            self.pending.append(state)
        if len(self.pending) >= self.transport.max_ops:
            self.flush()
        elif self.pending and self._timer is None:
            self._timer = self.loop.call_later(self.transport.batch_window, self.flush)
        return [Handle(functools.partial(self.cancel_op, s)) for s in states]

    def _answer_from_cache(self, state: OpState) -> bool:
        resolved = resolved_targets.get((self.transport.base_url, self.transport.target))
        if resolved is None or resolved.version is None:
            return False
        assert isinstance(state.op, ModelInfo)
        state.cache_key = self.info_cache.key(
            self.transport.base_url, resolved.version, state.op.data
        )
        info = self.info_cache.get(state.cache_key)
        if info is None:
            return False
        self.loop.call_soon(state.deliver, InfoEvent(None, info))
        return True

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.pending:
            n = self._batch_size()
            batch = self.pending[:n]
            del self.pending[:n]
            self.predictions.add(BatchPrediction(self, batch))

    def _batch_size(self) -> int:
        """How many pending ops go into the next prediction: up to max_ops, but never a group
        split (a SCORE `after` a GENERATE must travel with it)."""
        n = 0
        while n < len(self.pending):
            group = self.pending[n].group
            end = n + 1
            while (
                group is not None and end < len(self.pending) and self.pending[end].group == group
            ):
                end += 1
            if n and end > self.transport.max_ops:
                break
            n = end
        return n

    def cancel_op(self, state: OpState) -> None:
        if state.settled:
            return
        state.cancelled = True
        if state in self.pending:
            self.pending.remove(state)
        elif state.prediction is not None:
            state.prediction.op_cancelled()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for state in self.pending:
            state.fail("the replicate transport was closed before this op was sent")
        self.pending.clear()
        tasks = [p.task for p in self.predictions]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5)
        if self._closer is not None:
            await self._closer.aclose()
        else:
            await self.api.aclose()
