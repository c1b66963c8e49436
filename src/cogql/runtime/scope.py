"""The names a query run sees, split as LMQL 0.7 splits them.

LMQL compiles a query into a module: its prologue (the code before the decoder keyword) runs as
module code, so the names it defines are *globals*, and the prompt section is a function whose
parameters are the query's inputs (its free variables), so those are *locals*. Helper functions
defined in a query see them accordingly, and `globals()` / `locals()` show them so.

A `QueryScope` is the merged view (globals, then inputs) that constraints, decorators and
nested queries evaluate their expressions in, and it keeps the two parts apart for the
program itself.
"""

from __future__ import annotations

import builtins
from typing import Any

from ..language.compiler import CompiledQuery


class QueryScope(dict[str, Any]):
    """Every name visible to the query (a plain dict, for `eval`), with `globals` (the
    program's global namespace, shared by its prologue and the functions it defines) and
    `params` (the inputs the program takes as parameters) kept apart."""

    def __init__(
        self, globals_: dict[str, Any], inputs: dict[str, Any], params: tuple[str, ...]
    ) -> None:
        super().__init__({**globals_, **inputs})
        self.globals = globals_
        self.params = {name: self[name] for name in params if name in self}


def query_globals(captured: dict[str, Any]) -> dict[str, Any]:
    """The global namespace of a query run: builtins, `cogql`, `lmql` (cogql.compat, LMQL's
    whole surface, as LMQL's compiled module imports lmql), and the names captured where the
    query was defined."""
    import cogql
    import cogql.compat

    return {"__builtins__": builtins, "cogql": cogql, "lmql": cogql.compat, **captured}


def module_globals(query: CompiledQuery, captured: dict[str, Any]) -> dict[str, Any]:
    """The query's globals with its prologue run in them. A query function builds them once,
    on its first call, and keeps them: as in LMQL, whose prologue runs once when the query's
    module loads, names the prologue defines live on from call to call."""
    globals_ = query_globals(captured)
    if query.prologue is not None:
        exec(query.prologue, globals_)
    return globals_


def statement_names(
    query_names: dict[str, Any], variables: dict[str, Any], local_names: dict[str, Any]
) -> dict[str, Any]:
    """What an expression of one prompt statement sees (its where clause, a hole's type or
    decorators, the distribution's values): the query's names, then the holes generated so far,
    then the locals of the prompt section at that statement."""
    return {**query_names, **variables, **local_names}


def as_scope(query: CompiledQuery, scope: dict[str, Any]) -> QueryScope:
    """A scope given as a plain dict (a caller that built its own) read as a QueryScope: its
    names are globals, the query's free variables among them also parameters."""
    if isinstance(scope, QueryScope):
        return scope
    return QueryScope(dict(scope), {}, query.free_variables)
