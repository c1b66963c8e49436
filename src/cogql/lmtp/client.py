"""LMTP client: turns ops into streams of events over any transport.

It numbers streams, routes events to them, ends a stream at its first terminal event (later
duplicates are ignored, as LMQL servers send some), and turns error events into exceptions.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .cost import current_cost
from .messages import (
    AFTER,
    ErrorEvent,
    Event,
    Generate,
    InfoEvent,
    ModelInfo,
    Op,
    Score,
    TokenEvent,
    is_terminal,
)
from .transports.base import Cancellable, Transport

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer
    from .emulation import Emulator


class LMTPError(RuntimeError):
    """The server reported an error for a stream."""


class ScoreAfter:
    """Options to score after a GENERATE's tokens and then `suffix`, sent in the GENERATE's
    message (the `after` extension): over Replicate, no prediction of their own. `result` gets
    each option's log-probs, or None when they were not sent or did not come back."""

    def __init__(self, suffix: list[int], options: list[list[int]]) -> None:
        self.suffix = list(suffix)
        self.options = [list(o) for o in options]
        self.result: asyncio.Future[list[list[float]] | None] = (
            asyncio.get_running_loop().create_future()
        )

    def settle(self, value: list[list[float]] | None) -> None:
        if not self.result.done():
            self.result.set_result(value)


class _Gathered:
    """The events of several ops, until each has ended; `done` resolves then."""

    def __init__(self, ops: list[Op]) -> None:
        self.events: dict[Any, list[Event]] = {op.stream_id: [] for op in ops}
        self.open = set(self.events)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.open:
            self.done.set_result(None)

    def add(self, event: Event) -> None:
        if event.stream_id not in self.open:
            return
        self.events[event.stream_id].append(event)
        if is_terminal(event):
            self.open.discard(event.stream_id)
            if not self.open and not self.done.done():
                self.done.set_result(None)

    def logprobs(self) -> list[list[float]]:
        """Per op, the log-probs of its TOKEN events; the first error is raised."""
        out = []
        for events in self.events.values():
            errors = [e for e in events if isinstance(e, ErrorEvent)]
            if errors:
                raise LMTPError(errors[0].error)
            out.append([e.logprob for e in events if isinstance(e, TokenEvent)])
        return out


class LMTPClient:
    def __init__(
        self,
        transport: Transport,
        model: str = "",
        *,
        tokenizer: Tokenizer | None = None,
        use_extensions: bool = True,
    ) -> None:
        """`tokenizer` lets the client emulate extensions a server lacks (LMQL's method);
        `use_extensions=False` emulates them even where the server has them."""
        self.transport = transport
        self.model = model
        self.tokenizer = tokenizer
        self.use_extensions = use_extensions
        # set by whoever learns them another way (a Replicate version's schema), sparing the
        # MODEL_INFO request that would ask for them
        self.known_capabilities: frozenset[str] | None = None
        self._ids = itertools.count(1)
        self._info: dict[str, Any] | None = None
        self._emulator: Emulator | None = None

    async def model_info(self) -> dict[str, Any]:
        """The server's model_info (a non-dict answer comes back as {"model_info": value});
        LMQL's "<unavailable>" (still loading) is not cached, so asking again sees the model."""
        if self._info is None:
            info = await self.request_info({})
            if info.get("model_info") == "<unavailable>":
                return info
            self._info = info
        return self._info

    async def request_info(self, data: dict[str, Any]) -> dict[str, Any]:
        """One uncached MODEL_INFO carrying `data`, e.g. {"tokenizer": True} (an extension)."""
        op = ModelInfo(next(self._ids), self.model, dict(data))
        event = (await self._collect([op])).events[op.stream_id][-1]
        if isinstance(event, ErrorEvent):
            raise LMTPError(f"MODEL_INFO failed: {event.error}")
        info = event.model_info if isinstance(event, InfoEvent) else None
        return info if isinstance(info, dict) else {"model_info": info}

    async def capabilities(self) -> frozenset[str]:
        if self.known_capabilities is None:
            info = await self.model_info()
            self.known_capabilities = frozenset(info.get("capabilities", ()))
        return self.known_capabilities

    async def generate(
        self, op: Generate, then: ScoreAfter | None = None
    ) -> AsyncIterator[TokenEvent]:
        """Stream the tokens of one GENERATE; cancels it server-side if the caller stops early.
        Extensions the server does not advertise are emulated with plain LMTP requests.
        `then` is scored in the same message where the server has the `after` extension."""
        missing = await self._missing_extensions(op)
        if then is not None and (missing or not await self._has(AFTER)):
            then.settle(None)
            then = None
        events = self._emulation(missing).generate(op) if missing else self._generate(op, then)
        cost = current_cost()
        try:
            async for event in events:
                if cost is not None:
                    cost.tokens_used += 1
                yield event
        finally:
            await events.aclose()  # a caller that stops early cancels the request now

    async def _has(self, extension: str) -> bool:
        return self.use_extensions and extension in await self.capabilities()

    async def _missing_extensions(self, op: Generate) -> list[str]:
        """Extensions `op` uses that the server lacks; an unsupported seed is dropped (LMQL
        servers hand unknown fields to transformers, which rejects them)."""
        wanted = {"grammar": op.grammar, "stop": op.stop, "min_tokens": op.min_tokens}
        used = [name for name, value in wanted.items() if value]
        if not used and op.seed is None:
            return []
        have = await self.capabilities() if self.use_extensions else frozenset()
        if "seed" not in have:
            op.seed = None
        return [name for name in used if name not in have]

    def _emulation(self, missing: list[str]) -> Emulator:
        if self.tokenizer is None:
            raise LMTPError(
                f"the server does not support {', '.join(missing)}; give the model a "
                "tokenizer (tokenizer=...) so that cogql can enforce them on its side"
            )
        if self._emulator is None:
            from .emulation import Emulator

            self._emulator = Emulator(self._generate, self.tokenizer)
        return self._emulator

    async def _generate(
        self, op: Generate, then: ScoreAfter | None = None
    ) -> AsyncIterator[TokenEvent]:
        op.stream_id = next(self._ids)
        op.model = op.model or self.model
        cost = current_cost()
        if cost is not None:
            cost.prompt_tokens += len(op.prompt)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        later = self._scores(then.suffix, then.options, after=op.stream_id) if then else []
        gathered = _Gathered(later)

        def on_event(event: Event) -> None:
            if event.stream_id == op.stream_id:
                queue.put_nowait(event)
            else:
                gathered.add(event)

        handle, *handles = self.transport.send([op, *later], on_event)
        if then is not None:
            gathered.done.add_done_callback(lambda _: then.settle(_logprobs_or_none(gathered)))
        finished = False
        try:
            while True:
                event = await queue.get()
                if isinstance(event, ErrorEvent):
                    finished = True
                    raise LMTPError(event.error)
                if isinstance(event, TokenEvent):
                    if cost is not None:
                        cost.tokens_received += 1
                    yield event
                if is_terminal(event):
                    finished = True
                    return
        finally:
            if not finished:
                for h in (handle, *handles):  # what follows a cut GENERATE is not wanted
                    h.cancel()
                if then is not None:
                    then.settle(None)

    async def score(self, prompt: list[int], options: list[list[int]]) -> list[list[float]]:
        """Log-probs of each option's tokens after `prompt`, all options in one message."""
        gathered = await self._collect(self._scores(prompt, options))
        return gathered.logprobs()

    def _scores(self, prompt: list[int], options: list[list[int]], after: Any = None) -> list[Op]:
        cost = current_cost()
        if cost is not None:
            cost.prompt_tokens += len(prompt) * len(options)
            cost.tokens_scored += sum(len(o) for o in options)
        return [Score(next(self._ids), self.model, list(prompt), list(o), after) for o in options]

    async def _collect(self, ops: list[Op]) -> _Gathered:
        gathered = _Gathered(ops)
        handles: list[Cancellable] = self.transport.send(ops, gathered.add)
        try:
            await gathered.done
        finally:
            if gathered.open:
                for h in handles:
                    h.cancel()
        return gathered

    async def close(self) -> None:
        await self.transport.close()


def _logprobs_or_none(gathered: _Gathered) -> list[list[float]] | None:
    try:
        return gathered.logprobs()
    except LMTPError:
        return None
