"""Variable decorators (`[@f X]`): hooks before, during and after a hole is generated (LMQL §9.2).

A plain callable is a *post* decorator: it sees the finished value and may replace the value
and the text the prompt keeps. `@cogql.decorators.pre` functions run before generation and may
fix the value so that the model is not asked at all (a cache, say); `@cogql.decorators.streaming`
functions see the partial value as tokens arrive. A subclass of `LMQLDecorator` can hook all
three. With several decorators `pre` runs left to right (the first that fixes a value wins), and
`stream` and `post` right to left, like nested function decorators in Python.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import QueryError


class DecoratorError(QueryError, TypeError):
    """A decorator expression that does not evaluate to something usable as a decorator."""


@dataclass(frozen=True)
class TemplateVariable:
    """What a pre decorator receives: the hole about to be generated (LMQL's name)."""

    name: str
    type_expr: str | None = None


@dataclass
class DecoratorContext:
    """The program state a decorator may look at: the prompt so far and the variables."""

    variable: str
    prompt: str
    variables: dict[str, Any] = field(default_factory=dict)

    @property
    def variable_values(self) -> dict[str, Any]:
        """LMQL's ProgramState spelling of `variables`."""
        return self.variables


class LMQLDecorator:
    """Base class of decorators that hook more than one stage; override what you need."""

    def pre(self, variable: TemplateVariable, context: DecoratorContext) -> Any:
        """Return `variable` to generate as usual, or a value (or `(value, prompt_text)`) to
        use instead of generating."""
        return variable

    def stream(self, value: str, context: DecoratorContext) -> Any:
        """Called with the partial value as it grows; the result goes to the next decorator."""
        return value

    def post(self, value: Any, prompt_value: str, context: DecoratorContext) -> Any:
        """Return `(value, prompt_value)`, a new value (its prompt text is `str(value)`), or
        None to keep both."""
        return value, prompt_value


def _arity(fn: Callable[..., Any]) -> int:
    try:
        return len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins without a signature: one argument
        return 1


class pre(LMQLDecorator):  # LMQL spells it `@lmql.decorators.pre`
    """Marks `fn(variable)` or `fn(variable, context)` as a pre-generation decorator."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.arity = _arity(fn)

    def pre(self, variable: TemplateVariable, context: DecoratorContext) -> Any:
        return self.fn(variable) if self.arity == 1 else self.fn(variable, context)


class streaming(LMQLDecorator):  # LMQL: `@lmql.decorators.streaming`
    """Marks `fn(partial_value)` or `fn(partial_value, context)` as a streaming decorator."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.arity = _arity(fn)

    def stream(self, value: str, context: DecoratorContext) -> Any:
        out = self.fn(value) if self.arity == 1 else self.fn(value, context)
        return value if out is None else out


class _Post(LMQLDecorator):
    """A plain callable used as a decorator: `fn(value)` or `fn(value, prompt_value, context)`."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.arity = _arity(fn)

    def post(self, value: Any, prompt_value: str, context: DecoratorContext) -> Any:
        if self.arity == 1:
            return self.fn(value)
        return self.fn(value, prompt_value, context)


def wrap(obj: Any, expr: str = "") -> LMQLDecorator:
    if isinstance(obj, LMQLDecorator):
        return obj
    if callable(obj):
        return _Post(obj)
    label = expr or repr(obj)
    raise DecoratorError(f"Not a valid decorator expression: {obj!r} (@{label} is not callable)")


def _as_pair(out: Any, value: Any, prompt_value: str) -> tuple[Any, str]:
    if out is None:
        return value, prompt_value
    if isinstance(out, tuple) and len(out) == 2:
        return out[0], str(out[1])
    return out, str(out)


class HoleDecorators:
    """The decorators of one hole, evaluated in the query's scope."""

    def __init__(self, decorators: list[LMQLDecorator]) -> None:
        self.decorators = decorators

    @classmethod
    def of(cls, name: str, exprs: tuple[str, ...], env: dict[str, Any]) -> HoleDecorators | None:
        if not exprs:
            return None
        found = []
        for expr in exprs:
            try:
                obj = eval(compile(expr, "<decorator>", "eval"), env)
            except Exception as e:
                raise DecoratorError(f"decorator @{expr} of [{name}]: {e}") from e
            found.append(wrap(obj, expr))
        return cls(found)

    def pre(self, variable: TemplateVariable, context: DecoratorContext) -> tuple[Any, str] | None:
        """A fixed `(value, prompt_text)`, or None to generate the hole."""
        for d in self.decorators:
            out = d.pre(variable, context)
            if out is not variable:
                return _as_pair(out, None, "") if out is not None else (None, "None")
        return None

    @property
    def streams(self) -> bool:
        """Whether any of them hooks the stream (the others' `stream` changes nothing)."""
        return any(type(d).stream is not LMQLDecorator.stream for d in self.decorators)

    def stream(self, value: str, context: DecoratorContext) -> None:
        for d in reversed(self.decorators):
            value = d.stream(value, context)

    def post(self, value: Any, prompt_value: str, context: DecoratorContext) -> tuple[Any, str]:
        for d in reversed(self.decorators):
            value, prompt_value = _as_pair(
                d.post(value, prompt_value, context), value, prompt_value
            )
        return value, prompt_value
