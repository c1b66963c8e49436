"""The interpreter: runs one program of a query against one model connection.

The compiled program is an ordinary async function; each prompt string calls back into
`QueryContext.prompt`, which appends text and fills holes one at a time, each through the run's
hole strategy (runtime/hole_strategy.py). The prompt itself lives in the run's `RunState`.
"""

from __future__ import annotations

import ast
import builtins
import logging
import math
import time
import types
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import Any

from ..constraints.compile import compile_hole
from ..constraints.holespec import HoleSpec
from ..errors import RunError
from ..language.compiler import (
    QUERY_FUNCTION,
    RUNTIME_NAME,
    CompiledQuery,
    PromptStatement,
    hole_position,
    invalid_hole_type,
)
from ..language.errors import HoleTypeError, QueryCompileError, QuerySyntaxError
from ..language.expressions import evaluate
from ..language.qstrings import Hole, Interpolation, Tag, Text
from ..lmtp.messages import Generate
from .ahead import Ahead, Plan, plan_after
from .calls import model_call
from .chat import open_message, text_tag
from .context import PromptContext
from .events import OnEvent, QueryEvent, TextAppended, VariableFinished, details_wanted
from .hole_endings import stops_inactive_in
from .hole_limits import UnboundedHole, is_unbounded
from .hole_strategy import HoleRequest, HoleStrategy
from .hooks import HoleHooks
from .interpolations import interpolation_error
from .model import ConnectedModel
from .nested import call_in_query
from .result import LMQLResult
from .scope import as_scope, statement_names
from .state import RunState
from .streamed import Generation

log = logging.getLogger("cogql.runtime")


class _Default:
    def __repr__(self) -> str:
        return "<default result>"


DEFAULT = _Default()


@dataclass
class Decoding:
    """How holes are decoded: greedy when temperature is 0."""

    temperature: float = 0.0
    seed: int | None = None
    max_len: int = 2048
    top_k: int | None = None
    top_p: float | None = None
    # holes already warned about for having no token limit: once per query, all runs shared
    unbounded_warned: set[str] = field(default_factory=set, compare=False, repr=False)

    def extra(self) -> dict[str, Any]:
        """The GENERATE fields beyond temperature that are set (top_k, top_p)."""
        return {k: v for k, v in (("top_k", self.top_k), ("top_p", self.top_p)) if v is not None}


@dataclass
class _Pending:
    """Where the distribution hole was reached: its scope, to evaluate the options later."""

    variable: str
    scope: dict[str, Any]
    values: ast.expr


@dataclass
class QueryRun:
    query: CompiledQuery
    conn: ConnectedModel
    scope: dict[str, Any]
    decoding: Decoding
    on_event: OnEvent | None = None
    index: int = 0
    holes: HoleStrategy = field(default_factory=Generation)  # decides each hole's tokens
    quiet: bool = False  # no truncation warning (a decoder replaying hypotheses warns itself)
    # the prompt, hole ends, log-prob and calls: a nested query's run shares its parent's
    shared_state: InitVar[RunState | None] = None
    state: RunState = field(init=False)
    variables: dict[str, Any] = field(default_factory=dict)
    distribution: _Pending | None = None
    shown: str = ""  # the text of the hole being generated that events have already reported
    ahead: Ahead = field(default_factory=Ahead)  # requests sent ahead of the run (ahead.py)
    on_tokens: Callable[[list[int]], None] | None = None  # the hole's tokens, as each arrives

    def __post_init__(self, shared_state: RunState | None) -> None:
        if shared_state is None:
            shared_state = RunState(self.conn.tokenizer, self.conn.bos_token_id)
        self.state = shared_state
        if self.on_event is not None and details_wanted():
            self.ahead.on_cancel = self._ahead_cancelled

    def _ahead_cancelled(self, kind: str, prompt_tokens: int) -> None:
        self.emit(model_call(kind, prompt_tokens, 0, None, self.index, ahead=True,
                             status="cancelled"))  # fmt: skip

    # ---- running --------------------------------------------------------------------------
    async def execute(self) -> Any:
        return await self.finish(await self.run_program())

    async def run_program(self) -> Any:
        """Run the program to its end; its return value (DEFAULT when it returns nothing).
        Its globals are the call's (shared with the prologue), its inputs its parameters."""
        scope = as_scope(self.query, self.scope)
        code = self._function_code()
        fn = types.FunctionType(code, scope.globals)
        try:
            return await fn(QueryContext(self), **scope.params)
        except (QuerySyntaxError, RunError):  # cogql's own, never an interpolation's
            raise
        except Exception as e:
            located = interpolation_error(self.query, code, e)
            if located is None:
                raise
            raise located from e
        finally:
            self.ahead.drop()

    async def finish(self, value: Any) -> Any:
        """The query's result for a program that returned `value` (distribution included)."""
        if value is DEFAULT:
            return await self._result()
        return value

    def _function_code(self) -> types.CodeType:
        for const in self.query.code.co_consts:
            if isinstance(const, types.CodeType) and const.co_name == QUERY_FUNCTION:
                return const
        raise RuntimeError("compiled query has no query function")

    def emit(self, event: QueryEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    # ---- prompt text ----------------------------------------------------------------------
    def append_program_text(self, text: str) -> None:
        if not text:
            return
        self.state.append_text(text)
        self.emit(TextAppended(text, None, self.index))

    def tag(self, role: str) -> str:
        """A `{:role}` tag: the model's chat template where it has one (runtime/chat.py), else
        LMQL's `((role)):` text."""
        opened = open_message(self, role)
        if opened is not None:
            return opened
        return text_tag(role, at_start=not self.state.text)

    # ---- holes ----------------------------------------------------------------------------
    async def fill(
        self, stmt: PromptStatement, hole: Hole, scope: dict[str, Any], plan: Plan | None = None
    ) -> None:
        """Fill `hole`; `plan` is what follows it in its statement, which may be sent ahead
        in its GENERATE's message (ahead.py)."""
        hooks = HoleHooks.of(self, hole, scope)  # [@decorator X], [X: nested_query]
        if hooks is not None and await hooks.before():
            return
        spec = self.hole_spec(stmt, hole, scope)
        if is_unbounded(spec):
            self._warn_unbounded(stmt, hole.name)
        budget = self.decoding.max_len - self.state.token_count
        if budget <= 0:
            self._truncate(stmt, hole.name)
            self.variables[hole.name] = ""
            self.state.end_hole()
            return
        self.shown = ""
        request = HoleRequest(hole.name, spec, budget, (stmt, list(plan), scope) if plan else None)
        tokens, reason = await self.holes.generate(self, request)
        decode = self.conn.tokenizer.decode
        raw = decode(tokens)
        value, prompt_text = spec.finish(raw, len(decode(stops_inactive_in(spec, tokens))))
        self.holes.settle(self, hole.name, prompt_text)
        if hooks is not None:
            value, prompt_text = hooks.after(tokens, value, prompt_text)
        if reason == "length" and (spec.max_tokens is None or len(tokens) < spec.max_tokens):
            self._truncate(stmt, hole.name)
        if prompt_text == raw:
            self.state.append_tokens(tokens, prompt_text)
        else:
            self.state.append_encoded(prompt_text)
        self.state.end_hole(generated=True)
        self.variables[hole.name] = value
        self.emit(VariableFinished(hole.name, value, self.index))

    def _warn_unbounded(self, stmt: PromptStatement, name: str) -> None:
        """A hole only a stop, EOS or max_len ends may run for minutes on a model that never
        writes the stop: say so before it starts, once per query and hole."""
        if name in self.decoding.unbounded_warned:
            return
        self.decoding.unbounded_warned.add(name)
        log.warning("%s", UnboundedHole.at(self.query, stmt, name).warning(self.decoding.max_len))

    def _truncate(self, stmt: PromptStatement, name: str) -> None:
        """LMQL stops with an assertion at max_len; cogql keeps what it has and warns, naming
        the hole and where it is written."""
        lineno, col = hole_position(self.query.source, stmt, name)
        if not self.state.truncated and not self.quiet:
            log.warning(
                "query reached max_len=%d tokens while generating %s (line %d, column %d); "
                "the result is truncated",
                self.decoding.max_len,
                name,
                lineno,
                col + 1,
            )
        self.state.truncate()

    def hole_spec(self, stmt: PromptStatement, hole: Hole, scope: dict[str, Any]) -> HoleSpec:
        env = statement_names(self.scope, self.variables, scope)
        clauses = [stmt.where, self.query.where, *self._type_clause(stmt, hole, env)]
        encode = self.conn.tokenizer.encode
        return compile_hole(
            hole.name, clauses, env, encode, source=self.query.source, holes=self.query.hole_names
        )

    def _type_clause(
        self, stmt: PromptStatement, hole: Hole, env: dict[str, Any]
    ) -> list[ast.expr]:
        """`[X: int]` is INT(X), `[X: str]` no constraint, `[X: r"..."]` (or a name holding a
        pattern) REGEX(X, ...), as LMQL decides by the type expression's value."""
        if hole.type_expr is None:
            return []
        lineno, col = hole_position(self.query.source, stmt, hole.name)
        kind = _type_value(hole.type_expr, env)
        if kind is int:
            node = ast.parse(f"INT({hole.name})", mode="eval").body
        elif kind is str:
            return []
        elif isinstance(kind, str):
            node = ast.parse(f"REGEX({hole.name}, {kind!r})", mode="eval").body
        else:
            shown = hole.type_expr.strip() if kind is None else str(kind)
            raise HoleTypeError(
                invalid_hole_type(hole, shown), source=self.query.source, lineno=lineno, col=col
            )
        for sub in ast.walk(node):
            sub.lineno, sub.end_lineno = lineno, lineno  # type: ignore[attr-defined]
            sub.col_offset, sub.end_col_offset = col, col  # type: ignore[attr-defined]
        return [node]

    def hole_seed(self, ahead: int = 0) -> int | None:
        """The sampling seed of the hole `ahead` holes from now (None: greedy, or unseeded)."""
        if self.decoding.temperature <= 0:
            return None
        base = self.decoding.seed
        if base is None:
            return None
        holes = self.state.generated_holes
        return (base * 1_000_003 + self.index * 7919 + holes + ahead) % (2**31)

    def hole_op(
        self, spec: HoleSpec, max_tokens: int, prompt: list[int], seed: int | None
    ) -> Generate:
        """The GENERATE of a hole: its whole grammar, stop phrases and token limit."""
        return Generate(
            stream_id=None,
            model="",
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=self.decoding.temperature,
            extra=self.decoding.extra(),
            grammar=spec.grammar(),
            stop=spec.server_stops(),
            seed=seed,
            min_tokens=spec.min_tokens,
            top_logprobs=max(1, details_wanted()),  # alternatives, for a listener that asked
        )

    def report(self, name: str, text: str) -> None:
        """Report more of the hole being generated."""
        if text:
            self.shown += text
            self.emit(TextAppended(text, name, self.index))

    # ---- distribution ---------------------------------------------------------------------
    async def _result(self) -> LMQLResult:
        self.ahead.drop()
        result = LMQLResult(self.state.text, dict(self.variables), logprob=self.state.logprob)
        if self.distribution is not None:
            await self._distribution(result, self.distribution)
        return result

    async def _distribution(self, result: LMQLResult, pending: _Pending) -> None:
        env = statement_names(self.scope, self.variables, pending.scope)
        values = evaluate(pending.values, {}, "<distribution>", env)
        options = [str(v) for v in values]
        if not options:
            raise QueryCompileError("the distribution clause lists no values", source="")
        encode = self.conn.tokenizer.encode
        option_ids = [encode(o) for o in options]
        started = time.perf_counter()
        ids = self.state.ids
        scores = await self.ahead.scored(ids, option_ids)
        ahead = scores is not None
        if scores is None:
            scores = await self.conn.client.score(ids, option_ids)
        self.state.count_call()
        n_tokens = sum(len(s) for s in scores)
        self.emit(model_call("SCORE", len(ids), n_tokens, started, self.index, ahead=ahead))
        means = [sum(s) / len(s) for s in scores]
        top = max(means)
        norm = top + math.log(sum(math.exp(m - top) for m in means))
        logp = [m - norm for m in means]
        best = max(range(len(options)), key=lambda i: logp[i])
        var = pending.variable
        result.variables[var] = options[best]
        result.prompt += options[best]
        self.emit(TextAppended(options[best], var, self.index))
        result.variables[f"P({var})"] = [
            (o, math.exp(lp)) for o, lp in zip(options, logp, strict=True)
        ]
        result.variables[f"log P({var})"] = list(zip(options, logp, strict=True))
        result.distribution_variable = var
        result.distribution_values = options
        self.emit(VariableFinished(var, options[best], self.index))


def _type_value(expr: str, env: dict[str, Any]) -> Any:
    """The value of a hole's type expression; None when it cannot be evaluated here."""
    text = expr.strip()
    if text in ("int", "str"):
        return {"int": int, "str": str}[text]
    try:
        return eval(text, {"__builtins__": builtins, **env})
    except Exception:
        return None


class QueryContext:
    """The object compiled queries call (`__cogql__`): the program's view of the runtime."""

    DEFAULT = DEFAULT

    def __init__(self, run: QueryRun) -> None:
        self._run = run

    async def prompt(self, index: int, values: list[Any], scope: dict[str, Any]) -> None:
        run = self._run
        stmt = run.query.statements[index]
        used = 0  # interpolated values so far
        dist_var = run.query.distribution.variable if run.query.distribution else None
        chat = False  # text right after a chat message opens starts without whitespace
        for position, seg in enumerate(stmt.segments):
            if isinstance(seg, Text):
                run.append_program_text(seg.text.lstrip() if chat else seg.text)
            elif isinstance(seg, Interpolation):
                run.append_program_text(str(values[used]))
                used += 1
            elif isinstance(seg, Tag):
                run.append_program_text(run.tag(seg.role))
                chat = run.state.chat_role == seg.role
                continue
            elif seg.name == dist_var and run.query.distribution is not None:
                run.distribution = _Pending(seg.name, dict(scope), run.query.distribution.values)
            else:
                plan = plan_after(stmt.segments[position + 1 :], dist_var, values[used:])
                await run.fill(stmt, seg, scope, plan)
            chat = False

    def value(self, name: str) -> Any:
        return self._run.variables[name]

    @property
    def context(self) -> PromptContext:
        """What `context` is in the query's code."""
        return PromptContext(self._run)

    @staticmethod
    def program_locals(names: dict[str, Any]) -> dict[str, Any]:
        """`locals()` in the query's code: its variables, less this object."""
        return {k: v for k, v in names.items() if k != RUNTIME_NAME}

    async def call(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Every call in the prompt section: a query function runs and gives its value."""
        return await call_in_query(fn, args, kwargs)

    @property
    def prompt_text(self) -> str:
        return self._run.state.text
