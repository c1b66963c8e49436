"""LMTP client: turns ops into streams of events over any transport.

It numbers streams, routes events to them, ends a stream at its first terminal event (later
duplicates are ignored, as LMQL servers send some), and turns error events into exceptions.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import TransportError
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
    from .emulation import ExtensionEmulator


class LMTPError(TransportError, RuntimeError):
    """The server reported an error for a stream, or the transport failed it (`retryable`
    when it was the connection or a rate limit, not the request)."""


class ScoreAfter:
    """Options to score after a GENERATE's tokens and then `suffix`, sent in the GENERATE's
    message (the `after` extension): over Replicate, no prediction of their own. `sent` says
    whether they went; `result` gets each option's log-probs, or None when they were not sent
    or did not come back."""

    def __init__(self, suffix: list[int], options: list[list[int]]) -> None:
        self.suffix = list(suffix)
        self.options = [list(o) for o in options]
        self.sent = False
        self.result: asyncio.Future[list[list[float]] | None] = (
            asyncio.get_running_loop().create_future()
        )

    def settle(self, value: list[list[float]] | None) -> None:
        if not self.result.done():
            self.result.set_result(value)


class GenerateAfter:
    """A GENERATE sent in another GENERATE's message, to start when the GENERATE before it in
    the chain ends, on that one's prompt and tokens and then `op.prompt` (the `after`
    extension): a hole generated ahead, in the same Replicate prediction. `sent` says whether
    the server took it; `events()` reads it once the caller gets there."""

    def __init__(self, op: Generate) -> None:
        self.op = op
        self.sent = False
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._handle: Cancellable | None = None
        self._cost = current_cost()

    def _deliver(self, event: Event) -> None:
        if isinstance(event, TokenEvent) and self._cost is not None:
            self._cost.tokens_received += 1
        self._queue.put_nowait(event)

    def events(self) -> AsyncGenerator[TokenEvent, None]:
        """Its tokens, as `LMTPClient.generate` gives them; stopping early cancels it."""
        cost = current_cost()

        def used() -> None:
            if cost is not None:
                cost.tokens_used += 1

        return _read(self._queue, used, self.cancel)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


Followup = GenerateAfter | ScoreAfter


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
                raise LMTPError(errors[0].error, retryable=errors[0].retryable)
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
        # whether a query should send holes ahead (runtime/ahead.py): where round trips cost
        # more than a wrong guess's compute (Replicate)
        self.speculate = False
        self._ids = itertools.count(1)
        self._info: dict[str, Any] | None = None
        self._emulator: ExtensionEmulator | None = None

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
            raise LMTPError(f"MODEL_INFO failed: {event.error}", retryable=event.retryable)
        info = event.model_info if isinstance(event, InfoEvent) else None
        return info if isinstance(info, dict) else {"model_info": info}

    async def capabilities(self) -> frozenset[str]:
        if self.known_capabilities is None:
            info = await self.model_info()
            self.known_capabilities = frozenset(info.get("capabilities", ()))
        return self.known_capabilities

    async def generate(
        self, op: Generate, then: Sequence[Followup] = ()
    ) -> AsyncGenerator[TokenEvent, None]:
        """Stream the tokens of one GENERATE; cancels it server-side if the caller stops early.
        Extensions the server does not advertise are emulated with plain LMTP requests.
        `then` goes in the same message where the server has the `after` extension, each
        followup after the GENERATE before it (`op`, or a GenerateAfter)."""
        missing = await self._missing_extensions(op)
        if then and (missing or not await self._has(AFTER)):
            for followup in then:
                if isinstance(followup, ScoreAfter):
                    followup.settle(None)
            then = ()
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

    def _emulation(self, missing: list[str]) -> ExtensionEmulator:
        if self.tokenizer is None:
            raise LMTPError(
                f"the server does not support {', '.join(missing)}; give the model a "
                "tokenizer (tokenizer=...) so that cogql can enforce them on its side"
            )
        if self.tokenizer.eos_token_id is None:
            raise LMTPError(
                f"the server does not support {', '.join(missing)}, and cogql cannot enforce "
                "them on its side: the model's tokenizer has no end-of-sequence token"
            )
        if self._emulator is None:
            from .emulation import ExtensionEmulator

            self._emulator = ExtensionEmulator(self._generate, self.tokenizer)
        return self._emulator

    async def _generate(
        self, op: Generate, then: Sequence[Followup] = ()
    ) -> AsyncGenerator[TokenEvent, None]:
        op.stream_id = next(self._ids)
        op.model = op.model or self.model
        cost = current_cost()
        if cost is not None:
            cost.prompt_tokens += len(op.prompt)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        routes: dict[Any, Callable[[Event], None]] = {op.stream_id: queue.put_nowait}
        ops = [op, *self._chain(op.stream_id, then, routes)]

        def on_event(event: Event) -> None:
            route = routes.get(event.stream_id)
            if route is not None:
                route(event)

        handle, *handles = self.transport.send(ops, on_event)
        ahead = {f.op.stream_id: f for f in then if isinstance(f, GenerateAfter)}
        for sent, h in zip(ops[1:], handles, strict=True):
            if sent.stream_id in ahead:
                ahead[sent.stream_id]._handle = h

        def received() -> None:
            if cost is not None:
                cost.tokens_received += 1

        def cut() -> None:
            for h in (handle, *handles):  # what follows a cut GENERATE is not wanted
                h.cancel()
            for followup in then:
                if isinstance(followup, ScoreAfter):
                    followup.settle(None)

        async with aclosing(_read(queue, received, cut)) as events:
            async for event in events:
                yield event

    def _chain(
        self, first: Any, then: Sequence[Followup], routes: dict[Any, Callable[[Event], None]]
    ) -> list[Op]:
        """The wire ops of the followups, each `after` the GENERATE before it; their events
        are routed to them."""
        ops: list[Op] = []
        before = first
        for followup in then:
            if isinstance(followup, GenerateAfter):
                sent = replace(followup.op, stream_id=next(self._ids), after=before)
                sent.model = sent.model or self.model
                if (cost := current_cost()) is not None:
                    cost.prompt_tokens += len(sent.prompt)
                followup.op, followup.sent = sent, True
                routes[sent.stream_id] = followup._deliver
                ops.append(sent)
                before = sent.stream_id
                continue
            scores = self._scores(followup.suffix, followup.options, after=before)
            followup.sent = True
            gathered = _Gathered(scores)
            for score in scores:
                routes[score.stream_id] = gathered.add
            gathered.done.add_done_callback(functools.partial(_settle_from, followup, gathered))
            ops.extend(scores)
        return ops

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
        handles: Sequence[Cancellable] = self.transport.send(ops, gathered.add)
        try:
            await gathered.done
        finally:
            if gathered.open:
                for h in handles:
                    h.cancel()
        return gathered

    async def close(self) -> None:
        await self.transport.close()


async def _read(
    queue: asyncio.Queue[Event], count: Callable[[], None], cut: Callable[[], None]
) -> AsyncGenerator[TokenEvent, None]:
    """One stream's TOKEN events until its end (an error event raises LMTPError); `cut` runs
    when the reader stops before the end."""
    finished = False
    try:
        while True:
            event = await queue.get()
            if isinstance(event, ErrorEvent):
                finished = True
                raise LMTPError(event.error, retryable=event.retryable)
            if isinstance(event, TokenEvent):
                count()
                yield event
            if is_terminal(event):
                finished = True
                return
    finally:
        if not finished:
            cut()


def _settle_from(followup: ScoreAfter, gathered: _Gathered, _: object) -> None:
    try:
        followup.settle(gathered.logprobs())
    except LMTPError:
        followup.settle(None)
