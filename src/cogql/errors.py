"""The root of cogql's exceptions and the families a caller catches.

Every exception cogql raises on purpose derives from `CogqlError` and from exactly one family,
which says whose move it is: fix the query (`QueryError`), look at what the model did
(`RunError`), fix the model reference or its files (`ModelError`), try again later or fix the
connection (`TransportError`, whose `retryable` says which), or fix a deployment
(`DeployError`). Concrete classes keep the builtin or LMQL-compatible bases they had (a bad
hole type is still a TypeError, a syntax error a SyntaxError), so existing `except` clauses
keep working.

This module is the bottom layer: it imports nothing of cogql.
"""

from __future__ import annotations

from typing import Any


class CogqlError(Exception):
    """Anything cogql raises on purpose; a bug surfaces as something else."""


class QueryError(CogqlError):
    """The query, or the call that runs it, cannot run as written: syntax and compile errors
    (with `lineno` and `offset` into the query's source), inputs, decoder arguments, query
    files. Nothing was asked of the model."""


class RunError(CogqlError):
    """A query that compiled failed while it ran, on what the model produced: no value
    satisfies a constraint, no hypothesis reached the end, a replay took another path."""


class ModelError(CogqlError):
    """The model cannot be used as given: not found, failed to load or convert, an option or
    chat template it cannot take."""


class TransportError(CogqlError):
    """Reaching the model failed: the connection, the server's answer, Replicate's API.

    `retryable` is True where the same request may succeed later unchanged (no answer, a
    dropped connection, HTTP 408, 429 or 5xx) and False where it needs a fix first (a bad
    request, a wrong token, a malformed endpoint)."""

    retryable: bool = False

    def __init__(self, *args: Any, retryable: bool | None = None) -> None:
        super().__init__(*args)
        if retryable is not None:
            self.retryable = retryable


class DeployError(CogqlError):
    """Hosting a model failed: `cogql serve-model`'s options, config.toml, building or pushing
    a Cog project, or the Cog servers and API emulator that run one locally."""


def family(error: BaseException) -> str:
    """Which part failed, as a user acts on it: "query" (fix the query or its call), "run"
    (what the model produced), "model" (the model or reaching it), else "other"."""
    if isinstance(error, QueryError):
        return "query"
    if isinstance(error, RunError):
        return "run"
    if isinstance(error, ModelError | TransportError):
        return "model"
    return "other"


def retryable_status(status: int | None) -> bool:
    """Whether an HTTP answer (None: none came) is worth repeating unchanged later."""
    return status is None or status in (408, 429) or status >= 500


def point_at(message: str, source: str, lineno: int, offset: int) -> str:
    """`message (line L, column C)`, then the source line and a caret under column C (1-based
    both), for errors that point into a query."""
    where = f"line {lineno}, column {offset}"
    lines = source.splitlines()
    if 0 < lineno <= len(lines):
        return f"{message} ({where})\n    {lines[lineno - 1]}\n    {' ' * (offset - 1)}^"
    return f"{message} ({where})"
