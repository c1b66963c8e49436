"""Value semantics of where-expressions: does a hole's text satisfy a constraint (yet)?

Most constraints compile to a grammar (compile.py) and are never evaluated here. What no grammar
expresses — a user function, arithmetic over lengths, a relation the compiler does not solve —
is evaluated in Python on the hole's text by token-by-token decoding (runtime/token_by_token.py),
and so is the side condition that decides when a conditional stop phrase is active (§6.5).

As in LMQL the result has three values: True, False, or None ("unknown": the expression names a
hole that has not been generated yet, so it cannot restrict this one). There are two modes: a
*partial* text may still grow, so `X in [...]` holds while X is a prefix of an option (LMQL's
reading, which keeps stops inside an `in` constraint working); a *final* text must be exactly
an option.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from ..language.constraint_names import POSTPROCESSORS, STOP_FUNCTIONS
from ..language.errors import QueryCompileError
from ..language.expressions import evaluate


class ConstraintError(QueryCompileError):
    """A constraint that cogql cannot apply to the hole (wrong operands, unsupported form, a
    user function that raised), with the position of the offending expression."""


class UnresolvedNameError(ConstraintError, TypeError):
    """A name in the where clause that nothing defines: a TypeError, as LMQL raises for it."""


class UnsupportedConstraintError(ConstraintError, AssertionError):
    """A where-clause form cogql does not run (a chained comparison, `!=`, `is`): LMQL's
    compiler fails an assertion on these."""


def unresolved_message(names: list[str]) -> str:
    """LMQL's text for names a query reads that no input, hole or definition provides."""
    if len(names) == 1:
        return f"Failed to resolve variable {names[0]!r} in LMQL query."
    return "Failed to resolve variables in LMQL query: " + ", ".join(repr(n) for n in sorted(names))


def node_error(
    node: ast.AST, message: str, source: str, kind: type[ConstraintError] = ConstraintError
) -> ConstraintError:
    return kind(
        message,
        source=source,
        lineno=getattr(node, "lineno", 1),
        col=getattr(node, "col_offset", 0),
    )


def words(text: str) -> list[str]:
    """LMQL's WORDS: the whitespace-separated words."""
    return text.split()


def sentences(text: str) -> list[str]:
    """LMQL's SENTENCES: pieces ending at a period."""
    return [s for s in re.split(r"(?<=\.)", text) if s.strip()]


def is_int_text(text: Any) -> bool:
    """LMQL's INT: after one optional leading space, only digits (and at least one)."""
    text = str(text)
    digits = text[1:] if text.startswith(" ") else text
    return digits.isdigit()


def value_builtins(encode: Callable[[str], list[int]]) -> dict[str, Any]:
    """The constraint functions as plain Python, for expressions evaluated on known values
    (e.g. the right side of `len(TOKENS(X)) < len(TOKENS(Y))` once Y is generated)."""
    stop = lambda value, *_: True  # noqa: E731 - a stop phrase never restricts a value
    return {
        "TOKENS": lambda value: encode(str(value)),
        "WORDS": lambda value: words(str(value)),
        "SENTENCES": lambda value: sentences(str(value)),
        "INT": is_int_text,
        "REGEX": lambda value, pattern: re.fullmatch(pattern, value) is not None,
        "STARTS_WITH": lambda value, p: value.startswith(p if isinstance(p, str) else tuple(p)),
        **{name: stop for name in STOP_FUNCTIONS | POSTPROCESSORS},
    }


@dataclass(frozen=True)
class HoleText:
    """The hole's text and the tokens generated for it; `final` when the hole ends here."""

    text: str
    tokens: tuple[int, ...] = ()
    final: bool = False


class Evaluator:
    """Evaluates where-expressions for one hole `var`, in the query's scope at that moment."""

    def __init__(
        self,
        var: str,
        scope: dict[str, Any],
        unknown: Collection[str],
        encode: Callable[[str], list[int]],
        source: str = "",
    ) -> None:
        self.var = var
        self.scope = scope
        self.unknown = frozenset(unknown)
        self.encode = encode
        self.source = source
        self._builtins = value_builtins(encode)

    def mentions_unknown(self, node: ast.AST) -> bool:
        return any(isinstance(n, ast.Name) and n.id in self.unknown for n in ast.walk(node))

    def holds(self, node: ast.expr, hole: HoleText) -> bool | None:
        """True, False or None (unknown) for `node` with the hole's current text."""
        if isinstance(node, ast.BoolOp):
            values = [self.holds(v, hole) for v in node.values]
            return _and(values) if isinstance(node.op, ast.And) else _or(values)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.holds(node.operand, hole)
            return None if inner is None else not inner
        if self.mentions_unknown(node):
            return None
        membership = self._membership(node, hole)
        if membership is not None:
            return membership
        return self._python(node, hole)

    def _membership(self, node: ast.expr, hole: HoleText) -> bool | None:
        """`X in options` / `X not in options` with LMQL's prefix reading on partial text."""
        if not (isinstance(node, ast.Compare) and len(node.ops) == 1):
            return None
        op, right = node.ops[0], node.comparators[0]
        if not (isinstance(node.left, ast.Name) and node.left.id == self.var):
            return None
        if not isinstance(op, (ast.In, ast.NotIn)):
            return None
        options = self._python_value(right, hole)
        if isinstance(options, str):
            return None
        found = any(
            (str(o) == hole.text) if hole.final else str(o).startswith(hole.text) for o in options
        )
        return found if isinstance(op, ast.In) else not found

    def _python(self, node: ast.expr, hole: HoleText) -> bool:
        return bool(self._python_value(node, hole))

    def _python_value(self, node: ast.expr, hole: HoleText) -> Any:
        env = {**self.scope, **self._builtins, self.var: hole.text}
        env["TOKENS"] = lambda v: list(hole.tokens) if v == hole.text else self.encode(v)
        if not hole.final:
            env["INT"] = lambda v: True if not v.strip() else is_int_text(v)
            env["STARTS_WITH"] = lambda v, p: any(
                v.startswith(q) or q.startswith(v) for q in ([p] if isinstance(p, str) else p)
            )
        try:
            return evaluate(node, env, "<where>")
        except Exception as e:
            raise node_error(
                node,
                f"evaluating `{ast.unparse(node)}` with {self.var} = {hole.text!r} raised "
                f"{type(e).__name__}: {e}",
                self.source,
            ) from None


def _and(values: list[bool | None]) -> bool | None:
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def _or(values: list[bool | None]) -> bool | None:
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


@dataclass(frozen=True)
class Predicate:
    """Some where-expressions about one hole, evaluated together (their conjunction)."""

    evaluator: Evaluator
    nodes: tuple[ast.expr, ...]

    def __call__(self, hole: HoleText) -> bool | None:
        return _and([self.evaluator.holds(n, hole) for n in self.nodes])

    def allows(self, hole: HoleText) -> bool:
        """Unknown counts as allowed: a constraint on an ungenerated hole restricts nothing."""
        return self(hole) is not False

    def describe(self) -> str:
        return " and ".join(ast.unparse(n) for n in self.nodes)

    @property
    def position(self) -> tuple[int, int]:
        first = self.nodes[0]
        return getattr(first, "lineno", 1), getattr(first, "col_offset", 0)
