"""How a hole's tokens are decided: the one interface the interpreter fills holes through.

Implementations: one GENERATE carrying the hole's whole grammar, stops and limit
(`streamed.SingleGenerate`), the same stream watched by the client for stops that are
conditional (`streamed.WatchedStream`), token-by-token decoding for constraints only Python can
check (`token_by_token.TokenByToken`), and the beam decoders' replay of decided holes
(`hypotheses.Replay`). `streamed.Generation` picks among the first three per hole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..constraints.holespec import HoleSpec

if TYPE_CHECKING:
    from ..language.compiler import PromptStatement
    from .ahead import Plan
    from .interpreter import QueryRun


@dataclass(frozen=True)
class HoleRequest:
    """A hole to decide: its name and spec, the tokens left within max_len, and what follows
    it in its statement (which a strategy may send ahead, runtime/ahead.py)."""

    name: str
    spec: HoleSpec
    budget: int
    plan: tuple[PromptStatement, Plan, dict[str, Any]] | None = None


class HoleStrategy(Protocol):
    async def generate(self, run: QueryRun, hole: HoleRequest) -> tuple[list[int], str]:
        """The hole's tokens and finish reason ("stop" or "length"); a stop phrase the client
        cut the text at is left in `hole.spec.cut`."""
        ...

    def settle(self, run: QueryRun, name: str, prompt_text: str) -> None:
        """The hole's prompt text is known: report what of it was not reported yet."""
        ...


def report_rest(run: QueryRun, name: str, prompt_text: str) -> None:
    """Report the hole's text beyond what its stream already reported."""
    if prompt_text.startswith(run.shown):
        run.report(name, prompt_text[len(run.shown) :])
