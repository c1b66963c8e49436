"""One query run for the page: compile, start, stream its events, stop.

The query runs as a task of the server's event loop with details on (runtime/events.py,
`token_details`). Its events are queued as they happen and sent in batches, so a fast model is
not slowed by one websocket frame per token. Stopping cancels the task, which cancels the
query's model calls (the in-process engine drops their streams; an LMTP server is told).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import QueryError
from ..language.compiler import compile_query
from ..runtime.events import QueryEvent, token_details
from ..runtime.model import typed_model
from ..runtime.query import query_from_string
from . import wire

Send = Callable[[dict[str, Any]], Awaitable[None]]
TOP_ALTERNATIVES = 5  # alternatives shown per token
BATCH_S = 0.03  # events wait this long at most to go out together


class RunRequestError(QueryError, ValueError):
    """A run message from the page that is not what the page sends (a bug, or not the page)."""


@dataclass(frozen=True)
class RunRequest:
    source: str
    inputs: dict[str, Any] = field(default_factory=dict)
    model: str = ""

    @classmethod
    def parse(cls, message: dict[str, Any]) -> RunRequest:
        source, inputs = message.get("source"), message.get("inputs", {})
        name = message.get("model", "")
        if not isinstance(source, str):
            raise RunRequestError("a run message needs the query's source as a string")
        if not isinstance(inputs, dict) or not all(isinstance(k, str) for k in inputs):
            raise RunRequestError("a run message's inputs map names to values")
        if not isinstance(name, str):
            raise RunRequestError("a run message's model is a string")
        return cls(source, {k: _literal(v) for k, v in inputs.items()}, name)


def _literal(value: Any) -> Any:
    """An input as `cogql run --set` reads it: a Python literal, or else the text itself."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return value


def check(source: str) -> dict[str, Any]:
    """What the editor shows while the query is written: its inputs and decoder, or the
    error compiling it gives, with its line and column."""
    try:
        compiled = compile_query(source)
    except Exception as e:
        return {"ok": False, "error": wire.error(e)}
    decoder = compiled.decoder.name if compiled.decoder is not None else "argmax"
    return {"ok": True, "inputs": list(compiled.free_variables), "decoder": decoder}


class QuerySession:
    """The page's current run, if any: `start` a new one (stopping the last), `stop` it."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def start(self, request: RunRequest) -> None:
        await self.stop()
        self.task = asyncio.create_task(self._run(request))

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, request: RunRequest) -> None:
        outbox = _Outbox(self.send)
        await self.send({"type": "started"})
        try:
            query = query_from_string(request.source)
            runtime: dict[str, Any] = {"output": outbox.put}
            model = typed_model(request.model)
            if model is not None:
                runtime["model"] = model
            with token_details(TOP_ALTERNATIVES):
                value = await query.run(**request.inputs, **runtime)
        except asyncio.CancelledError:
            await outbox.close()
            await self.send({"type": "stopped"})
            raise
        except Exception as e:
            await outbox.close()
            await self.send(wire.error(e))
            return
        await outbox.close()
        await self.send({"type": "finished", "result": wire.result(value)})


class _Outbox:
    """Events waiting to be sent; a sender task sends what has gathered every BATCH_S."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.pending: list[dict[str, Any]] = []
        self.ready = asyncio.Event()
        self.sender = asyncio.create_task(self._sending())

    def put(self, event: QueryEvent) -> None:
        self.pending.append(wire.event(event))
        self.ready.set()

    async def _sending(self) -> None:
        while True:
            await self.ready.wait()
            await asyncio.sleep(BATCH_S)
            await self._flush()

    async def _flush(self) -> None:
        self.ready.clear()
        batch, self.pending = self.pending, []
        if batch:
            await self.send({"type": "events", "events": batch})

    async def close(self) -> None:
        self.sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sender
        await self._flush()
