"""Program forms (LMQL §1, §3): `@cogql.query` functions and methods with positional and keyword
arguments, `cogql.query(string)` with `is_async` / `input_variables`, `return` values and their
shapes with several results, `cogql.F` with LMQL's return shape, `generate`, and the LMQL names
under `import cogql as lmql` and `import cogql.compat as lmql`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

import cogql
from cogql.runtime.query import InputError

LIMIT = "where len(TOKENS(X)) < 3"


# --------------------------------------------------------------------------- @cogql.query


async def test_positional_keyword_and_default_arguments_bind_like_python() -> None:
    @cogql.query
    async def greet(name: str, greeting: str = "Hello", *, end: str = ":"):
        """lmql
        "{greeting}, {name}{end}[X]" where len(TOKENS(X)) < 3
        """

    assert (await greet("Ada")).prompt.startswith("Hello, Ada:")
    assert (await greet("Ada", "Hi")).prompt.startswith("Hi, Ada:")
    assert (await greet(greeting="Hey", name="Bob", end="!")).prompt.startswith("Hey, Bob!")
    with pytest.raises(InputError, match=r"greet\(\)"):
        await greet("Ada", "Hi", "!")  # `end` is keyword-only, as in Python


async def test_a_parameter_named_like_a_runtime_option_is_an_input() -> None:
    @cogql.query
    async def count(n: int):
        """lmql
        for i in range(n):
            "{i}[X]" where len(TOKENS(X)) < 2
        return i
        """

    assert await count(3) == 2 and await count(n=2) == 1


async def test_query_functions_close_over_their_scope() -> None:
    topic = "owls"  # noqa: F841 - read by the query, which Python cannot see

    def shout(s: str) -> str:
        return s.upper()

    @cogql.query
    async def fact():
        """lmql
        "A fact about {shout(topic)}:[X]" where len(TOKENS(X)) < 3
        return X
        """

    result = await fact()
    assert isinstance(result, str) and result


async def test_a_query_method_binds_self() -> None:
    class Greeter:
        def __init__(self, name: str) -> None:
            self.name = name

        @cogql.query
        async def greet(self, punctuation: str):
            """lmql
            "Hello {self.name}{punctuation}[X]" where len(TOKENS(X)) < 2
            """

    result = await Greeter("Ada").greet("!")
    assert result.prompt.startswith("Hello Ada!")
    assert Greeter.greet.name == "greet"  # on the class: the query function itself


def test_a_sync_query_method_blocks() -> None:
    class Greeter:
        @cogql.query
        def greet(self, name):
            """lmql
            "Hi {name}[X]" where len(TOKENS(X)) < 2
            """

    assert Greeter().greet("Ada").prompt.startswith("Hi Ada")


def test_query_from_a_string_with_is_async_false_blocks() -> None:
    q = cogql.query(f'"Q: {{question}}\\nA:[X]" {LIMIT}', is_async=False)
    result = q("What is 2x3?")
    assert isinstance(result, cogql.LMQLResult)
    assert result.prompt.startswith("Q: What is 2x3?\nA:")


async def test_positional_arguments_bind_alphabetically_or_by_input_variables() -> None:
    source = f'"{{b}} then {{a}}:[X]" {LIMIT}'
    alphabetical = await cogql.query(source)("first", "second")  # a="first", b="second"
    assert alphabetical.prompt.startswith("second then first:")
    ordered = await cogql.query(source, input_variables=["b", "a"])("first", "second")
    assert ordered.prompt.startswith("first then second:")
    with pytest.raises(InputError, match="2 unbound input"):
        await cogql.query(source)("only one")


def test_run_sync_binds_positional_arguments() -> None:
    result = cogql.run_sync(f'"{{a}}-{{b}}:[X]" {LIMIT}', "1", "2")
    assert result.prompt.startswith("1-2:")


# --------------------------------------------------------------------------- return values


async def test_return_values() -> None:
    value = await cogql.run(f'"Q:[X]" {LIMIT}\nreturn X.upper()')
    plain = await cogql.run(f'"Q:[X]" {LIMIT}')
    assert value == plain["X"].upper()
    assert await cogql.run(f'"Q:[X]" {LIMIT}\nreturn None') is None
    assert isinstance(await cogql.run(f'"Q:[X]" {LIMIT}\nreturn'), cogql.LMQLResult)


async def test_the_first_executed_return_wins() -> None:
    result = await cogql.run(
        """
        for i in range(5):
            "{i}:[X]" where len(TOKENS(X)) < 2
            if i == 1:
                return ("stopped", i)
        "never[Y]"
        """
    )
    assert result == ("stopped", 1)


async def test_a_query_without_holes_returns_one_value_even_when_sampling() -> None:
    assert await cogql.run('sample(n=3) "no holes here"\nreturn 42') == 42
    result = await cogql.run('sample(n=2) "no holes here"')
    assert isinstance(result, cogql.LMQLResult) and result.prompt == "no holes here"


async def test_return_values_of_several_results_form_a_list(random_model: cogql.Model) -> None:
    values = await cogql.run(
        f'sample(n=2, seed=1) "Q:[X]" {LIMIT}\nreturn len(X)', model=random_model
    )
    assert isinstance(values, list) and len(values) == 2
    assert all(isinstance(v, int) for v in values)
    single = await cogql.run(f'sample(n=1, seed=1) "Q:[X]" {LIMIT}\nreturn 7', model=random_model)
    assert single == 7


# --------------------------------------------------------------------------- cogql.F


def test_f_returns_the_value_of_its_one_hole() -> None:
    summarize = cogql.F("Summarize in a few words: {data}: [SUMMARY]", "len(TOKENS(SUMMARY)) < 4")
    value = summarize(data="LMQL is a query language for language models.")
    full = cogql.run_sync(
        '"Summarize in a few words: {data}: [SUMMARY]" where len(TOKENS(SUMMARY)) < 4',
        data="LMQL is a query language for language models.",
    )
    assert value == full["SUMMARY"]


def test_f_with_several_holes_returns_a_dict() -> None:
    pair = cogql.F("A: [A]\nB: [B]", "len(TOKENS(A)) < 2 and len(TOKENS(B)) < 2")
    values = pair()
    assert isinstance(values, dict) and set(values) == {"A", "B"}


def test_f_typed_hole_and_positional_inputs_in_alphabetical_order() -> None:
    number = cogql.F("{b} plus {a} is [N: int]", "len(TOKENS(N)) < 3")
    value = number("2", "1")  # a="2", b="1": "1 plus 2 is"
    assert isinstance(value, int)
    assert value == number(a="2", b="1")


def test_f_keeps_quotes_backslashes_and_newlines_as_written() -> None:
    text = 'He said "hi" \\o/\nReply:'
    events: list[Any] = []
    value = cogql.F(text + "[X]", "len(TOKENS(X)) < 2")(output=events.append)
    shown = "".join(e.text for e in events if isinstance(e, cogql.TextAppended))
    assert shown == text + value


async def test_f_async_and_several_results(random_model: cogql.Model) -> None:
    f = cogql.F("Q: [X]", "len(TOKENS(X)) < 3", is_async=True)
    value = await f(model=random_model)
    assert isinstance(value, str)
    values = await f(model=random_model, decoder="sample", n=2, seed=3)
    assert isinstance(values, list) and len(values) == 2 and all(isinstance(v, str) for v in values)


def test_generate_appends_at_most_max_tokens() -> None:
    events: list[Any] = []
    text = cogql.generate_sync("Once upon a time", max_tokens=3, output=events.append)
    calls = [e for e in events if isinstance(e, cogql.ModelCall)]
    assert isinstance(text, str) and text
    assert len(calls) == 1 and 1 <= calls[0].tokens <= 3


# --------------------------------------------------------------------------- compatibility

LMQL_NAMES = ("query", "run", "run_sync", "F", "model", "LLM", "score", "score_sync",
              "generate", "generate_sync", "main", "decorators", "LMQLResult",
              "printing", "silent", "headless")  # fmt: skip


@pytest.mark.parametrize("module", ["cogql", "cogql.compat"])
def test_lmql_names_exist(module: str) -> None:
    lmql = importlib.import_module(module)
    missing = [n for n in LMQL_NAMES if not hasattr(lmql, n)]
    assert not missing
    assert lmql.decorators.pre and lmql.decorators.streaming and lmql.decorators.LMQLDecorator


def test_compat_stream_is_lmqls_output_writer(capsys: pytest.CaptureFixture[str]) -> None:
    import cogql.compat as lmql

    result = lmql.run_sync(
        '"Q: Hi\\nA:[ANSWER]" where len(TOKENS(ANSWER)) < 3',
        output_writer=lmql.stream("ANSWER"),
    )
    assert capsys.readouterr().out == result["ANSWER"] + "\n"


def test_lmql_documented_example_runs_under_import_cogql_as_lmql() -> None:
    import cogql as lmql

    @lmql.query
    def chain_of_thought(question):
        """lmql
        # Q&A prompt template
        "Q: {question}\\n"
        "A: Let's think step by step.\\n"
        "[REASONING]" where len(TOKENS(REASONING)) < 4
        "Thus, the answer is:[ANSWER]." where len(TOKENS(ANSWER)) < 4

        # return just the ANSWER to the caller
        return ANSWER
        """

    answer = chain_of_thought("Today is the 12th of June, what day was it 1 week ago?")
    assert isinstance(answer, str)
    assert lmql.main(chain_of_thought, "What is 2x3?") is not None


def test_an_output_writer_must_be_callable() -> None:
    with pytest.raises(TypeError, match="output_writer="):
        cogql.run_sync(f'"Q:[X]" {LIMIT}', output_writer=object())


# --------------------------------------------------------------------------- examples

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _check_chat(r: Any) -> None:
    assert r.prompt.count("<|im_start|>assistant\n") == 2 and "((user))" not in r.prompt


def _check_decorators(r: Any) -> None:
    assert r["TEST"] == r["TEST"].upper() and isinstance(r["ANSWER"], list)
    assert r["OTHER"].startswith("PREFIX: ") and r["ITEM0"] == "A shopping cart"


def _check_nested(r: Any) -> None:
    assert "think step by step" not in r.prompt and "respond in" not in r.prompt


EXAMPLE_CHECKS = {
    "chat.lmql": _check_chat,
    "decorators.lmql": _check_decorators,
    "nested_chain_of_thought.lmql": _check_nested,
    "nested_multi_part.lmql": _check_nested,
    "nested_items_list.lmql": lambda r: r.prompt.endswith(r["ITEMS"]) and r["ITEMS"][0] == "-",
    "nested_one_of.lmql": lambda r: r["ANSWER"] in ("Paris", "London", "Berlin"),
    "return_value.lmql": lambda r: isinstance(r, str) and not any(c.isdigit() for c in r),
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_CHECKS))
def test_documentation_examples_run(name: str, random_model: cogql.Model) -> None:
    result = cogql.run_sync((EXAMPLES / name).read_text(), model=random_model)
    assert EXAMPLE_CHECKS[name](result) is not False
