"""cogql: LMQL queries on models you host — in-process, over LMTP, or on Replicate.

The public names mirror LMQL's (`import cogql as lmql` works for the common API).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import algorithms
from . import tokenizer as _tokenizer_module
from .language.errors import QueryCompileError, QuerySyntaxError
from .runtime import variable_decorators as decorators
from .runtime.events import ModelCall, QueryEvent, QueryFinished, TextAppended, VariableFinished
from .runtime.functions import F, generate, generate_sync, main
from .runtime.lmql_tokenizer import LMQLTokenizer, TokenizerModule
from .runtime.model import (
    Model,
    get_default_model,
    get_default_scoring_model,
    model,
    set_default_model,
)
from .runtime.query import QueryFunction, query_from_function, query_from_string, run_blocking
from .runtime.result import LMQLResult
from .runtime.scoring import ScoringResult, score, score_sync
from .runtime.streaming import QueryStream, stream
from .runtime.tracing import InferenceCertificate, Tracer, certificate, traced
from .runtime.writers import headless, printing, silent

__all__ = [
    "LLM",
    "F",
    "InferenceCertificate",
    "LMQLQueryFunction",
    "LMQLResult",
    "LMQLTokenizer",
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
    "Tracer",
    "VariableFinished",
    "algorithms",
    "certificate",
    "decorators",
    "generate",
    "generate_sync",
    "get_default_model",
    "get_default_scoring_model",
    "headless",
    "main",
    "model",
    "printing",
    "query",
    "query_from_string",
    "run",
    "run_file",
    "run_in_loop",
    "run_sync",
    "score",
    "score_sync",
    "set_default_model",
    "silent",
    "stream",
    "traced",
]

LLM = Model
LMQLQueryFunction = QueryFunction
# `cogql.tokenizer` stays the tokenizer module; calling it is LMQL's `lmql.tokenizer(name)`
_tokenizer_module.__class__ = TokenizerModule


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


async def run_file(
    filepath: str, *args: Any, output_writer: Any = None, force_model: Any = None, **kwargs: Any
) -> Any:
    """LMQL's `lmql.run_file`: run the query in a .lmql file; `force_model` overrides its
    `from` clause (LMQL 0.7.3 accepts it and ignores it)."""
    with open(filepath, encoding="utf-8") as f:
        source = f.read()
    if output_writer is not None:
        kwargs["output_writer"] = output_writer
    if force_model is not None:
        kwargs["model"] = force_model
    return await query_from_string(source).run(*args, **kwargs)


def run_in_loop(coro: Any) -> Any:
    """LMQL's `lmql.run_in_loop`: run a coroutine to completion from synchronous code."""
    return run_blocking(coro)
