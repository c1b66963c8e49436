"""Where a query reads a name that nothing provides, for errors that point there.

A name the query reads but does not define is an input; when no input gives it, the error is
clearer at the place that reads it: a hole type (`[X: floaty]`, most likely a misspelt type)
or a prompt string's `{expr}`.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from ..errors import QueryError
from ..language.compiler import CompiledQuery, InterpolationAt, hole_position, invalid_hole_type
from ..language.errors import HoleTypeError, QueryCompileError

KNOWN_HOLE_TYPES = "int, str, a regex string or a name holding one, a query function"


class InputError(QueryError, TypeError):
    """A query input that is missing or cannot be bound."""


class MissingInputError(QueryCompileError, InputError):
    """A missing input that a prompt string's `{expr}` reads, pointing there."""


class UnknownHoleTypeError(HoleTypeError, InputError):
    """A hole type naming nothing: an unknown type, or an input not given (LMQL's error)."""


def unknown_hole_type(query: CompiledQuery, names: list[str]) -> UnknownHoleTypeError | None:
    """The error for the first hole whose type is one of the unprovided `names`."""
    for stmt in query.statements:
        for hole in stmt.holes:
            name = (hole.type_expr or "").strip()
            if name not in names:
                continue
            lineno, col = hole_position(query.source, stmt, hole.name)
            return UnknownHoleTypeError(
                f"unknown type {name!r} for hole {hole.name} (known: {KNOWN_HOLE_TYPES}); "
                f"if {name} is meant to be an input, pass it",
                source=query.source,
                lineno=lineno,
                col=col,
            )
    return None


def input_hole_type(query: CompiledQuery, scope: Mapping[str, Any]) -> HoleTypeError | None:
    """The error for the first hole whose type names an input (or a name the query captured)
    that holds no hole type, as `t=12` in `[X: t]`: found when the query is called, before
    any model call, rather than when the hole is reached."""
    for stmt in query.statements:
        for hole in stmt.holes:
            name = (hole.type_expr or "").strip()
            if name not in query.free_variables or name not in scope:
                continue
            if _is_hole_type(scope[name]):
                continue
            lineno, col = hole_position(query.source, stmt, hole.name)
            return HoleTypeError(
                invalid_hole_type(hole, str(scope[name])),
                source=query.source,
                lineno=lineno,
                col=col,
            )
    return None


def _is_hole_type(value: Any) -> bool:
    """What the interpreter accepts as a hole's type: int, str, a regex string, a query."""
    from .query import BoundQuery, QueryFunction

    return value is int or value is str or isinstance(value, str | QueryFunction | BoundQuery)


def interpolation_reading(
    query: CompiledQuery, names: list[str], message: str
) -> MissingInputError | None:
    """`message` (that the names are missing) at the first `{expr}` that reads one of them."""
    for stmt in query.statements:
        for at in stmt.interpolations:
            read = sorted(set(names) & _names_read(at))
            if read:
                return MissingInputError(
                    f"{message} {{{at.expr}}} reads {read[0]}: pass it as an input, or define "
                    "it where the query is",
                    source=query.source,
                    lineno=at.lineno,
                    col=at.col,
                )
    return None


def _names_read(at: InterpolationAt) -> set[str]:
    try:
        tree = ast.parse("f" + repr("{" + at.expr + "}"), mode="eval")
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
