"""cogql: LMQL queries on models you host — in-process, over LMTP, or on Replicate.

The public names mirror LMQL's (`import cogql as lmql` works for the common API).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .language.errors import QueryCompileError, QuerySyntaxError
from .runtime import decorators
from .runtime.events import ModelCall, QueryEvent, QueryFinished, TextAppended, VariableFinished
from .runtime.functions import F, generate, generate_sync, main
from .runtime.model import Model, model
from .runtime.query import QueryFunction, query_from_function, query_from_string, run_blocking
from .runtime.result import LMQLResult
from .runtime.scoring import ScoringResult, score, score_sync
from .runtime.streaming import QueryStream, stream
from .runtime.writers import headless, printing, silent

__all__ = [
    "LLM",
    "F",
    "LMQLResult",
    "Model",
    "ModelCall",
    "QueryCompileError",
    "QueryEvent",
    "QueryFinished",
    "QueryFunction",
    "QueryStream",
    "QuerySyntaxError",
    "ScoringResult",
    "TextAppended",
    "VariableFinished",
    "decorators",
    "generate",
    "generate_sync",
    "headless",
    "main",
    "model",
    "printing",
    "query",
    "run",
    "run_sync",
    "score",
    "score_sync",
    "silent",
    "stream",
]

LLM = Model


def query(fn_or_source: Callable[..., Any] | str | None = None, **defaults: Any) -> Any:
    """`cogql.query("...")`, `@cogql.query`, or `@cogql.query(model=..., decoder=...)`."""
    if isinstance(fn_or_source, str):
        return query_from_string(fn_or_source, **defaults)
    if fn_or_source is None:
        return lambda fn: query_from_function(fn, **defaults)
    return query_from_function(fn_or_source, **defaults)


async def run(source: str, *args: Any, **kwargs: Any) -> Any:
    """Compile and run a query; keyword arguments are inputs or runtime options (model=...)."""
    return await query_from_string(source).run(*args, **kwargs)


def run_sync(source: str, *args: Any, **kwargs: Any) -> Any:
    """`run`, blocking; not callable from inside a running event loop."""
    return run_blocking(run(source, *args, **kwargs))
