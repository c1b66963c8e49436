"""`context` in a query's code: the running query's view of its own prompt (LMQL's LMQLContext).

LMQL's query code reads `context.prompt` (the prompt so far), calls `context.score(values)` to
score continuations of it with the query's model, and `context.get_var(name)` /
`context.get_all_vars()` for the variables; `context.num_calls` counts model calls. Its methods
are coroutines; a call in the prompt section gives their value with or without `await`, as in
LMQL, where every call there is awaited when it returns a coroutine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .scoring import ScoringResult, score, score_on

if TYPE_CHECKING:
    from .interpreter import QueryRun
    from .model import Model


class PromptContext:
    """The state of one run of a query, read while it runs."""

    def __init__(self, run: QueryRun) -> None:
        self._run = run

    @property
    def prompt(self) -> str:
        """The prompt so far: program text and generated values (no BOS)."""
        return self._run.state.text

    @property
    def variables(self) -> dict[str, Any]:
        """The values of the holes filled so far."""
        return dict(self._run.variables)

    @property
    def num_calls(self) -> int:
        """The model calls this run has made so far."""
        return self._run.state.calls

    async def get_var(self, name: str) -> Any:
        """The value of hole `name` (None when it has not been filled)."""
        return self._run.variables.get(name)

    async def get_all_vars(self) -> dict[str, Any]:
        return dict(self._run.variables)

    async def score(
        self, values: str | list[str], model: Model | str | None = None
    ) -> ScoringResult:
        """Score `values` as continuations of the prompt so far: with the query's model, or
        with `model` when given (LMQL's `context.score(values, model=...)`)."""
        if model is not None:
            return await score(self.prompt, values, model)
        return await score_on(self._run.conn, self.prompt, values, "query model")

    def __repr__(self) -> str:
        return f"<cogql context: prompt {self.prompt!r}, variables {self.variables!r}>"
