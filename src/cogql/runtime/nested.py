"""Nested queries as tactics: `[ANSWER: chain_of_thought]` (LMQL §9.1).

The hole's value is produced by running another query function in the middle of this one: its
program text goes into this query's prompt, its holes are generated under its own constraints by
the same model, decoder and token budget, and then

* if it returns a value, its text is taken out of the prompt again (like a function's stack
  frame) and the value's `str()` stands in its place; the hole's value is the returned value;
* if it returns nothing, its text stays (like a macro expansion) and is the hole's value.

The nested program runs as a second `QueryRun` that shares this run's `RunState` (prompt, hole
ends, log-prob, calls) and hole strategy, so decoders that replay programs (beam, best_k) replay
nested holes as well.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..language.compiler import hole_position
from ..language.errors import QueryCompileError
from ..language.expressions import evaluate
from ..language.qstrings import Hole
from .context import PromptContext
from .events import OnEvent, QueryEvent, TextAppended, VariableFinished

if TYPE_CHECKING:
    from ..language.compiler import CompiledQuery
    from .interpreter import QueryRun
    from .query import QueryFunction

log = logging.getLogger("cogql.runtime")


class NestedQueryError(QueryCompileError):
    """A nested-query tactic that cannot run as written."""


@dataclass
class Tactic:
    """A query function with the arguments written in the hole, `[X: q(1, k=2)]`."""

    function: QueryFunction
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    bound_self: Any = None


def tactic_of(hole: Hole, env: dict[str, Any], source: str) -> Tactic | None:
    """The tactic named by the hole's type expression; None when it names no query function
    (then it is a type such as int or a regex, handled by the constraint compiler)."""
    if hole.type_expr is None:
        return None
    try:
        node = ast.parse(hole.type_expr.strip(), mode="eval").body
    except SyntaxError:
        return None
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Constant):
        return None
    try:
        fn = evaluate(target, env, "<hole type>")
    except Exception as e:  # the expression is the user's: any error is theirs to see
        lineno, col = hole_position(source, None, hole.name)
        raise NestedQueryError(
            f"[{hole.name}: {hole.type_expr}]: {e}", source=source, lineno=lineno, col=col
        ) from None
    tactic = _as_tactic(fn)
    if tactic is None or not isinstance(node, ast.Call):
        return tactic
    tactic.args = tuple(evaluate(a, env, "<hole type>") for a in node.args)
    tactic.kwargs = {
        k.arg: evaluate(k.value, env, "<hole type>") for k in node.keywords if k.arg is not None
    }
    return tactic


def _as_tactic(fn: Any) -> Tactic | None:
    from .query import BoundQuery, QueryFunction

    if isinstance(fn, QueryFunction):
        return Tactic(fn)
    if isinstance(fn, BoundQuery):
        return Tactic(fn.function, bound_self=fn.instance)
    return None


async def run_tactic(parent: QueryRun, hole: Hole, tactic: Tactic, env: dict[str, Any]) -> Any:
    """Run the nested query inside `parent`, leaving the parent's prompt as described above;
    the hole's value."""
    from .interpreter import DEFAULT, QueryRun

    query = tactic.function
    _warn_ignored_clauses(query)
    warn_outer_constraints(parent.query, hole.name)
    scope = query._scope(_inputs(tactic, env))
    frame = parent.state.mark()
    child = QueryRun(
        query.compiled,
        parent.conn,
        scope,
        parent.decoding,
        _relabel(parent.on_event, hole.name),
        index=parent.index,
        holes=parent.holes,
        quiet=parent.quiet,
        shared_state=parent.state,
    )
    value = await child.run_program()
    if child.distribution is not None:
        raise NestedQueryError(
            f"[{hole.name}: {hole.type_expr}]: a nested query cannot have a distribution clause",
            source=parent.query.source,
        )
    if value is DEFAULT:  # macro expansion: the text stays and is the value
        return parent.state.text_since(frame)
    # stack frame: the nested text leaves the prompt, the returned value takes its place
    prompt_text = str(value)
    parent.state.rewind(frame, prompt_text)
    parent.emit(TextAppended(prompt_text, hole.name, parent.index))
    return value


async def call_in_query(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A function call in a query's prompt section. A query function called this way (not as a
    tactic) runs as a query of its own, on its own model (its decorator's or from clause's, else
    the default one), and gives its value, whether it was defined with `def` or `async def`.
    Other calls are plain Python calls: an `async def` function gives a coroutine to await."""
    from .query import BoundQuery, QueryFunction

    if isinstance(fn, QueryFunction | BoundQuery):
        return await fn.run(*args, **kwargs)
    if isinstance(getattr(fn, "__self__", None), PromptContext):
        return await fn(*args, **kwargs)  # `context.score(...)` with or without `await`
    return fn(*args, **kwargs)


def _inputs(tactic: Tactic, env: dict[str, Any]) -> dict[str, Any]:
    """The arguments written in the hole, then the query's other parameters (or free variables,
    for a string query) taken by name from the calling query's scope, as LMQL captures them."""
    query = tactic.function
    args = tactic.args if tactic.bound_self is None else (tactic.bound_self, *tactic.args)
    kwargs = dict(tactic.kwargs or {})
    if query.signature is not None:
        try:
            bound = query.signature.bind_partial(*args, **kwargs)
        except TypeError as e:
            raise NestedQueryError(f"{query.name}(): {e}", source=query.compiled.source) from None
        names = [p for p in query.signature.parameters if p not in bound.arguments]
    else:
        names = [v for v in query.compiled.free_variables if v not in kwargs]
    captured = {n: env[n] for n in names if n in env and n not in kwargs}
    return query._bind(args, {**captured, **kwargs})


_warned: set[int] = set()
_warned_constraints: set[tuple[int, str]] = set()


def warn_outer_constraints(query: CompiledQuery, name: str) -> None:
    """Constraints on a nested-query hole are not applied: say so once per query and hole."""
    key = (id(query), name)
    if key in _warned_constraints:
        return
    wheres = query.where_clauses
    named = any(
        isinstance(n, ast.Name) and n.id == name
        for w in wheres
        if w is not None
        for n in ast.walk(w)
    )
    if named:
        _warned_constraints.add(key)
        log.warning(
            "the where clause constrains %s, which a nested query fills: those constraints are "
            "not applied (put them in the nested query)",
            name,
        )


def _warn_ignored_clauses(query: QueryFunction) -> None:
    compiled = query.compiled
    if (compiled.decoder is None and compiled.model is None) or id(compiled) in _warned:
        return
    _warned.add(id(compiled))
    log.warning(
        "nested query %s: its decoder and from clauses are ignored; it runs with the model and "
        "decoder of the query that uses it",
        query.name,
    )


def _relabel(on_event: OnEvent | None, variable: str) -> OnEvent | None:
    """The nested query's text belongs to the hole it fills; its own holes are internal."""
    if on_event is None:
        return None

    def forward(event: QueryEvent) -> None:
        if isinstance(event, TextAppended):
            on_event(TextAppended(event.text, variable, event.run))
        elif not isinstance(event, VariableFinished):
            on_event(event)

    return forward
