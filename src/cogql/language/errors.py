"""Errors raised while reading a query: each names the line and column in the query's source."""

from __future__ import annotations


class QuerySyntaxError(SyntaxError):
    """A malformed query. `lineno`/`offset` are 1-based positions in the query source."""

    def __init__(self, message: str, *, source: str = "", lineno: int = 1, col: int = 0) -> None:
        self.message = message
        self.source_text = source
        self.lineno = max(lineno, 1)
        self.offset = col + 1
        super().__init__(self._render())

    def _render(self) -> str:
        # SyntaxError types both as optional; __init__ always sets them
        lineno, offset = self.lineno or 1, self.offset or 1
        lines = self.source_text.splitlines()
        where = f"line {lineno}, column {offset}"
        if 0 < lineno <= len(lines):
            line = lines[lineno - 1]
            return f"{self.message} ({where})\n    {line}\n    {' ' * (offset - 1)}^"
        return f"{self.message} ({where})"

    def __str__(self) -> str:
        return self._render()


class QueryCompileError(QuerySyntaxError):
    """A well-formed query that cogql cannot run as written (e.g. an unsupported operator)."""


class HoleTypeError(QueryCompileError, TypeError):
    """A hole type (`[X: t]`) that is no type cogql knows: a TypeError, as in LMQL."""
