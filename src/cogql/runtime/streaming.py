"""`cogql.stream`: a running query as an async iterator of its events.

    async for event in cogql.stream(source, name="Ada"):
        match event:
            case cogql.TextAppended(text=text): ...
            case cogql.QueryFinished(result=result): ...

The query runs as a task of the caller's event loop; its `output=` events go through a queue to
the iterator, in order, and the last item is `QueryFinished` with what the query returned. An
error in the query is raised by the iterator. Leaving the loop early (or `aclose()`, or the end
of an `async with` block) cancels the query, so a UI that stops listening stops the model too.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .events import OnEvent, QueryEvent, QueryFinished
from .query import BoundQuery, QueryFunction, query_from_string

_DONE = object()


class QueryStream:
    """The events of one query run; iterate it once with `async for`."""

    def __init__(
        self, query: QueryFunction | BoundQuery | str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.query = query_from_string(query) if isinstance(query, str) else query
        self.args = args
        self.kwargs = kwargs
        self.result: Any = None  # what the query returned, once finished
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[Any] | None = None
        self._finished = False

    def __aiter__(self) -> QueryStream:
        return self

    async def __anext__(self) -> QueryEvent | QueryFinished:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            self._start()
        item = await self._queue.get()
        if item is not _DONE:
            return item
        self._finished = True
        assert self._task is not None
        self.result = self._task.result()  # the query's error, if it failed
        return QueryFinished(self.result)

    def _start(self) -> None:
        also: OnEvent | None = self.kwargs.pop("output", None)

        def on_event(event: QueryEvent) -> None:
            self._queue.put_nowait(event)
            if also is not None:
                also(event)

        run = self.query.run(*self.args, output=on_event, **self.kwargs)
        self._task = asyncio.ensure_future(run)
        self._task.add_done_callback(lambda _: self._queue.put_nowait(_DONE))

    async def aclose(self) -> None:
        """Stop the query if it is still running."""
        self._finished = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> QueryStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()


def stream(query: QueryFunction | BoundQuery | str, *args: Any, **kwargs: Any) -> QueryStream:
    """Run `query` (source text or a query function) with these inputs and runtime options,
    yielding TextAppended / VariableFinished / ModelCall events and finally QueryFinished."""
    return QueryStream(query, args, kwargs)
