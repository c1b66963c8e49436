"""Events a running query reports, so a CLI, UI or notebook can show it as it runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TextAppended:
    """Text added to the prompt: program text (variable None) or generated text of a hole."""

    text: str
    variable: str | None = None
    run: int = 0


@dataclass(frozen=True)
class VariableFinished:
    name: str
    value: Any
    run: int = 0


@dataclass(frozen=True)
class ModelCall:
    """One LMTP op: kind GENERATE or SCORE, tokens sent and received, wall time."""

    kind: str
    prompt_tokens: int
    tokens: int
    seconds: float
    run: int = 0


@dataclass(frozen=True)
class QueryFinished:
    """The last item of `cogql.stream`: what the query returned (an LMQLResult, a list of them,
    or its `return` value). Never passed to an `output=` callback."""

    result: Any


QueryEvent = TextAppended | VariableFinished | ModelCall
OnEvent = Callable[[QueryEvent], None]
