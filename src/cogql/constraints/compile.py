"""Where-clause → HoleSpec for one variable.

Constraints on the variable being generated become grammar pieces (lark token expressions
over the value's text), token limits and stop phrases. Values in the constraint (limits,
option lists, patterns) are ordinary Python evaluated in the query's scope at that moment.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from ..language.errors import QueryCompileError
from .holespec import HoleSpec, Stop

ANY_TEXT = "(?s:.*)"


class ConstraintError(QueryCompileError):
    """A constraint that cogql cannot apply to the hole (wrong operands, unsupported form)."""


def literal_regex(text: str) -> str:
    """Regex matching `text` exactly, safe inside a lark /.../ literal."""
    out = []
    for ch in text:
        if (ch.isalnum() and ch.isascii()) or ch in " _":
            out.append(ch)
        elif ch.isascii() and ch.isprintable():
            out.append("\\" + ch)
        else:
            out.append(f"\\x{{{ord(ch):x}}}")
    return "".join(out)


def _lark(regex: str) -> str:
    return "/" + regex.replace("/", "\\/") + "/"


def conjuncts(node: ast.expr | None) -> list[ast.expr]:
    if node is None:
        return []
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [c for v in node.values for c in conjuncts(v)]
    return [node]


def mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


class _HoleCompiler:
    def __init__(self, var: str, scope: dict[str, Any], encode: Callable[[str], list[int]],
                 source: str) -> None:  # fmt: skip
        self.var = var
        self.scope = scope
        self.encode = encode
        self.source = source
        self.spec = HoleSpec()
        self.regexes: list[str] = []
        self.options: list[str] | None = None

    def error(self, node: ast.AST, message: str) -> ConstraintError:
        return ConstraintError(
            message,
            source=self.source,
            lineno=getattr(node, "lineno", 1),
            col=getattr(node, "col_offset", 0),
        )

    def value(self, node: ast.expr) -> Any:
        try:
            return eval(compile(ast.Expression(node), "<where>", "eval"), {}, self.scope)
        except NameError as e:
            raise self.error(node, f"in where clause: {e}") from None

    def is_var(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id == self.var

    def add(self, node: ast.expr) -> None:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            self.call(node)
        elif isinstance(node, ast.Compare):
            self.compare(node)
        else:
            self.regexes.append(self.language(node))

    # -- calls ----------------------------------------------------------------------------
    def call(self, node: ast.Call) -> None:
        fn = node.func.id  # type: ignore[union-attr]
        if fn.upper() in ("STOPS_AT", "STOPS_BEFORE"):
            phrases = self.value(self._arg(node, 1))
            for p in phrases if isinstance(phrases, (list, tuple)) else [phrases]:
                if not isinstance(p, str) or not p:
                    raise self.error(node, f"{fn} needs a non-empty string stop phrase")
                self.spec.stops.append(Stop(p, keep=fn.upper() == "STOPS_AT"))
        elif fn == "INT":
            self._arg(node, 0)
            self.spec.is_int = True
            self.regexes.append(_lark(" ?[0-9]+"))
        else:
            self.regexes.append(self.language(node))

    def _arg(self, node: ast.Call, i: int) -> ast.expr:
        fn = node.func.id  # type: ignore[union-attr]
        if len(node.args) <= i or not self.is_var(node.args[0]):
            raise self.error(node, f"{fn} expects the variable as its first argument")
        return node.args[i]

    # -- comparisons ----------------------------------------------------------------------
    def compare(self, node: ast.Compare) -> None:
        if len(node.ops) != 1:
            raise self.error(node, "chained comparisons are not supported in where clauses")
        left, op, right = node.left, node.ops[0], node.comparators[0]
        if isinstance(op, (ast.NotEq, ast.NotIn, ast.Is, ast.IsNot)):
            raise self.error(
                node,
                f"operator {type(op).__name__} is not supported in where clauses; "
                "write not (x == y) or not x in y",
            )
        if self._token_length(left):
            self.token_limit(op, int(self.value(right)), node)
        elif self.is_var(left) and isinstance(op, ast.In):
            self.set_options(self.value(right), node)
        elif self.is_var(left) and isinstance(op, ast.Eq):
            self.set_options([self.value(right)], node)
        else:
            self.regexes.append(self.language(node))

    def _token_length(self, node: ast.expr) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "len"
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Call)
            and isinstance(node.args[0].func, ast.Name)
            and node.args[0].func.id == "TOKENS"
            and len(node.args[0].args) == 1
            and self.is_var(node.args[0].args[0])
        )

    def token_limit(self, op: ast.cmpop, n: int, node: ast.AST) -> None:
        upper = {ast.Lt: n - 1, ast.LtE: n, ast.Eq: n}.get(type(op))
        lower = {ast.Gt: n + 1, ast.GtE: n, ast.Eq: n}.get(type(op))
        if upper is None and lower is None:
            raise self.error(node, "unsupported comparison on len(TOKENS(...))")
        if upper is not None:
            upper = max(upper, 0)
            cur = self.spec.max_tokens
            self.spec.max_tokens = upper if cur is None else min(cur, upper)
        if lower is not None:
            self.spec.min_tokens = max(self.spec.min_tokens, lower)

    def set_options(self, options: Any, node: ast.AST) -> None:
        if isinstance(options, str) or not all(isinstance(o, str) for o in options):
            raise self.error(node, f"{self.var} in [...] needs a list of strings")
        opts = list(dict.fromkeys(options))
        self.options = opts if self.options is None else [o for o in self.options if o in opts]

    # -- regular languages (grammar pieces) ------------------------------------------------
    def language(self, node: ast.expr) -> str:
        """A lark token expression for the set of values satisfying `node`."""
        if isinstance(node, ast.BoolOp):
            joiner = " & " if isinstance(node.op, ast.And) else " | "
            return "(" + joiner.join(self.language(v) for v in node.values) + ")"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return "~(" + self.language(node.operand) + ")"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return self._call_language(node)
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            return self._compare_language(node)
        raise self.error(node, f"cogql cannot compile the constraint `{ast.unparse(node)}`")

    def _call_language(self, node: ast.Call) -> str:
        fn = node.func.id  # type: ignore[union-attr]
        if fn == "REGEX":
            pattern = self.value(self._arg(node, 1))
            return _lark(pattern)
        if fn == "STARTS_WITH":
            prefix = self.value(self._arg(node, 1))
            prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
            return _lark("(" + "|".join(literal_regex(p) for p in prefixes) + ")" + ANY_TEXT)
        if fn == "INT":
            self._arg(node, 0)
            return _lark(" ?[0-9]+")
        raise self.error(node, f"unknown constraint function {fn}() on {self.var}")

    def _compare_language(self, node: ast.Compare) -> str:
        left, op, right = node.left, node.ops[0], node.comparators[0]
        if self.is_var(left) and isinstance(op, (ast.In, ast.Eq)):
            opts = self.value(right)
            opts = [opts] if isinstance(op, ast.Eq) else list(opts)
            return _lark("(" + "|".join(literal_regex(o) for o in opts) + ")")
        if self.is_var(right) and isinstance(op, ast.In):
            sub = literal_regex(self.value(left))
            return _lark(ANY_TEXT + sub + ANY_TEXT)
        if _is_len_of(left, self.var):
            n = int(self.value(right))
            bound = {ast.Lt: f"{{0,{max(n - 1, 0)}}}", ast.LtE: f"{{0,{n}}}", ast.Eq: f"{{{n}}}",
                     ast.Gt: f"{{{n + 1},}}", ast.GtE: f"{{{n},}}"}.get(type(op))  # fmt: skip
            if bound is not None:
                return _lark(f"(?s:.{bound})")
        raise self.error(node, f"cogql cannot compile the constraint `{ast.unparse(node)}`")

    def finish(self) -> HoleSpec:
        if self.options is not None and not self.regexes and "" not in self.options:
            self.spec.token_options = [self.encode(o) for o in self.options]
        else:
            parts = list(self.regexes)
            if self.options is not None:
                alts = "|".join(literal_regex(o) for o in self.options) or "(?:)"
                parts.append(_lark("(" + alts + ")"))
            self.spec.regex = " & ".join(parts) if parts else None
        return self.spec


def _is_len_of(node: ast.expr, var: str) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "len"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Name)
        and node.args[0].id == var
    )


def compile_hole(
    var: str,
    clauses: list[ast.expr | None],
    scope: dict[str, Any],
    encode: Callable[[str], list[int]],
    *,
    source: str = "",
) -> HoleSpec:
    """The HoleSpec of `var` under the conjunction of `clauses` (constraints on other
    variables are skipped: they are applied when those variables are generated)."""
    hc = _HoleCompiler(var, scope, encode, source)
    for node in (c for clause in clauses for c in conjuncts(clause)):
        if mentions(node, var):
            hc.add(node)
    return hc.finish()
