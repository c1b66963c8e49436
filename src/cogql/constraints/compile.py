"""Where-clause → HoleSpec for one variable.

Constraints on the variable being generated become grammar pieces (lark token expressions over
the value's text), token limits and stop phrases. What no grammar expresses (a user function,
arithmetic over lengths) becomes a Python predicate that the client checks token by token
(runtime/token_by_token.py). Values inside a constraint (limits, options, patterns, other
variables) are ordinary Python evaluated in the query's scope at that moment: a constraint that
relates the hole to a variable generated earlier compiles like one with a constant, and one that
names a hole not generated yet is unknown and restricts nothing (LMQL's None).
"""

from __future__ import annotations

import ast
import builtins
import difflib
import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ..language.constraint_names import CONSTRAINT_FUNCTIONS, POSTPROCESSORS, STOP_FUNCTIONS
from ..language.expressions import evaluate
from .holespec import HoleSpec, Stop
from .values import (
    ConstraintError,
    Evaluator,
    HoleText,
    Predicate,
    UnresolvedNameError,
    UnsupportedConstraintError,
    node_error,
    unresolved_message,
    value_builtins,
)

__all__ = ["ConstraintError", "compile_hole", "literal_regex", "unknown_function_error"]

ANY_TEXT = "(?s:.*)"
INT_REGEX = " ?(0|[1-9][0-9]*)"  # LMQL's INT, without its leading-zero quirks
_FLIP = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE, ast.Eq: ast.Eq}
_UNKNOWN = object()


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


def _complement(lark: str) -> str:
    # a bare ~(...) lets llguidance allow every token; intersecting with "any text" fixes it
    return f"({_lark(ANY_TEXT)} & ~({lark}))"


def conjuncts(node: ast.expr | None) -> list[ast.expr]:
    if node is None:
        return []
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [c for v in node.values for c in conjuncts(v)]
    return [node]


def mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None


def unknown_function_error(
    name: str, known: Collection[str], source: str, lineno: int, col: int
) -> ConstraintError:
    """`where FOO(X)` with no FOO anywhere: name the function and suggest a close one."""
    close = difflib.get_close_matches(name, sorted(set(known) | CONSTRAINT_FUNCTIONS), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return UnresolvedNameError(
        f"{unresolved_message([name])} It is an unknown function {name}() in the where "
        "clause: neither a constraint "
        f"(STOPS_AT, INT, REGEX, ...) nor defined where the query runs{hint}",
        source=source,
        lineno=lineno,
        col=col,
    )


# ---- what one expression means for the hole --------------------------------------------------


@dataclass
class _Lang:
    """A regular language over the value's text (a lark token expression)."""

    regex: str
    prefix_true: bool  # its partial value holds on every prefix the grammar lets through
    grows: bool = False  # once it holds, it holds for every extension (so `not` is prefix-closed)


@dataclass
class _Options:
    """`X in [...]` / `X == s`: a finite set of values."""

    values: list[str]
    exact: bool = False  # `==` is False until the value is complete (LMQL), so it blocks stops


@dataclass
class _Tokens:
    """`len(TOKENS(X))` bounds."""

    low: int = 0
    high: int | None = None


@dataclass
class _Opaque:
    """Only Python can tell: evaluated on the text by the client-side generator."""

    node: ast.expr


@dataclass
class _Const:
    """Does not depend on the hole: True, False, or None (names an ungenerated hole)."""

    value: bool | None


_Part = _Lang | _Options | _Tokens | _Opaque | _Const
_TRUE = _Const(True)
_NONE = _Const(None)  # unknown: restricts nothing, and neither does its negation


def _options_lang(options: list[str]) -> _Lang:
    alts = "|".join(literal_regex(o) for o in options) or "(?:)"
    return _Lang(_lark("(" + alts + ")"), prefix_true=True)


def _as_lang(part: _Part) -> _Lang | None:
    if isinstance(part, _Lang):
        return part
    if isinstance(part, _Options):
        lang = _options_lang(part.values)
        lang.prefix_true = not part.exact
        return lang
    return None


def _combine(
    node: ast.expr, parts: Sequence[_Part], joiner: str, holds: Callable[[Any], bool]
) -> _Part:
    """Several non-constant parts under `and` (" & ", all) or `or` (" | ", any): one language
    when every part is one, else opaque."""
    if len(parts) == 1:
        return parts[0]
    langs = [_as_lang(p) for p in parts]
    if any(lang is None for lang in langs):
        return _Opaque(node)
    regex = "(" + joiner.join(lang.regex for lang in langs if lang) + ")"
    return _Lang(regex, prefix_true=holds(lang.prefix_true for lang in langs if lang))


class _HoleCompiler:
    def __init__(self, var: str, scope: dict[str, Any], encode: Callable[[str], list[int]],
                 source: str, unknown: Collection[str]) -> None:  # fmt: skip
        self.var = var
        self.scope = scope
        self.encode = encode
        self.source = source
        self.evaluator = Evaluator(var, scope, unknown, encode, source)
        self.spec = HoleSpec()
        self.regexes: list[str] = []
        self.options: list[str] | None = None
        self.opaque: list[ast.expr] = []
        self._parts: dict[int, _Part] = {}

    def error(
        self, node: ast.AST, message: str, kind: type[ConstraintError] = ConstraintError
    ) -> ConstraintError:
        return node_error(node, message, self.source, kind)

    def value(self, node: ast.expr) -> Any:
        """A Python value that does not depend on the hole (_UNKNOWN if it names a hole that
        is not generated yet)."""
        if self.evaluator.mentions_unknown(node):
            return _UNKNOWN
        env = {**value_builtins(self.encode), **self.scope}
        try:
            return evaluate(node, env, "<where>")
        except NameError as e:
            raise self.error(node, f"in where clause: {e}") from None
        except Exception as e:
            raise self.error(
                node, f"in where clause: `{ast.unparse(node)}` raised {type(e).__name__}: {e}"
            ) from None

    def is_var(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id == self.var

    # -- top level ----------------------------------------------------------------------------
    def add(self, node: ast.expr) -> None:
        """One top-level conjunct that mentions the hole."""
        name = _call_name(node)
        if (name == "INT" or name in POSTPROCESSORS) and isinstance(node, ast.Call):
            self._arg(node, 0)
            self.spec.is_int |= name == "INT"
            self.spec.escaped |= name in ("ESCAPED", "escaped")
            self.spec.erase |= name in ("ERASE", "erase")
        part = self.part(node)
        if isinstance(part, _Const):
            if part.value is False:
                raise self.error(node, f"the constraint `{ast.unparse(node)}` can never hold")
        elif isinstance(part, _Options):
            self.set_options(part.values)
            if not self.options:
                raise self.error(node, f"no option of {self.var} satisfies the constraints")
        elif isinstance(part, _Lang):
            self.regexes.append(part.regex)
        elif isinstance(part, _Tokens):
            self.token_limits(part)
        else:
            self.opaque.append(part.node)

    def set_options(self, options: list[str]) -> None:
        opts = list(dict.fromkeys(options))
        self.options = opts if self.options is None else [o for o in self.options if o in opts]

    def token_limits(self, part: _Tokens) -> None:
        if part.high is not None:
            high = max(part.high, 0)
            cur = self.spec.max_tokens
            self.spec.max_tokens = high if cur is None else min(cur, high)
        self.spec.min_tokens = max(self.spec.min_tokens, part.low)

    def _arg(self, node: ast.Call, i: int) -> ast.expr:
        fn = _call_name(node)
        if len(node.args) <= i or not self.is_var(node.args[0]):
            raise self.error(node, f"{fn} expects the variable as its first argument")
        return node.args[i]

    # -- meaning of one expression -------------------------------------------------------------
    def part(self, node: ast.expr) -> _Part:
        key = id(node)
        if key not in self._parts:
            self._parts[key] = self._part(node)
        return self._parts[key]

    def _part(self, node: ast.expr) -> _Part:
        if not mentions(node, self.var):
            value = self.value(node)
            return _Const(None if value is _UNKNOWN else bool(value))
        if isinstance(node, ast.BoolOp):
            parts = [self.part(v) for v in node.values]
            return self._and(node, parts) if isinstance(node.op, ast.And) else self._or(node, parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return self._not(node, self.part(node.operand))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return self._call(node)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        return _Opaque(node)

    def _and(self, node: ast.expr, parts: list[_Part]) -> _Part:
        if any(isinstance(p, _Const) and p.value is False for p in parts):
            return _Const(False)
        rest = [p for p in parts if not isinstance(p, _Const)]
        if not rest:
            return _NONE if _NONE in parts else _TRUE
        return _combine(node, rest, " & ", all)

    def _or(self, node: ast.expr, parts: list[_Part]) -> _Part:
        if _TRUE in parts:
            return _TRUE
        if _NONE in parts:
            return _NONE  # unknown: restricts nothing
        rest = [p for p in parts if not isinstance(p, _Const)]
        if not rest:
            return _Const(False)
        return _combine(node, rest, " | ", any)

    def _not(self, node: ast.expr, part: _Part) -> _Part:
        if isinstance(part, _Const):
            return part if part.value is None else _Const(not part.value)
        lang = _as_lang(part)
        if lang is None:
            return _Opaque(node)
        return _Lang(_complement(lang.regex), prefix_true=lang.grows)

    def _call(self, node: ast.Call) -> _Part:
        fn = _call_name(node)
        assert fn is not None
        if fn in STOP_FUNCTIONS or fn in POSTPROCESSORS:
            self._arg(node, 0)
            return _TRUE  # a stop phrase or a postprocessor never restricts the value
        if fn == "INT":
            self._arg(node, 0)
            return _Lang(_lark(INT_REGEX), prefix_true=True)
        if fn == "REGEX":
            pattern = self.value(self._arg(node, 1))
            if pattern is _UNKNOWN:
                return _NONE
            if not isinstance(pattern, str):
                raise self.error(node, "REGEX needs a pattern string")
            return _Lang(_lark(pattern), prefix_true=False)
        if fn == "STARTS_WITH":
            prefix = self.value(self._arg(node, 1))
            if prefix is _UNKNOWN:
                return _NONE
            prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
            alts = "|".join(literal_regex(p) for p in prefixes)
            return _Lang(_lark("(" + alts + ")" + ANY_TEXT), prefix_true=True, grows=True)
        if fn not in self.scope and fn not in CONSTRAINT_FUNCTIONS and not hasattr(builtins, fn):
            known = [k for k, v in self.scope.items() if callable(v)]
            raise unknown_function_error(fn, known, self.source, node.lineno, node.col_offset)
        return _Opaque(node)

    # -- comparisons ---------------------------------------------------------------------------
    def _compare(self, node: ast.Compare) -> _Part:
        if len(node.ops) != 1:
            raise self.error(
                node,
                "chained comparisons are not supported in where clauses",
                UnsupportedConstraintError,
            )
        left, op, right = node.left, node.ops[0], node.comparators[0]
        if isinstance(op, (ast.NotEq, ast.Is, ast.IsNot)):
            raise self.error(
                node,
                f"operator {type(op).__name__} is not supported in where clauses; "
                "write not (x == y) or not x in y",
                UnsupportedConstraintError,
            )
        if type(op) in _FLIP and mentions(right, self.var) and not mentions(left, self.var):
            left, right, op = right, left, _FLIP[type(op)]()
        if isinstance(op, (ast.In, ast.NotIn)):
            return self._membership(node, left, op, right)
        length = self._length_of(left)
        if length is not None:
            return self._length(node, length, op, right)
        if self.is_var(left) and isinstance(op, ast.Eq):
            value = self.value(right)
            if value is _UNKNOWN:
                return _NONE
            if not isinstance(value, str):
                raise self.error(node, f"{self.var} == ... needs a string, got {value!r}")
            return _Options([value], exact=True)
        return _Opaque(node)

    def _membership(self, node: ast.expr, left: ast.expr, op: ast.cmpop, right: ast.expr) -> _Part:
        negate = isinstance(op, ast.NotIn)
        if self.is_var(left) and not mentions(right, self.var):
            options = self.value(right)
            if options is _UNKNOWN:
                return _NONE
            if isinstance(options, str) or not all(isinstance(o, str) for o in options):
                raise self.error(node, f"{self.var} in [...] needs a list of strings")
            part = _Options(list(options))
            return self._not(node, part) if negate else part
        if self.is_var(right) and not mentions(left, self.var):
            sub = self.value(left)
            if sub is _UNKNOWN:
                return _NONE
            if not isinstance(sub, str):
                raise self.error(node, f"... in {self.var} needs a string on the left")
            lang = _Lang(_lark(ANY_TEXT + literal_regex(sub) + ANY_TEXT), False, grows=True)
            return self._not(node, lang) if negate else lang
        return _Opaque(node)

    def _length_of(self, node: ast.expr) -> str | None:
        """'chars', 'tokens' or 'words' for len(X), len(TOKENS(X)), len(WORDS(X))."""
        if not (isinstance(node, ast.Call) and _call_name(node) == "len" and len(node.args) == 1):
            return None
        arg = node.args[0]
        if self.is_var(arg):
            return "chars"
        inner = _call_name(arg)
        if (
            inner in ("TOKENS", "WORDS")
            and isinstance(arg, ast.Call)
            and len(arg.args) == 1
            and self.is_var(arg.args[0])
        ):
            return inner.lower()
        return None

    def _length(self, node: ast.expr, kind: str, op: ast.cmpop, right: ast.expr) -> _Part:
        if mentions(right, self.var):
            return _Opaque(node)
        n = self.value(right)
        if n is _UNKNOWN:
            return _NONE
        if not isinstance(n, int) or isinstance(n, bool):
            raise self.error(node, f"a length can only be compared with a number, got {n!r}")
        low, high = _bounds(op, n)
        if low is None and high is None:
            raise self.error(
                node, f"unsupported comparison `{ast.unparse(node)}`", UnsupportedConstraintError
            )
        if kind == "tokens":
            return _Tokens(low or 0, high)
        regex = _chars_regex(low, high) if kind == "chars" else _words_regex(low, high)
        return _Lang(_lark(regex), prefix_true=low is None, grows=high is None)

    # -- stop phrases --------------------------------------------------------------------------
    def stops(self, node: ast.expr, guards: list[ast.expr]) -> None:
        """Collect the stop phrases under `node`; each is active only while its `and`
        siblings hold (§6.5), so it remembers them as its guard."""
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
            for child in node.values:
                siblings = [c for c in node.values if c is not child and not _pure_stop(c)]
                self.stops(child, guards + siblings)
        elif isinstance(node, ast.BoolOp):
            for child in node.values:
                self.stops(child, guards)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            stop = next((n for n in ast.walk(node) if _call_name(n) in STOP_FUNCTIONS), None)
            if stop is not None and mentions(stop, self.var):
                raise self.error(stop, "a stop phrase cannot be negated (under `not`)")
        elif (
            isinstance(node, ast.Call)
            and _call_name(node) in STOP_FUNCTIONS
            and mentions(node, self.var)
        ):
            self._stop(node, guards)

    def _stop(self, node: ast.Call, guards: list[ast.expr]) -> None:
        fn = _call_name(node)
        assert fn is not None
        phrases = self.value(self._arg(node, 1))
        if phrases is _UNKNOWN:
            return
        for p in phrases if isinstance(phrases, (list, tuple)) else [phrases]:
            if not isinstance(p, str) or not p:
                raise self.error(node, f"{fn} needs a non-empty string stop phrase")
            keep = fn.upper() == "STOPS_AT"
            guard = tuple(g for g in guards if mentions(g, self.var))
            form = tuple(g for g in guard if _about_form(g, self.var))
            rest = tuple(g for g in guard if g not in form)
            predicate = functools.partial(Predicate, self.evaluator)
            self.spec.stops.append(
                Stop(p, keep, predicate(guard), predicate(form), predicate(rest))
            )

    def _guard_is_server_side(self, guard: Predicate) -> bool:
        """True when the engine's own rule (stops active from min_tokens on) is exactly this
        guard: every sibling holds on any prefix the grammar allows, except a token minimum
        that equals the hole's."""
        for node in guard.nodes:
            part = self.part(node)
            if isinstance(part, _Const):
                continue
            if isinstance(part, _Tokens):
                if part.low and part.low != self.spec.min_tokens:
                    return False
            elif isinstance(part, _Options):
                if part.exact:
                    return False
            elif not (isinstance(part, _Lang) and part.prefix_true):
                return False
        return True

    # -- result --------------------------------------------------------------------------------
    def finish(self) -> HoleSpec:
        if self.options is not None and self.opaque:
            self.options = [o for o in self.options if self._final_check(o)]
            if not self.options:
                raise self.error(
                    self.opaque[0], f"no option of {self.var} satisfies the constraints"
                )
            self.opaque = []
        if self.options is not None and not self.regexes and "" not in self.options:
            self.spec.token_options = [self.encode(o) for o in self.options]
        else:
            parts = list(self.regexes)
            if self.options is not None:
                parts.append(_options_lang(self.options).regex)
            self.spec.regex = " & ".join(parts) if parts else None
        if self.opaque:
            self.spec.check = Predicate(self.evaluator, tuple(self.opaque))
        guarded = any(not self._guard_is_server_side(s.guard) for s in self.spec.stops if s.guard)
        if guarded or self.spec.check is not None:
            self.spec.client_stops = True
        else:
            self.spec.stops = [Stop(s.phrase, s.keep) for s in self.spec.stops]
        return self.spec

    def _final_check(self, option: str) -> bool:
        hole = HoleText(option, tuple(self.encode(option)), final=True)
        return Predicate(self.evaluator, tuple(self.opaque)).allows(hole)


def _about_form(node: ast.expr, var: str) -> bool:
    """REGEX(X, ...), X == ..., X in [...]: a sibling about what the value reads, not its size."""
    if _call_name(node) == "REGEX":
        return True
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        sides = (node.left, node.comparators[0])
        is_var = any(isinstance(n, ast.Name) and n.id == var for n in sides)
        return is_var and isinstance(node.ops[0], (ast.Eq, ast.In))
    return False


def _pure_stop(node: ast.expr) -> bool:
    return _call_name(node) in STOP_FUNCTIONS


def _bounds(op: ast.cmpop, n: int) -> tuple[int | None, int | None]:
    """(at least, at most) for `len(...) op n`."""
    low = {ast.Gt: n + 1, ast.GtE: n, ast.Eq: n}.get(type(op))
    high = {ast.Lt: n - 1, ast.LtE: n, ast.Eq: n}.get(type(op))
    return low, high


def _chars_regex(low: int | None, high: int | None) -> str:
    lo = max(low or 0, 0)
    if high is None:
        return f"(?s:.{{{lo},}})"
    return f"(?s:.{{{lo},{max(high, 0)}}})" if lo != high else f"(?s:.{{{lo}}})"


def _words_regex(low: int | None, high: int | None) -> str:
    """Texts with between low and high whitespace-separated words."""
    lo = max(low or 0, 0)
    if high is not None and high <= 0:
        return r"\s*"
    if lo == 0:
        at_most = "" if high is None else str(high - 1)
        return rf"\s*((\S+\s+){{0,{at_most}}}\S+)?\s*"
    rest = "" if high is None else str(high - 1)
    return rf"\s*(\S+\s+){{{lo - 1},{rest}}}\S+\s*"


def compile_hole(
    var: str,
    clauses: list[ast.expr | None],
    scope: dict[str, Any],
    encode: Callable[[str], list[int]],
    *,
    source: str = "",
    holes: Collection[str] = (),
) -> HoleSpec:
    """The HoleSpec of `var` under the conjunction of `clauses`. Top-level constraints on
    other variables are skipped (they are applied when those variables are generated); `holes`
    are the query's hole names, so that a name among them with no value yet reads as unknown."""
    unknown = {h for h in holes if h != var and h not in scope}
    hc = _HoleCompiler(var, scope, encode, source, unknown)
    nodes = [c for clause in clauses for c in conjuncts(clause) if mentions(c, var)]
    for node in nodes:
        hc.stops(node, [n for n in nodes if n is not node and not _pure_stop(n)])
    for node in nodes:
        hc.add(node)
    spec = hc.finish()
    spec.constraint = Predicate(hc.evaluator, tuple(nodes)) if nodes else None
    return spec
