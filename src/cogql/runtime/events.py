"""Events a running query reports, so a CLI, UI or notebook can show it as it runs.

The first three are always reported. A listener that wants to look closer (the playground)
asks for details with `with token_details(top=5):` around the start of the query's task:
then each token a hole's stream generates is a `TokenGenerated` (log-prob, top alternatives,
how many tokens the constraints allowed), the beam decoders report their search tree
(`HypothesisGrown`, `SearchStep`), and requests sent ahead that the run never used are reported
as cancelled `ModelCall`s. Details cost work per token, so without a listener asking for them
nothing of that is computed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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
    """One LMTP op: kind GENERATE or SCORE, tokens sent and received, wall time.

    `id` numbers the calls of the process (a `TokenGenerated` names the call it came from);
    `ahead` says it was sent ahead in an earlier call's message (runtime/ahead.py); `status` is
    "done", or "cancelled" for a request sent ahead that the run did not use (reported only with
    details); `prediction` is the Replicate prediction it went in (1-based, of the query's
    `predictions` so far), None elsewhere."""

    kind: str
    prompt_tokens: int
    tokens: int
    seconds: float
    run: int = 0
    id: int = 0
    ahead: bool = False
    status: str = "done"
    prediction: int | None = None
    predictions: int | None = None


@dataclass(frozen=True)
class Alternative:
    """A token the model ranked at a step: its text, log-prob, and whether the constraints
    allowed it (None: not known)."""

    token: int
    text: str
    logprob: float
    allowed: bool | None = None


@dataclass(frozen=True)
class TokenGenerated:
    """A token a hole's stream generated (details only). `start` is where its text begins in
    the hole's text; `allowed` how many tokens the constraints allowed at this step (None: not
    known); `alternatives` the model's most likely tokens there, best first; `call` the id of
    the ModelCall it came in."""

    variable: str
    token: int
    text: str
    logprob: float
    start: int
    alternatives: tuple[Alternative, ...] = ()
    allowed: int | None = None
    call: int = 0
    run: int = 0


@dataclass(frozen=True)
class HypothesisGrown:
    """A hypothesis of a beam decoder (details only): `parent` the one it grew from (None for
    the root), `token` the text it added, `variable` the hole it stands in (or finished),
    `logprob` its score, `complete` whether its program has finished."""

    id: int
    parent: int | None
    variable: str | None
    token: str
    logprob: float
    complete: bool = False
    step: int = 0


@dataclass(frozen=True)
class SearchStep:
    """Which hypotheses a search step kept (open ones and finished ones); `final` for the
    results, best first."""

    step: int
    kept: tuple[int, ...] = ()
    finished: tuple[int, ...] = ()
    final: bool = False


@dataclass(frozen=True)
class QueryFinished:
    """The last item of `cogql.stream`: what the query returned (an LMQLResult, a list of them,
    or its `return` value). Never passed to an `output=` callback."""

    result: Any


QueryEvent = (
    TextAppended | VariableFinished | ModelCall | TokenGenerated | HypothesisGrown | SearchStep
)
OnEvent = Callable[[QueryEvent], None]

# ---- details, for listeners that ask ---------------------------------------------------------

_details: ContextVar[int] = ContextVar("cogql_token_details", default=0)
_call_ids = itertools.count(1)


@contextmanager
def token_details(top: int = 5) -> Iterator[None]:
    """Queries started in this block (tasks created in it inherit it) report details, with the
    `top` most likely alternatives of each token."""
    if top < 1:
        raise ValueError(f"token_details(top=...) takes a positive number, got {top!r}")
    reset = _details.set(top)
    try:
        yield
    finally:
        _details.reset(reset)


def details_wanted() -> int:
    """How many alternatives per token a listener asked for; 0 when none asked."""
    return _details.get()


def next_call_id() -> int:
    return next(_call_ids)
