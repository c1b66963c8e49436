"""Errors raised while evaluating a prompt string's `{expr}`, reported where it is written.

The compiler gives every node of an interpolation its position in the query (compiler.py,
`InterpolationAt`); the instruction that raised is found in the traceback's frame of the query
function, and its position names the interpolation.
"""

from __future__ import annotations

from types import CodeType

from ..language.compiler import CompiledQuery, InterpolationAt
from ..language.errors import QueryCompileError


class InterpolationError(QueryCompileError):
    """A `{expr}` in a prompt string raised; the original exception is its `__cause__`."""


def interpolation_error(
    query: CompiledQuery, code: CodeType, error: Exception
) -> InterpolationError | None:
    """The error to raise instead of `error` when an interpolation of `query` (whose query
    function runs `code`) raised it; None when it came from elsewhere."""
    position = _raising_position(code, error)
    if position is None:
        return None
    found = [
        at
        for stmt in query.statements
        for at in stmt.interpolations
        if (at.lineno, at.col) == position
    ]
    if not found:
        return None
    return InterpolationError(
        f"evaluating {_shown(found)} raised {type(error).__name__}: {error}",
        source=query.source,
        lineno=found[0].lineno,
        col=found[0].col,
    )


def _raising_position(code: CodeType, error: Exception) -> tuple[int, int] | None:
    """(line, column) of the instruction of `code` that the error passed through last."""
    lasti = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            lasti = tb.tb_lasti
        tb = tb.tb_next
    if lasti is None:
        return None
    positions = list(code.co_positions())
    index = lasti // 2  # one entry per 2-byte code unit
    if not 0 <= index < len(positions):
        return None
    lineno, _, col, _ = positions[index]
    return None if lineno is None or col is None else (lineno, col)


def _shown(found: list[InterpolationAt]) -> str:
    """`{expr}`, or all of them where several (written with escapes) share a position."""
    return " or ".join(f"{{{at.expr}}}" for at in found)
