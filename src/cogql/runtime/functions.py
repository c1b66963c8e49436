"""Query shortcuts with LMQL's names: `F` (a prompt statement as a function), `generate` and
`main`.

`F("Summarize {data}: [SUMMARY]", "len(TOKENS(SUMMARY)) < 20")` is one prompt statement with
its where clause; calling it returns the hole's value (a dict of all hole values when it has
several, a list of those for decoders with several results), not an LMQLResult.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..language.compiler import compile_query
from .model import Model
from .query import BoundQuery, QueryFunction, run_blocking
from .result import LMQLResult, QueryResult


@dataclass
class FQuery(QueryFunction[Any]):
    """A query whose result is unpacked to its hole values (LMQL's `is_f_function`): a call
    gives them (or, with `is_async=True`, a coroutine of them)."""

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        return unpack(await super().run(*args, **kwargs))


def unpack(result: Any) -> Any:
    """LMQL's F result shape: one value per result, a list only for several results."""
    if isinstance(result, list):
        return unpack(result[0]) if len(result) == 1 else [unpack(r) for r in result]
    if isinstance(result, LMQLResult):
        values = dict(result.variables)
        return next(iter(values.values())) if len(values) == 1 else values
    return result


def _literal(text: str) -> str:
    """`text` as a Python string literal whose value is exactly `text` (LMQL only escapes
    double quotes, so a backslash or a newline in the text changed or broke its query)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'


def F(  # LMQL's name
    text: str,
    constraints: str | None = None,
    *,
    is_async: bool = False,
    **defaults: Any,
) -> FQuery:
    """A prompt statement as a function: synchronous unless `is_async=True`; its inputs are the
    names it interpolates, bound by keyword or, positionally, in alphabetical order."""
    source = _literal(text) + (f" where {constraints}" if constraints else "")
    return FQuery(compile_query(source), defaults=defaults, is_async=is_async, name="F")


_GENERATE = '"{prompt}[RESPONSE]"'


async def generate(
    prompt: str, max_tokens: int | None = None, model: str | Model | None = None, **kwargs: Any
) -> str | list[str]:
    """Plain generation after `prompt` (LMQL's `lmql.generate`): the text, or a list of texts
    for decoders with several results (`n=2`)."""
    where = f" where len(TOKENS(RESPONSE)) < {int(max_tokens) + 1}" if max_tokens else ""
    query = FQuery(compile_query(_GENERATE + where), name="generate")
    if model is not None:
        kwargs["model"] = model
    return await query.run(prompt=prompt, **kwargs)


def generate_sync(
    prompt: str, max_tokens: int | None = None, model: str | Model | None = None, **kwargs: Any
) -> str | list[str]:
    """`generate`, blocking."""
    return run_blocking(generate(prompt, max_tokens, model, **kwargs))


def main(query: QueryFunction[Any] | BoundQuery[Any], *args: Any, **kwargs: Any) -> QueryResult:
    """Run a query function to completion from synchronous code (LMQL's `lmql.main`)."""
    return run_blocking(query.run(*args, **kwargs))
