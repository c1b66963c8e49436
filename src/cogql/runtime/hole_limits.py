"""Holes with no token limit: only a stop phrase, EOS or max_len ends them, so on a model that
never writes the stop they run for minutes. The interpreter warns about one as it reaches it;
`unbounded_holes` finds them without running the query (the README's examples are held to it
by a test), from the same HoleSpec the run would compile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..constraints.compile import compile_hole
from ..constraints.holespec import HoleSpec
from ..language.compiler import CompiledQuery, PromptStatement, hole_position
from ..language.qstrings import Hole


@dataclass(frozen=True)
class UnboundedHole:
    name: str
    lineno: int
    col: int  # 0-based, as the compiler counts

    @classmethod
    def at(cls, query: CompiledQuery, stmt: PromptStatement, name: str) -> UnboundedHole:
        lineno, col = hole_position(query.source, stmt, name)
        return cls(name, lineno, col)

    def warning(self, max_len: int) -> str:
        return (
            f"hole {self.name} (line {self.lineno}, column {self.col + 1}) has no token limit: "
            f"only a stop, EOS or max_len={max_len} ends it; add len(TOKENS({self.name})) < N "
            "to its where clause"
        )


def unbounded_holes(
    query: CompiledQuery, encode: Callable[[str], list[int]]
) -> list[UnboundedHole]:
    """The holes of `query` that the run would warn about, found statically: each hole's
    constraints compiled as the run compiles them, with no input or earlier value known (a
    limit that depends on them counts as none). A hole typed with a name (a nested query, or
    a type bound at run time) is left out: what ends it is decided when it runs; so is the
    `distribution` variable, which is scored, not generated."""
    scored = query.distribution.variable if query.distribution is not None else None
    found = []
    for stmt in query.statements:
        for hole in stmt.holes:
            if hole.name == scored or not _plainly_typed(hole):
                continue
            spec = compile_hole(
                hole.name,
                [stmt.where, query.where],
                {},
                encode,
                source=query.source,
                holes=query.hole_names,
            )
            if is_unbounded(spec):
                found.append(UnboundedHole.at(query, stmt, hole.name))
    return found


def is_unbounded(spec: HoleSpec) -> bool:
    """No token limit and no choice from a list: only a stop, EOS or max_len ends the hole."""
    return spec.max_tokens is None and spec.token_options is None


def _plainly_typed(hole: Hole) -> bool:
    kind = (hole.type_expr or "str").strip()
    return kind in ("str", "int") or kind.startswith(("r'", 'r"', "'", '"'))
