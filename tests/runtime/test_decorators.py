"""Variable decorators (`[@f X]`, LMQL §9.2): post decorators change the value and the prompt
text, pre decorators fix a value without a model call, streaming decorators see the value grow,
class-based decorators hook all three, the order of several, decorator arguments, and errors.
Runs on the random model: what the text says does not matter here, only where it goes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

import cogql
from cogql.runtime.variable_decorators import DecoratorError

Q = "\"Say 'this is a test':[{deco}X]\" where len(TOKENS(X)) < 4"


@pytest.fixture(scope="module")
def plain(random_model: cogql.Model) -> cogql.LMQLResult:
    return cogql.run_sync(Q.format(deco=""), model=random_model)


async def test_a_post_decorator_replaces_value_and_prompt_text(
    random_model: cogql.Model, plain: cogql.LMQLResult
) -> None:
    def screaming(value: str) -> str:
        return value.upper()

    result = await cogql.run(Q.format(deco="@screaming "), screaming=screaming, model=random_model)
    assert result["X"] == plain["X"].upper()
    assert result.prompt == "Say 'this is a test':" + plain["X"].upper()


async def test_a_post_decorator_can_keep_the_prompt_text_and_change_the_value(
    random_model: cogql.Model, plain: cogql.LMQLResult
) -> None:
    seen: list[Any] = []

    def as_chars(value: str, prompt_value: str, context: Any) -> tuple[list[str], str]:
        seen.append((prompt_value, context.variable, context.prompt))
        return list(value), prompt_value

    result = await cogql.run(Q.format(deco="@as_chars "), as_chars=as_chars, model=random_model)
    assert result["X"] == list(plain["X"]) and result.prompt == plain.prompt
    assert seen == [(plain["X"], "X", "Say 'this is a test':")]  # the prompt before it


async def test_a_post_decorator_returning_a_non_string_puts_its_str_in_the_prompt(
    random_model: cogql.Model,
) -> None:
    result = await cogql.run(
        '"A:[@twelve X] then[Y]" where len(TOKENS(X)) < 3 and len(TOKENS(Y)) < 2',
        twelve=lambda value: 12,
        model=random_model,
    )
    assert result["X"] == 12 and result.prompt.startswith("A:12 then")
    # the program sees the value; the model saw "12", as the next hole's prompt shows
    expected = await cogql.run('"A:12 then[Y]" where len(TOKENS(Y)) < 2', model=random_model)
    assert result["Y"] == expected["Y"]


async def test_a_pre_decorator_fixes_the_value_without_a_model_call(
    random_model: cogql.Model,
) -> None:
    cache = {"ITEM0": "A shopping cart"}

    @cogql.decorators.pre
    def cached(variable: Any, context: Any) -> Any:
        return cache.get(variable.name, variable)

    events: list[Any] = []
    result = await cogql.run(
        """
        "A list:\\n-[@cached ITEM0]\\n-[@cached ITEM1]\\n-[@cached ITEM0]\\n"
        where len(TOKENS(ITEM1)) < 3
        """,
        cached=cached,
        model=random_model,
        output=events.append,
    )
    assert result["ITEM0"] == "A shopping cart"
    assert result.prompt.startswith("A list:\n-A shopping cart\n-")
    assert result.prompt.endswith("\n-A shopping cart\n")
    assert len([e for e in events if isinstance(e, cogql.ModelCall)]) == 1  # ITEM1 only


async def test_a_pre_decorator_may_fix_value_and_prompt_text_apart(
    random_model: cogql.Model,
) -> None:
    fixed = cogql.decorators.pre(lambda variable: ([1, 2], "one, two"))
    result = await cogql.run('"N:[@fixed X]"', fixed=fixed, model=random_model)
    assert result["X"] == [1, 2] and result.prompt == "N:one, two"


async def test_a_streaming_decorator_sees_the_value_grow(
    random_model: cogql.Model, plain: cogql.LMQLResult
) -> None:
    partials: list[str] = []

    @cogql.decorators.streaming
    def watch(value: str, context: Any) -> None:
        partials.append(value)

    result = await cogql.run(Q.format(deco="@watch "), watch=watch, model=random_model)
    assert result["X"] == plain["X"]
    assert partials and partials[-1] == plain["X"]
    assert all(b.startswith(a) for a, b in itertools.pairwise(partials))


async def test_several_decorators_run_pre_left_to_right_post_right_to_left(
    random_model: cogql.Model,
) -> None:
    calls: list[str] = []

    class Tracer(cogql.decorators.LMQLDecorator):
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def pre(self, variable: Any, context: Any) -> Any:
            calls.append(f"pre {self.tag}")
            return variable

        def post(self, value: Any, prompt_value: str, context: Any) -> Any:
            calls.append(f"post {self.tag}")
            return value + self.tag, prompt_value + self.tag

    result = await cogql.run(
        "\"Q:[@Tracer('a') @Tracer('b') X]\" where len(TOKENS(X)) < 2",
        Tracer=Tracer,
        model=random_model,
    )
    assert calls == ["pre a", "pre b", "post b", "post a"]
    assert result["X"].endswith("ba") and result.prompt.endswith("ba")


async def test_decorators_with_arguments(
    random_model: cogql.Model, plain: cogql.LMQLResult
) -> None:
    def prefix(text: str) -> Any:
        def decorator(value: str) -> str:
            return text + value.strip()

        return decorator

    result = await cogql.run(
        Q.format(deco="@prefix('PREFIX: ') "), prefix=prefix, model=random_model
    )
    assert result["X"] == "PREFIX: " + plain["X"].strip()


async def test_a_post_decorator_on_a_nested_query_sees_its_value(random_model: cogql.Model) -> None:
    @cogql.query
    def answer():
        """lmql
        "scratch[X]" where len(TOKENS(X)) < 2
        return "forty-two"
        """

    result = await cogql.run('"[@str.upper A: answer]"', answer=answer, model=random_model)
    assert result["A"] == "FORTY-TWO" and result.prompt == "forty-two"


async def test_a_decorator_that_is_not_callable_is_an_error(random_model: cogql.Model) -> None:
    with pytest.raises(
        DecoratorError, match=r"Not a valid decorator expression: 42 \(@nothing is not callable"
    ):
        await cogql.run('"Q:[@nothing X]"', nothing=42, model=random_model)
    with pytest.raises(DecoratorError, match=r"@broken\(\) of \[X\]"):
        await cogql.run('"Q:[@broken() X]"', broken=None, model=random_model)
