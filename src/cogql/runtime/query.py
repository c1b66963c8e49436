"""Query functions: binding inputs, choosing model and decoder, running the decoder."""

from __future__ import annotations

import ast
import asyncio
import difflib
import inspect
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypeVar, cast, overload

from ..constraints.compile import unknown_function_error
from ..constraints.values import UnresolvedNameError, unresolved_message
from ..errors import QueryError
from ..language.compiler import CompiledQuery, compile_query
from ..language.errors import QueryCompileError
from ..language.expressions import evaluate
from ..lmtp.cost import track_cost
from .decoders import DECODER_ARGS, check_decoder, decode
from .decoders import DecoderError as DecoderError  # raised by query calls; imported from here
from .events import OnEvent
from .missing_inputs import InputError as InputError  # raised by query calls; imported from here
from .missing_inputs import MissingInputError as MissingInputError
from .missing_inputs import input_hole_type, interpolation_reading, unknown_hole_type
from .model import Model, as_model
from .query_attributes import LMQLQueryAttributes
from .result import QueryResult, attach_cost
from .scope import QueryScope, module_globals, query_globals
from .tracing import query_trace

RUNTIME_ARGS = frozenset({"model", "decoder", "output"}) | DECODER_ARGS

# What calling a query function gives: a coroutine of its result (async query functions) or the
# result itself (synchronous ones, `is_async=False`)
CallT = TypeVar("CallT", covariant=True)
AsyncCall: TypeAlias = Coroutine[Any, Any, QueryResult]
_T = TypeVar("_T")


@dataclass
class QueryFunction(LMQLQueryAttributes, Generic[CallT]):
    """A compiled query with its defaults; call it (awaitable) or use `run_sync`."""

    compiled: CompiledQuery
    scope: dict[str, Any] = field(default_factory=dict)
    signature: inspect.Signature | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    is_async: bool = True
    name: str = "query"
    _globals: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __call__(self, *args: Any, **kwargs: Any) -> CallT:
        # the factories pair `is_async` with the matching CallT
        if self.is_async:
            return cast(CallT, self.run(*args, **kwargs))
        return cast(CallT, run_blocking(self.run(*args, **kwargs)))

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> QueryFunction[CallT]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> BoundQuery[CallT]: ...
    def __get__(
        self, instance: object | None, owner: type | None = None
    ) -> QueryFunction[CallT] | BoundQuery[CallT]:
        """`@cogql.query` on a method: `self` binds like a plain method's (LMQL allows it)."""
        return self if instance is None else BoundQuery(self, instance)

    async def run(self, *args: Any, **kwargs: Any) -> QueryResult:
        # a name the query reads (or the function declares) is an input even if it is also a
        # runtime option's name, as in LMQL (e.g. `for i in range(n)`)
        names = set(self.compiled.free_variables)
        names |= set(self.signature.parameters) if self.signature is not None else set()
        is_runtime = {k: k in RUNTIME_ARGS and k not in names for k in kwargs}
        runtime = {**self.defaults, **{k: v for k, v in kwargs.items() if is_runtime[k]}}
        inputs = {k: v for k, v in kwargs.items() if not is_runtime[k]}
        _check_misspelt(inputs, names)
        scope = self._scope(self._bind(args, inputs))
        with track_cost() as cost:  # predictions and tokens of this run (and nested queries)
            result = await _execute(self.compiled, scope, runtime, self.name)
        return attach_cost(result, await cost.settle())

    def _bind(self, args: tuple[Any, ...], inputs: dict[str, Any]) -> dict[str, Any]:
        if self.signature is not None and not self.signature.parameters and not args:
            # LMQL: a query function declared without parameters takes its free variables by
            # keyword (`def q():` whose query reads `s`, called as `q(s=...)`)
            unknown = [k for k in inputs if k not in self.compiled.free_variables]
            if unknown:
                raise InputError(f"{self.name}() got an unexpected keyword argument {unknown[0]!r}")
            return inputs
        if self.signature is not None:
            try:
                bound = self.signature.bind(*args, **inputs)
            except TypeError as e:
                raise InputError(f"{self.name}(): {e}") from None
            bound.apply_defaults()
            return dict(bound.arguments)
        if not args:
            return inputs
        free = [v for v in self.compiled.free_variables if v not in inputs]
        if len(args) != len(free):
            raise InputError(
                f"{self.name}() got {len(args)} positional argument(s) but the query has "
                f"{len(free)} unbound input(s): {', '.join(free) or 'none'}"
            )
        return {**inputs, **dict(zip(free, args, strict=True))}

    def _scope(self, inputs: dict[str, Any]) -> QueryScope:
        """The names of one call (runtime/scope.py): the captured ones are globals, the
        inputs locals; every free variable must be one or the other."""
        visible = query_globals(self.scope).keys() | inputs.keys()
        missing = [v for v in self.compiled.free_variables if v not in visible]
        if missing:
            raise _unresolved(self.compiled, missing)
        if self._globals is None:
            self._globals = module_globals(self.compiled, self.scope)
        scope = QueryScope(self._globals, inputs, self.compiled.free_variables)
        wrong_type = input_hole_type(self.compiled, scope)
        if wrong_type is not None:
            raise wrong_type
        return scope


def _check_misspelt(inputs: dict[str, Any], names: set[str]) -> None:
    """An input the query does not read, spelt like an option or an input it does read
    (`modle=`, `temprature=`, `nme=`), is a typo: LMQL ignores it silently; cogql says so."""
    for key in inputs:
        if key in names:
            continue
        close = difflib.get_close_matches(key, sorted(names | RUNTIME_ARGS), n=1, cutoff=0.8)
        if close:
            raise InputError(
                f"unknown argument {key}=: the query does not read {key}; did you mean {close[0]}=?"
            )


def _unresolved(query: CompiledQuery, names: list[str]) -> Exception:
    """LMQL's TypeError for names nothing provides; pointing into the where clause when it is
    one of them there (a hole name that no prompt fills, or an unknown function)."""
    where_names = {n for node in query.where_clauses for n in _names_in(node)}
    message = unresolved_message(names).rstrip(".") + "."
    for name in sorted(names):
        if name in where_names:
            lineno, col = _first_use(query, name)
            if len(names) == 1 and _called_in_where(query, name):
                return unknown_function_error(name, (), query.source, lineno, col)
            return UnresolvedNameError(
                f"{message} The where clause names {name}, which no [{name}] hole in the "
                "prompt fills and no input provides",
                source=query.source,
                lineno=lineno,
                col=col,
            )
    located = unknown_hole_type(query, names) or interpolation_reading(query, names, message)
    if located is not None:
        return located
    them = "it" if len(names) == 1 else "them"
    return InputError(f"{message} Pass {them} as inputs, or define {them} where the query is.")


def _called_in_where(query: CompiledQuery, name: str) -> bool:
    wheres = query.where_clauses
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
        for w in wheres
        if w is not None
        for n in ast.walk(w)
    )


def _names_in(node: ast.AST | None) -> set[str]:
    if node is None:
        return set()
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _first_use(query: CompiledQuery, name: str) -> tuple[int, int]:
    for node in query.where_clauses:
        for n in ast.walk(node) if node is not None else ():
            if isinstance(n, ast.Name) and n.id == name:
                return n.lineno, n.col_offset
    return 1, 0


def _decoder(
    query: CompiledQuery, scope: dict[str, Any], runtime: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """LMQL's precedence: the clause's decoder with call-time arguments merged over its own;
    without a clause, `decoder=` (a non-zero temperature makes the default `sample`)."""
    clause = query.decoder
    args = {k: evaluate(v, scope) for k, v in clause.args.items()} if clause else {}
    name = clause.name if clause else runtime.get("decoder")
    args.update({k: v for k, v in runtime.items() if k in DECODER_ARGS})
    if name is None:
        name = "sample" if args.get("temperature", 0) else "argmax"
    check_decoder(name, args)
    return name, args


class DecoderClauseError(QueryCompileError, DecoderError):
    """A decoder error caused by the query's decoder clause, with its line and column."""


def _checked_decoder(
    query: CompiledQuery, scope: dict[str, Any], runtime: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """`_decoder`, with errors about the decoder clause pointing into the query."""
    try:
        return _decoder(query, scope, runtime)
    except DecoderClauseError:
        raise
    except DecoderError as e:
        raise _at_clause(e, query) from None


def _at_clause(error: DecoderError, query: CompiledQuery) -> DecoderError:
    """Point at the clause argument the message names, else at the decoder's name."""
    clause = query.decoder
    if clause is None:
        return error
    message = str(error)
    named = [
        pos
        for arg, pos in clause.arg_positions.items()
        if re.search(rf"\b{re.escape(arg)}\b", message)
    ]
    lineno, col = named[0] if named else (clause.lineno, clause.col)
    return DecoderClauseError(message, source=query.source, lineno=lineno, col=col)


def _model(query: CompiledQuery, scope: dict[str, Any], runtime: dict[str, Any]) -> Model:
    if runtime.get("model") is not None:
        return as_model(runtime["model"])
    if query.model is not None:
        return as_model(evaluate(query.model, scope))
    return as_model(None)


async def _execute(
    query: CompiledQuery, scope: dict[str, Any], runtime: dict[str, Any], label: str = "query"
) -> QueryResult:
    name, args = _checked_decoder(query, scope, runtime)
    model = _model(query, scope, runtime)
    conn = await model.connect()
    on_event = _output(runtime)
    wanted = args.get("certificate")
    with query_trace(label, wanted, model.model_identifier, conn.tokenizer.name) as trace:
        if trace is None:
            return await decode(name, args, query, conn, scope, on_event)
        return trace.finish(await decode(name, args, query, conn, scope, trace.listen(on_event)))


@dataclass(frozen=True)
class BoundQuery(Generic[CallT]):
    """A query method bound to its instance; also usable as a nested-query tactic."""

    function: QueryFunction[CallT]
    instance: Any

    def __call__(self, *args: Any, **kwargs: Any) -> CallT:
        return self.function(self.instance, *args, **kwargs)

    async def run(self, *args: Any, **kwargs: Any) -> QueryResult:
        return await self.function.run(self.instance, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        """The query function's other attributes (`lmql_code`, `is_async`, ...)."""
        if (name.startswith("__") and name != "__lmql_query_function__") or name == "function":
            raise AttributeError(name)
        return getattr(self.function, name)


def _output(runtime: dict[str, Any]) -> OnEvent | None:
    """`output=` (cogql's name) or `output_writer=` (LMQL's): a callable taking each event."""
    for key in ("output", "output_writer"):
        writer = runtime.get(key)
        if writer is not None and not callable(writer):
            raise TypeError(
                f"{key}= must be a callable that takes each query event (e.g. print, or "
                f"cogql.compat.printing); got {writer!r}"
            )
        if writer is not None:
            return writer
    return None


def run_blocking(coro: Coroutine[Any, Any, _T]) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise SyncCallInLoopError(
        "LMQL queries cannot be called synchronously from within an async context (a running "
        "event loop, as in a Jupyter notebook): write `await query.run(...)` (or `await "
        "cogql.run(...)`, `await q(...)` for a query function made with is_async=True) there"
    )


class SyncCallInLoopError(QueryError, RuntimeError):
    """A blocking call (run_sync, a synchronous query function) inside a running event loop,
    where it would block the loop the query needs."""


@overload
def query_from_string(
    source: str,
    input_variables: list[str] | None = None,
    *,
    is_async: Literal[True] = True,
    **defaults: Any,
) -> QueryFunction[AsyncCall]: ...
@overload
def query_from_string(
    source: str,
    input_variables: list[str] | None = None,
    *,
    is_async: Literal[False],
    **defaults: Any,
) -> QueryFunction[QueryResult]: ...
@overload
def query_from_string(
    source: str, input_variables: list[str] | None = None, *, is_async: bool, **defaults: Any
) -> QueryFunction[AsyncCall | QueryResult]: ...
def query_from_string(
    source: str,
    input_variables: list[str] | None = None,
    *,
    is_async: bool = True,
    **defaults: Any,
) -> QueryFunction[Any]:
    """LMQL's `lmql.query("...")`: async unless `is_async=False`; `input_variables` names the
    inputs in positional order (otherwise positional arguments bind to the free variables in
    alphabetical order)."""
    signature = None
    if input_variables is not None:
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        signature = inspect.Signature([inspect.Parameter(v, kind) for v in input_variables])
    return QueryFunction(
        compile_query(source), signature=signature, defaults=defaults, is_async=is_async
    )


@overload
def query_from_function(
    fn: Callable[..., Coroutine[Any, Any, Any]], **defaults: Any
) -> QueryFunction[AsyncCall]: ...
@overload
def query_from_function(fn: Callable[..., Any], **defaults: Any) -> QueryFunction[QueryResult]: ...
def query_from_function(fn: Callable[..., Any], **defaults: Any) -> QueryFunction[Any]:
    """`@cogql.query`: the function's docstring (or body string) is the query."""
    source = _docstring_source(fn)
    scope = dict(fn.__globals__)
    scope.update(_caller_locals())
    closure = inspect.getclosurevars(fn)
    scope.update(closure.nonlocals)
    return QueryFunction(
        compile_query(source),
        scope=scope,
        signature=inspect.signature(fn),
        defaults=defaults,
        is_async=inspect.iscoroutinefunction(fn),
        name=fn.__name__,
    )


def _caller_locals() -> dict[str, Any]:
    """The local variables where `@cogql.query` was applied, as LMQL captures them: the query
    lives in a docstring, so the function's own closure holds none of the names it reads."""
    frame = inspect.currentframe()
    try:
        while frame is not None and _in_cogql(frame.f_globals):
            frame = frame.f_back
        return dict(frame.f_locals) if frame is not None else {}
    finally:
        del frame


def _in_cogql(module_globals: dict[str, Any]) -> bool:
    return str(module_globals.get("__name__", "")).partition(".")[0] == "cogql"


def _docstring_source(fn: Callable[..., Any]) -> str:
    """The docstring as written in the source, so `\\n` escapes stay as the query author wrote."""
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        src = None
    if src is not None:
        import textwrap

        tree = ast.parse(textwrap.dedent(src))
        body = tree.body[0].body if tree.body and hasattr(tree.body[0], "body") else []
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            segment = ast.get_source_segment(textwrap.dedent(src), body[0].value)
            if segment is not None:
                return _unquote(segment)
    if fn.__doc__:
        return fn.__doc__
    raise QueryCompileError(f"@cogql.query function {fn.__name__} has no query string")


def _unquote(literal: str) -> str:
    lit = literal.lstrip("rRuU")
    for q in ('"""', "'''", '"', "'"):
        if lit.startswith(q) and lit.endswith(q) and len(lit) >= 2 * len(q):
            return lit[len(q) : -len(q)]
    return lit
