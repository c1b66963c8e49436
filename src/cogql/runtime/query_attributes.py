"""The attributes LMQL's query functions (`LMQLQueryFunction`) expose, for code that inspects
queries: LMQL's own test runner and `lmql.algorithms` recognise a query by `lmql_code`,
LangChain-style glue reads `input_keys`/`output_keys`, and `is_query` checks
`__lmql_query_function__`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..language.qstrings import Hole

if TYPE_CHECKING:
    from ..language.compiler import CompiledQuery


@dataclass(frozen=True)
class FunctionContext:
    """LMQL's `FunctionContext`: the signature the query is called with, the names the query
    reads, and the variables it captured where it was defined."""

    argnames: inspect.Signature
    args_of_query: list[str]
    scope: dict[str, Any]


class LMQLQueryAttributes:
    """Mixed into QueryFunction; reads only its `compiled`, `signature`, `scope`, `defaults`."""

    compiled: CompiledQuery
    signature: inspect.Signature | None
    scope: dict[str, Any]
    defaults: dict[str, Any]

    @property
    def lmql_code(self) -> str:
        """The query's source, as written (without the docstring's `lmql` marker)."""
        return self.compiled.source.strip()

    @property
    def output_variables(self) -> list[str]:
        """The hole names, in the order the program text has them."""
        names: list[str] = []
        for statement in self.compiled.statements:
            for segment in statement.segments:
                if isinstance(segment, Hole) and segment.name not in names:
                    names.append(segment.name)
        if self.compiled.distribution is not None:
            var = self.compiled.distribution.variable
            names += [var] if var not in names else []
        return names

    @property
    def args(self) -> list[str]:
        """The names the query reads that it does not define (inputs and captured names)."""
        return list(self.compiled.free_variables)

    @property
    def input_keys(self) -> list[str]:
        return self.args

    @property
    def output_keys(self) -> list[str]:
        return self.output_variables

    @property
    def extra_args(self) -> dict[str, Any]:
        """Runtime options given when the query was made (`@lmql.query(model=...)`)."""
        return self.defaults

    @property
    def model(self) -> Any:
        return self.defaults.get("model")

    def force_model(self, model: Any) -> None:
        """LMQL's `force_model`: run on `model` when the call does not name one."""
        self.defaults["model"] = model

    @property
    def output_writer(self) -> Any:
        return self.defaults.get("output_writer")

    @output_writer.setter
    def output_writer(self, writer: Any) -> None:
        self.defaults["output_writer"] = writer

    @property
    def function_context(self) -> FunctionContext:
        signature = self.signature if self.signature is not None else inspect.Signature()
        return FunctionContext(signature, self.args, self.scope)

    @property
    def __lmql_query_function__(self) -> LMQLQueryAttributes:
        """What `lmql.inspect.is_query` looks for; LMQL's decorator wrapper points it at the
        query function, which here is the object itself."""
        return self

    if TYPE_CHECKING:

        async def run(self, *args: Any, **kwargs: Any) -> Any: ...

    def __acall__(self, *args: Any, **kwargs: Any) -> Any:
        """LMQL's awaitable call, whether the query function is sync or async."""
        return self.run(*args, **kwargs)


def is_query(fct: Any) -> bool:
    """LMQL's `lmql.inspect.is_query`: whether `fct` is a query function."""
    return hasattr(fct, "__lmql_query_function__")


def getsource(fct: Any) -> str:
    """LMQL's `lmql.inspect.getsource`: a query function's LMQL source."""
    if not is_query(fct):
        raise TypeError(f"getsource() expects an LMQL query function, got {fct!r}")
    return str(fct.lmql_code)
