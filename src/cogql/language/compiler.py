"""Compile LMQL source into an async Python function plus the query's static clauses.

The prompt section becomes the body of `async def __cogql_query__(__cogql__, <inputs>)`: every
prompt string turns into `await __cogql__.prompt(i, [interpolated values], locals())`, followed
by one assignment per hole, so Python control flow (loops, ifs, returns) runs as written. The
runtime supplies `__cogql__`; this module knows nothing of models.

Scoping is LMQL's: the query's inputs (its free variables, sorted) are the function's
parameters, so they are locals; the prologue (the code before the decoder keyword) is module
code run in the query's globals, so the names it defines are globals. `context` in the prompt
section is the runtime's view of the prompt (`__cogql__.context`).
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import difflib
import hashlib
import keyword
import linecache
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import CodeType

from .clauses import DECODER_NAMES, Clauses, Span, split_clauses
from .constraint_names import CONSTRAINT_FUNCTIONS
from .errors import HoleTypeError, QueryCompileError, QuerySyntaxError
from .qstrings import Hole, Interpolation, QStringError, Segment, parse_qstring

QUERY_FUNCTION = "__cogql_query__"
RUNTIME_NAME = "__cogql__"
_RESERVED = frozenset({"lmql", "cogql", "context", RUNTIME_NAME}) | CONSTRAINT_FUNCTIONS


@dataclass
class PromptStatement:
    """One prompt string of the program, with its inline clauses."""

    segments: list[Segment]
    lineno: int
    col: int
    where: ast.expr | None = None
    distribution: DistributionClause | None = None
    interpolations: list[InterpolationAt] = field(default_factory=list)

    @property
    def holes(self) -> list[Hole]:
        return [s for s in self.segments if isinstance(s, Hole)]


@dataclass(frozen=True)
class InterpolationAt:
    """Where a `{expr}` of a prompt string is written: the compiled code evaluating it carries
    this position, so that an error it raises can be reported there."""

    expr: str
    lineno: int
    col: int


@dataclass
class DistributionClause:
    variable: str
    values: ast.expr
    lineno: int = 1
    col: int = 0


@dataclass
class DecoderClause:
    name: str
    args: dict[str, ast.expr] = field(default_factory=dict)
    lineno: int = 1
    col: int = 0
    arg_positions: dict[str, tuple[int, int]] = field(default_factory=dict)  # (line, col)


@dataclass
class CompiledQuery:
    source: str
    code: CodeType
    prologue: CodeType | None
    statements: list[PromptStatement]
    decoder: DecoderClause | None
    model: ast.expr | None
    where: ast.expr | None
    distribution: DistributionClause | None
    hole_names: frozenset[str]
    free_variables: tuple[str, ...]

    @property
    def where_clauses(self) -> list[ast.expr | None]:
        """The query's where clause, then each prompt statement's inline one."""
        return [self.where, *(s.where for s in self.statements)]


class _Region:
    """A slice of the source as parseable Python, keeping the user's line numbers."""

    def __init__(self, source: str, span: Span, *, dedent: bool) -> None:
        self.first_line = source.count("\n", 0, span.start) + 1
        line_start = source.rfind("\n", 0, span.start) + 1
        lines = (" " * (span.start - line_start) + source[span.start : span.end]).split("\n")
        self.shifts = [0] * len(lines)
        if dedent:
            at_line_start = not source[line_start : span.start].strip()
            lines = self._dedent(lines) if not at_line_start else self._dedent_all(lines)
        self.text = "\n" * (self.first_line - 1) + "\n".join(lines)

    def _dedent_all(self, lines: list[str]) -> list[str]:
        """Remove the common indentation of every line (the region starts its own line)."""
        new = textwrap.dedent("\n".join(lines)).split("\n")
        self.shifts = [len(old) - len(n) for old, n in zip(lines, new, strict=True)]
        return new

    def _dedent(self, lines: list[str]) -> list[str]:
        """The region starts mid-line (after the decoder): its first line on its own."""
        stripped = lines[0].lstrip()
        self.shifts[0] = len(lines[0]) - len(stripped)
        rest = textwrap.dedent("\n".join(lines[1:])).split("\n") if len(lines) > 1 else []
        for k, (old, new) in enumerate(zip(lines[1:], rest, strict=True), start=1):
            self.shifts[k] = len(old) - len(new)
        return [stripped, *rest]

    def col(self, lineno: int, col: int) -> int:
        k = lineno - self.first_line
        return col + (self.shifts[k] if 0 <= k < len(self.shifts) else 0)


# the node kinds that carry a source position (`lineno`, `col_offset`, ...)
_POSITIONED = (ast.expr, ast.stmt, ast.excepthandler, ast.arg, ast.keyword, ast.alias, ast.pattern)
if sys.version_info >= (3, 12):
    _POSITIONED += (ast.type_param,)


def _parse(region: _Region, source: str, mode: str, clause: str) -> ast.AST:
    try:
        tree = ast.parse(region.text, mode=mode)
    except SyntaxError as e:
        lineno = e.lineno or region.first_line
        col = region.col(lineno, (e.offset or 1) - 1)
        msg = e.msg
        last = _last_line(region, source)
        if lineno > last:  # e.g. `where len(X) <`: Python only notices at the closing paren
            lines = source.split("\n")
            lineno, col = last, len(lines[last - 1].rstrip())
            msg = "the expression ends early, more was expected here"
        if e.msg == "unexpected indent":
            _unknown_decoder(source, lineno)
        if e.msg == "invalid syntax":
            _unknown_inline_decoder(source, lineno, col)
        raise QuerySyntaxError(
            f"invalid {clause}: {msg}", source=source, lineno=lineno, col=col
        ) from None
    # node positions are made to point into the user's source (undo dedent and the added "(")
    for node in ast.walk(tree):
        if not isinstance(node, _POSITIONED):
            continue
        node.col_offset = region.col(node.lineno, node.col_offset)
        if node.end_lineno is not None and node.end_col_offset is not None:
            node.end_col_offset = region.col(node.end_lineno, node.end_col_offset)
    return tree


def _unknown_decoder(source: str, lineno: int) -> None:
    """An indented prompt after a line holding only a name (or call) that is no decoder:
    the user meant a decoder clause with a decoder cogql does not know."""
    lines = source.split("\n")
    k = lineno - 1
    while k > 0 and not lines[k - 1].strip():
        k -= 1
    above = lines[k - 1] if k > 0 else ""
    m = _DECODER_LIKE.fullmatch(above)
    if m is not None:
        _raise_unknown_decoder(m, source, k, "the line before an indented prompt")


# a name, or a call, alone before a prompt: where a decoder clause goes
_DECODER_LIKE = re.compile(r"(\s*)([A-Za-z_]\w*)\s*(\(.*\))?\s*")
_STRING_START = re.compile(r"[rRbBuUfF]{0,2}[\"']")


def _unknown_inline_decoder(source: str, lineno: int, col: int) -> None:
    """`argmx "Hello [X]"`: Python sees a name followed by a string, where the user wrote a
    decoder clause with a decoder cogql does not know (at the top level: a name before a
    string inside the prompt's body is some other mistake)."""
    lines = source.split("\n")
    line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    m = _DECODER_LIKE.fullmatch(line[:col])
    if m is not None and not m.group(1) and _STRING_START.match(line, col):
        _raise_unknown_decoder(m, source, lineno, "a name before a prompt string")


def _raise_unknown_decoder(m: re.Match[str], source: str, lineno: int, where: str) -> None:
    name = m.group(2)
    if keyword.iskeyword(name) or name.lower() in DECODER_NAMES:
        return
    close = difflib.get_close_matches(name.lower(), sorted(DECODER_NAMES), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise QuerySyntaxError(
        f"unknown decoder {name!r}: {hint}{where} is the decoder clause, one of "
        f"{', '.join(sorted(DECODER_NAMES))}",
        source=source,
        lineno=lineno,
        col=len(m.group(1)),
    )


def _last_line(region: _Region, source: str) -> int:
    """The last line of the region that holds any text."""
    lines = source.split("\n")
    k = min(region.first_line + len(region.shifts) - 1, len(lines))
    while k > region.first_line and not lines[k - 1].strip():
        k -= 1
    return k


def _expression(clauses: Clauses, span: Span | None, clause: str) -> ast.expr | None:
    if span is None or not clauses.text(span).strip():
        return None
    region = _Region(clauses.source, span, dedent=False)
    region.text = region.text[: region.first_line - 1] + "(" + region.text[region.first_line - 1 :]
    region.text += "\n)"
    region.shifts[0] = -1
    tree = _parse(region, clauses.source, "eval", clause)
    assert isinstance(tree, ast.Expression)
    return tree.body


def _blank(source: str, clauses: Clauses) -> str:
    chars = list(source)
    for span, repl in clauses.inline_keywords:
        chars[span.start : span.end] = list(repl)
    return "".join(chars)


def _decoder(clauses: Clauses) -> DecoderClause | None:
    node = _expression(clauses, clauses.decoder, "decoder clause")
    if node is None:
        return None
    if isinstance(node, ast.Name):
        return DecoderClause(node.id.lower(), lineno=node.lineno, col=node.col_offset)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.args:
            raise QuerySyntaxError(
                f"decoder arguments must be keywords, e.g. {node.func.id}(n=2)",
                source=clauses.source,
                lineno=node.args[0].lineno,
                col=node.args[0].col_offset,
            )
        args = {kw.arg: kw.value for kw in node.keywords if kw.arg is not None}
        where = {kw.arg: (kw.lineno, kw.col_offset) for kw in node.keywords if kw.arg}
        return DecoderClause(node.func.id.lower(), args, node.lineno, node.col_offset, where)
    raise QuerySyntaxError(
        "malformed decoder clause, expected e.g. argmax or sample(n=2)",
        source=clauses.source,
        lineno=node.lineno,
        col=node.col_offset,
    )


def _distribution(node: ast.expr | None, source: str) -> DistributionClause | None:
    if node is None:
        return None
    ok = (
        isinstance(node, ast.Compare)
        and isinstance(node.left, ast.Name)
        and len(node.ops) == 1
        and isinstance(node.ops[0], ast.In)
    )
    if not ok:
        raise QuerySyntaxError(
            "malformed distribution clause, expected: distribution VAR in [...]",
            source=source,
            lineno=node.lineno,
            col=node.col_offset,
        )
    assert isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
    return DistributionClause(node.left.id, node.comparators[0], node.lineno, node.col_offset)


class _PromptTransformer(ast.NodeTransformer):
    """Rewrites prompt-string statements into runtime calls, leaving other Python alone."""

    def __init__(self, source: str, dist_var: str | None) -> None:
        self.source = source
        self.dist_var = dist_var
        self.statements: list[PromptStatement] = []

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef
    visit_GeneratorExp = visit_FunctionDef  # an await inside would make it an async generator

    def visit_Return(self, node: ast.Return) -> ast.AST:
        if node.value is None:
            node.value = _runtime_attr("DEFAULT", node)
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.expr:
        """`f(x)` becomes `await __cogql__.call(f, x)`, as LMQL compiles calls in the prompt
        section, so that a query function called from a query returns its value."""
        self.generic_visit(node)
        if _is_locals_call(node):  # the program's locals, less the runtime's parameter
            call = ast.Call(_runtime_attr("program_locals", node), [node], [])
            return ast.copy_location(call, node)
        if isinstance(node.func, ast.Name) and node.func.id in _PLAIN_CALLS:
            return node
        call = ast.Call(_runtime_attr("call", node), [node.func, *node.args], node.keywords)
        return ast.copy_location(ast.Await(ast.copy_location(call, node)), node)

    def visit_Await(self, node: ast.Await) -> ast.AST:
        """`await f(x)` stays as written (only the arguments are rewritten)."""
        if isinstance(node.value, ast.Call):
            self.generic_visit(node.value)
            return node
        return self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> ast.AST | list[ast.stmt]:
        parts = _prompt_parts(node.value)
        if parts is None:
            return self.generic_visit(node)
        text, where, dist = parts
        stmt = self._statement(text, node, where, dist)
        self.statements.append(stmt)
        return self._emit(len(self.statements) - 1, stmt, node)

    def _statement(
        self, text: str, node: ast.Expr, where: ast.expr | None, dist: ast.expr | None
    ) -> PromptStatement:
        try:
            segments = parse_qstring(text)
        except QStringError as e:
            lineno, col = locate(self.source, node.lineno, node.col_offset, e.fragment)
            raise QuerySyntaxError(str(e), source=self.source, lineno=lineno, col=col) from None
        return PromptStatement(
            segments, node.lineno, node.col_offset, where, _distribution(dist, self.source)
        )

    def _emit(self, index: int, stmt: PromptStatement, node: ast.Expr) -> list[ast.stmt]:
        values: list[ast.expr] = []
        after = _offset(self.source, node.lineno, node.col_offset)
        for seg in stmt.segments:
            if not isinstance(seg, Interpolation):
                continue
            at = self.source.find("{" + seg.expr, after)
            if at < 0:  # written with escapes: the source text differs from the value
                where = InterpolationAt(seg.expr, node.lineno, node.col_offset + 1)
            else:
                after = at + len(seg.expr) + 1
                lead = len(seg.expr) - len(seg.expr.lstrip())
                where = InterpolationAt(seg.expr, *_line_col(self.source, at + 1 + lead))
            stmt.interpolations.append(where)
            values.append(_interpolation(seg.expr, self.source, where))
        call = ast.Call(
            func=_runtime_attr("prompt", node),
            args=[
                ast.Constant(index),
                ast.List(values, ast.Load()),
                ast.Call(ast.Name("locals", ast.Load()), [], []),
            ],
            keywords=[],
        )
        out: list[ast.stmt] = [ast.Expr(ast.Await(call))]
        dist_var = stmt.distribution.variable if stmt.distribution else self.dist_var
        for hole in stmt.holes:
            if hole.name == dist_var or "." in hole.name:
                continue
            getter = ast.Call(_runtime_attr("value", node), [ast.Constant(hole.name)], [])
            out.append(ast.Assign([ast.Name(hole.name, ast.Store())], getter))
        for new in out:
            ast.copy_location(new, node)
            ast.fix_missing_locations(new)
        return out


def _is_locals_call(node: ast.Call) -> bool:
    return (
        isinstance(node.func, ast.Name)
        and node.func.id in ("locals", "vars")
        and not node.args
        and not node.keywords
    )


class _ContextName(ast.NodeTransformer):
    """`context` read in the prompt section (also from a function defined there) is the
    runtime's context object, as LMQL compiles it; a function whose own parameter or local is
    named `context` keeps it."""

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id == "context" and isinstance(node.ctx, ast.Load):
            return ast.copy_location(_runtime_attr("context", node), node)
        return node

    def visit_FunctionDef(self, node: _Function) -> ast.AST:
        return node if _binds_context(node) else self.generic_visit(node)

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        return node  # a class body is its own namespace


_Function = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


def _binds_context(fn: _Function) -> bool:
    _, stored = _names([fn])
    own = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
    return "context" in own or "context" in stored - {getattr(fn, "name", "")}


def locate(source: str, lineno: int, col: int, needle: str | None) -> tuple[int, int]:
    """(line, column) of the first `needle` in `source` at or after (lineno, col), e.g. a hole
    inside a prompt string; (lineno, col) itself when it is not found."""
    start = _offset(source, lineno, col)
    at = source.find(needle, start) if needle else -1
    return (lineno, col) if at < 0 else _line_col(source, at)


def hole_position(source: str, stmt: PromptStatement | None, name: str) -> tuple[int, int]:
    """Where the hole `[name]` is written (decorated, `[@f name]`, or typed, `[name: t]`): in
    `stmt`'s prompt when given, else first in the source; the statement (or 1, 0) if not found."""
    lineno, col = (stmt.lineno, stmt.col) if stmt is not None else (1, 0)
    hole = re.compile(r"\[(?:@[^\s\[\]]+\s+)*" + re.escape(name) + r"\b")
    found = hole.search(source, _offset(source, lineno, col))
    return (lineno, col) if found is None else _line_col(source, found.start())


def _offset(source: str, lineno: int, col: int) -> int:
    return sum(len(line) + 1 for line in source.split("\n")[: lineno - 1]) + col


def _line_col(source: str, at: int) -> tuple[int, int]:
    return source.count("\n", 0, at) + 1, at - (source.rfind("\n", 0, at) + 1)


# calls left alone: builtins that read the caller's frame, and print (as LMQL)
_PLAIN_CALLS = frozenset({"locals", "globals", "vars", "dir", "eval", "exec", "super", "print"})


def _runtime_attr(name: str, node: ast.AST) -> ast.Attribute:
    attr = ast.Attribute(ast.Name(RUNTIME_NAME, ast.Load()), name, ast.Load())
    return ast.copy_location(attr, node)


def _prompt_parts(value: ast.expr) -> tuple[str, ast.expr | None, ast.expr | None] | None:
    text = _prompt_text(value)
    if text is not None:
        return text, None, None
    inline_or = _inline_or(value)
    if inline_or is not None:
        return inline_or
    if isinstance(value, ast.BoolOp) and value.values:
        first = _prompt_text(value.values[0])
        if first is not None:
            rest = value.values[1:]
            clause = rest[0] if len(rest) == 1 else ast.BoolOp(ast.And(), rest)
            ast.copy_location(clause, rest[0])
            if isinstance(value.op, ast.And):
                return first, clause, None
            return first, None, clause
    return None


def _prompt_text(value: ast.expr) -> str | None:
    """The prompt string a statement's leading literal stands for: a plain string as written,
    an f-string (`f"Hi {name}[X]"`) as the same text without its `f`, interpolated by the
    runtime like any prompt string. f-strings anywhere else are Python's own."""
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    if isinstance(value, ast.JoinedStr):
        return _unparse_fstring(value)
    return None


def _unparse_fstring(node: ast.JoinedStr) -> str:
    parts: list[str] = []
    for piece in node.values:
        if isinstance(piece, ast.FormattedValue):
            field = ast.unparse(piece.value)
            if piece.conversion != -1:
                field += "!" + chr(piece.conversion)
            if isinstance(piece.format_spec, ast.JoinedStr):
                field += ":" + _unparse_fstring(piece.format_spec)
            parts.append("{" + field + "}")
        elif isinstance(piece, ast.Constant):
            parts.append(str(piece.value).replace("{", "{{").replace("}", "}}"))
    return "".join(parts)


def _inline_or(value: ast.expr) -> tuple[str, ast.expr, None] | None:
    """`"..." where A or B`: the rewrite to `"..." and A or B` parses as `("..." and A) or B`,
    so the string is regrouped out of the `or` (the constraint is `A or B`)."""
    if not (isinstance(value, ast.BoolOp) and isinstance(value.op, ast.Or)):
        return None
    first = value.values[0]
    if not (isinstance(first, ast.BoolOp) and isinstance(first.op, ast.And)):
        return None
    head = _prompt_text(first.values[0])
    if head is None:
        return None
    rest = first.values[1:]
    left = rest[0] if len(rest) == 1 else ast.copy_location(ast.BoolOp(ast.And(), rest), rest[0])
    clause = ast.copy_location(ast.BoolOp(ast.Or(), [left, *value.values[1:]]), left)
    return head, clause, None


def _interpolation(expr: str, source: str, where: InterpolationAt) -> ast.expr:
    try:
        tree = ast.parse("f" + repr("{" + expr + "}"), mode="eval")
    except SyntaxError as e:
        raise QuerySyntaxError(
            f"invalid interpolation {{{expr}}}: {e.msg}",
            source=source,
            lineno=where.lineno,
            col=where.col,
        ) from None
    value = tree.body
    for sub in ast.walk(value):
        if isinstance(sub, _POSITIONED):
            sub.lineno = sub.end_lineno = where.lineno
            sub.col_offset = sub.end_col_offset = where.col
    return value


def _names(nodes: Sequence[ast.AST]) -> tuple[set[str], set[str]]:
    loaded: set[str] = set()
    stored: set[str] = set()
    for root in nodes:
        for n in ast.walk(root):
            if isinstance(n, ast.Name):
                (loaded if isinstance(n.ctx, ast.Load) else stored).add(n.id)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                stored.add(n.name)
            elif isinstance(n, ast.alias):
                stored.add((n.asname or n.name).split(".")[0])
            elif isinstance(n, ast.arg):
                stored.add(n.arg)
            elif isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and n.name:
                stored.add(n.name)  # `except E as e:`, `case [x, *rest]:`
            elif isinstance(n, ast.MatchMapping) and n.rest:
                stored.add(n.rest)
    return loaded, stored


def _prologue(clauses: Clauses, source: str) -> list[ast.stmt]:
    """The statements before the decoder keyword: plain Python, run as module code."""
    if clauses.prologue is None or not clauses.text(clauses.prologue).strip():
        return []
    region = _Region(source, clauses.prologue, dedent=True)
    tree = _parse(region, clauses.source, "exec", "prologue")
    assert isinstance(tree, ast.Module)
    return tree.body


def _body(
    clauses: Clauses, source: str, dist_var: str | None
) -> tuple[list[ast.stmt], _PromptTransformer]:
    body: list[ast.stmt] = []
    transformer = _PromptTransformer(clauses.source, dist_var)
    if clauses.prompt is not None and clauses.text(clauses.prompt).strip():
        region = _Region(source, clauses.prompt, dedent=True)
        tree = _parse(region, clauses.source, "exec", "prompt")
        assert isinstance(tree, ast.Module)
        for stmt in tree.body:
            new = transformer.visit(stmt)
            body.extend(new if isinstance(new, list) else [new])
    return body, transformer


class DistributionPlacementError(QueryCompileError, AssertionError):
    """The distribution hole is not the end of the prompt (LMQL fails an assertion)."""


def _check_distribution(query: CompiledQuery) -> None:
    dist = query.distribution
    if dist is None:
        return
    last = query.statements[-1] if query.statements else None
    tail = last.segments[-1] if last and last.segments else None
    if not (isinstance(tail, Hole) and tail.name == dist.variable):
        raise DistributionPlacementError(
            f"the distribution variable {dist.variable} must be the last hole of the prompt, "
            "with nothing after it",
            source=query.source,
            lineno=dist.lineno,
            col=dist.col,
        )
    if query.where is not None:
        for n in ast.walk(query.where):
            if isinstance(n, ast.Name) and n.id == dist.variable:
                raise QueryCompileError(
                    f"Distribution variable {dist.variable} cannot be used in where clause.",
                    source=query.source,
                    lineno=n.lineno,
                    col=n.col_offset,
                )


def _free_variables(
    body: list[ast.stmt], exprs: list[ast.AST | None], holes: set[str], prologue: list[ast.stmt]
) -> tuple[str, ...]:
    """The names the query reads that it does not define: its inputs. What the prologue reads
    is not among them (it runs as module code, before any input is bound), as in LMQL."""
    loaded, stored = _names([*body, *(e for e in exprs if e is not None)])
    stored |= _names(prologue)[1]
    known = stored | holes | set(dir(builtins)) | _RESERVED
    return tuple(sorted(n for n in loaded - known if not n.startswith("__")))


def _hole_expressions(statements: list[PromptStatement]) -> list[ast.AST]:
    """The type and decorator expressions of holes (`[@d X: q(a)]`): the names they read are
    inputs too, as in LMQL, so they can be passed to `run` and bound positionally."""
    out: list[ast.AST] = []
    for hole in (h for s in statements for h in s.holes):
        for expr in (e for e in (hole.type_expr, *hole.decorators) if e):
            with contextlib.suppress(SyntaxError):  # reported where the expression is used
                out.append(ast.parse(expr.strip(), mode="eval"))
    return out


def compile_query(source: str) -> CompiledQuery:
    """Parse and compile LMQL source; raises QuerySyntaxError with line and column."""
    source = textwrap.dedent(_strip_marker(source).expandtabs(8))
    clauses = split_clauses(source)
    blanked = _blank(source, clauses)
    where = _expression(clauses, clauses.where, "where clause")
    dist = _distribution(_expression(clauses, clauses.distribution, "distribution"), source)
    prologue = _prologue(clauses, blanked)
    body, transformer = _body(clauses, blanked, dist.variable if dist else None)
    statements = transformer.statements
    if dist is None:
        dist = next((s.distribution for s in statements if s.distribution), None)
    holes = {h.name for s in statements for h in s.holes}
    decoder = _decoder(clauses)
    model = _expression(clauses, clauses.model, "from clause")
    inline = [s.where for s in statements] + [d.values for d in [dist] if d is not None]
    dec_args = list(decoder.args.values()) if decoder else []
    exprs = [where, model, *inline, *dec_args, *_hole_expressions(statements)]
    free = _free_variables(body, exprs, holes, prologue)
    filename = _register_source(source)
    query = CompiledQuery(
        source=source,
        code=compile(_program(body, free), filename, "exec"),
        prologue=compile(_module(prologue), filename, "exec") if prologue else None,
        statements=statements,
        decoder=decoder,
        model=model,
        where=where,
        distribution=dist,
        hole_names=frozenset(holes),
        free_variables=free,
    )
    _check_distribution(query)
    _check_hole_types(statements, _names([*body, *prologue])[1], source)
    return query


def invalid_hole_type(hole: Hole, shown: str) -> str:
    """LMQL's message for a hole type that is no type, with what would be one."""
    return (
        f"Not a valid type expression or tactic annotation {shown!r} for variable "
        f"{hole.name!r}: [{hole.name}: {hole.type_expr}] needs int, str, a regex string "
        "or a query function"
    )


def _check_hole_types(statements: list[PromptStatement], defined: set[str], source: str) -> None:
    """Hole types that no scope can make valid are reported now rather than when the hole is
    reached, after model calls."""
    for stmt in statements:
        for hole in stmt.holes:
            shown = _never_a_type((hole.type_expr or "").strip(), defined)
            if shown is None:
                continue
            lineno, col = hole_position(source, stmt, hole.name)
            raise HoleTypeError(
                invalid_hole_type(hole, shown), source=source, lineno=lineno, col=col
            )


def _never_a_type(expr: str, defined: set[str]) -> str | None:
    """How LMQL shows `expr` when it can never be a hole type (None when it may be one): a
    builtin other than int and str that the query does not redefine (`float`), or a literal
    other than a string (`12`, `None`)."""
    if expr in ("int", "str") or expr in defined:
        return None
    if _is_builtin(expr):
        return str(getattr(builtins, expr))
    try:
        value = ast.literal_eval(expr)
    except Exception:  # not a literal: a name or an expression, known when the query runs
        return None
    return None if isinstance(value, str) else str(value)


def _is_builtin(name: str) -> bool:
    return name.isidentifier() and not name.startswith("_") and hasattr(builtins, name)


def _program(body: list[ast.stmt], inputs: tuple[str, ...]) -> ast.Module:
    """`async def __cogql_query__(__cogql__, *, <inputs>=None)` holding the prompt section."""
    body = [_ContextName().visit(stmt) for stmt in body]
    body.append(ast.Return(_runtime_attr("DEFAULT", ast.Pass(lineno=1, col_offset=0))))
    params = ast.arguments(
        posonlyargs=[ast.arg(RUNTIME_NAME)],
        args=[],
        vararg=None,
        kwonlyargs=[ast.arg(name) for name in inputs],
        kw_defaults=[ast.Constant(None) for _ in inputs],
        kwarg=None,
        defaults=[],
    )
    fn = ast.AsyncFunctionDef(
        name=QUERY_FUNCTION,
        args=params,
        body=body,
        decorator_list=[],
        returns=None,
    )
    if sys.version_info >= (3, 12):
        fn.type_params = []  # a required field from Python 3.12 on
    return _module([fn])


def _module(body: list[ast.stmt]) -> ast.Module:
    module = ast.Module(body, [])
    ast.fix_missing_locations(module)
    return module


def _register_source(source: str) -> str:
    """A file name for the compiled code whose lines `linecache` knows: tracebacks then show
    query lines, and `inspect.getsource` finds a `@cogql.query` function defined inside a query
    (its docstring is the nested query, read as written)."""
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:12]
    filename = f"<cogql query {digest}>"
    if filename not in linecache.cache:
        lines = source.splitlines(keepends=True)
        linecache.cache[filename] = (len(source), None, lines, filename)
    return filename


def _strip_marker(source: str) -> str:
    stripped = source.lstrip()
    if stripped.startswith(("lmql\n", "lmql\r\n")):
        return stripped[4:].lstrip("\r\n")
    return source
