"""The top-level query functions, LMQL's names: `query` (a query function from a string or a
decorated function), `run` / `run_sync` / `run_file` (compile and run at once) and
`run_in_loop`. `cogql` re-exports them; they live here so the package namespace holds only
its public names."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, overload

from .language.source_file import read_query_source
from .runtime.events import QueryEvent
from .runtime.model import Model
from .runtime.query import (
    AsyncCall,
    QueryFunction,
    query_from_function,
    query_from_string,
    run_blocking,
)
from .runtime.result import QueryResult

__all__ = ["query", "run", "run_file", "run_in_loop", "run_sync"]

_T = TypeVar("_T")


@overload
def query(
    fn_or_source: str, *, is_async: Literal[True] = True, **defaults: Any
) -> QueryFunction[AsyncCall]: ...
@overload
def query(
    fn_or_source: str, *, is_async: Literal[False], **defaults: Any
) -> QueryFunction[QueryResult]: ...
@overload
def query(
    fn_or_source: Callable[..., Coroutine[Any, Any, Any]], **defaults: Any
) -> QueryFunction[AsyncCall]: ...
@overload
def query(fn_or_source: Callable[..., Any], **defaults: Any) -> QueryFunction[QueryResult]: ...
@overload
def query(
    fn_or_source: None = None, **defaults: Any
) -> Callable[[Callable[..., Any]], QueryFunction[Any]]: ...
def query(
    fn_or_source: Callable[..., Any] | str | None = None, **defaults: Any
) -> QueryFunction[Any] | Callable[[Callable[..., Any]], QueryFunction[Any]]:
    """`cogql.query("...")`, `@cogql.query`, or `@cogql.query(model=..., decoder=...)`: calling
    the query gives its result (awaitable for `async def` queries and query strings, unless
    `is_async=False`)."""
    if isinstance(fn_or_source, str):
        return query_from_string(fn_or_source, **defaults)
    if fn_or_source is None:
        return lambda fn: query_from_function(fn, **defaults)
    return query_from_function(fn_or_source, **defaults)


async def run(source: str, *args: Any, **kwargs: Any) -> QueryResult:
    """Compile and run a query; keyword arguments are inputs or runtime options (model=...)."""
    return await query_from_string(source).run(*args, **kwargs)


def run_sync(source: str, *args: Any, **kwargs: Any) -> QueryResult:
    """`run`, blocking; not callable from inside a running event loop."""
    return run_blocking(run(source, *args, **kwargs))


async def run_file(
    filepath: str,
    *args: Any,
    output_writer: Callable[[QueryEvent], object] | None = None,
    force_model: str | Model | None = None,
    **kwargs: Any,
) -> QueryResult:
    """LMQL's `lmql.run_file`: run the query in a .lmql file; `force_model` overrides its
    `from` clause (LMQL 0.7.3 accepts it and ignores it)."""
    with open(filepath, "rb") as f:
        source = read_query_source(f, filepath)
    if output_writer is not None:
        kwargs["output_writer"] = output_writer
    if force_model is not None:
        kwargs["model"] = force_model
    return await query_from_string(source).run(*args, **kwargs)


def run_in_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """LMQL's `lmql.run_in_loop`: run a coroutine to completion from synchronous code."""
    return run_blocking(coro)
