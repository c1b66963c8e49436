"""Nested queries as tactics (`[ANSWER: chain_of_thought]`, LMQL §9.1): a returning nested query
is a stack frame (its text leaves the prompt, its value stays), one without `return` is a macro
expansion (its text stays and is the value); arguments written in the hole or captured by name;
hole-less and method queries; the parent's model and decoder (replaying decoders included);
events; and the errors. Each result is checked against the same prompt written out flat."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import cogql
from cogql.runtime.nested import NestedQueryError
from cogql.runtime.query import InputError


@cogql.query
def chain_of_thought():
    """lmql
    "A: Let's think step by step.\n[REASONING]" where len(TOKENS(REASONING)) < 6
    "Therefore the answer is[ANSWER]" where len(TOKENS(ANSWER)) < 4
    return ANSWER.strip()
    """


@cogql.query
def items_list(n: int):
    """lmql
    for i in range(n):
        "-[ITEM]" where STOPS_AT(ITEM, "\n") and len(TOKENS(ITEM)) < 4
    """


@cogql.query
def one_of(choices: list):
    """lmql
    "Among {choices}, what do you consider most likely?[ANSWER]" where ANSWER in choices
    return ANSWER
    """


@cogql.query
def static(word: str):
    """lmql
    "ignored text"
    return word.upper()
    """


@cogql.query
def with_question(question: str):
    """lmql
    "({question})[ANSWER]" where len(TOKENS(ANSWER)) < 3
    return ANSWER
    """


QUESTION = "Q: It is August 12th, 2020. What date was it 100 days ago? "
COT_FLAT = (
    '"' + QUESTION + "A: Let's think step by step.\\n[REASONING]\" "
    "where len(TOKENS(REASONING)) < 6\n"
    '"Therefore the answer is[ANSWER]" where len(TOKENS(ANSWER)) < 4'
)


@pytest.mark.slow  # nested and flat tokenize apart; SmolLM2 answers alike
async def test_a_returning_nested_query_is_a_stack_frame() -> None:
    nested = await cogql.run(
        f'"{QUESTION}[ANSWER: chain_of_thought]\\nSo:[X]" where len(TOKENS(X)) < 3',
        chain_of_thought=chain_of_thought,
    )
    flat = await cogql.run(COT_FLAT)
    answer = flat["ANSWER"].strip()
    # the nested program ran right after the parent's prompt, as if written there
    assert nested["ANSWER"] == answer
    # its text left the prompt, the returned value took its place, and the model saw only that
    after = await cogql.run(f'"{QUESTION}{answer}\\nSo:[X]" where len(TOKENS(X)) < 3')
    assert nested.prompt == after.prompt == QUESTION + answer + "\nSo:" + nested["X"]
    assert nested["X"] == after["X"]
    assert set(nested.variables) == {"ANSWER", "X"}  # the nested query's holes stay inside


async def test_a_nested_query_without_return_is_a_macro_expansion() -> None:
    nested = await cogql.run(
        '"Things to pack:\\n[ITEMS: items_list(2)]Done[X]" where len(TOKENS(X)) < 2',
        items_list=items_list,
    )
    flat = await cogql.run(
        """
        "Things to pack:\\n"
        for i in range(2):
            "-[ITEM]" where STOPS_AT(ITEM, "\\n") and len(TOKENS(ITEM)) < 4
        "Done[X]" where len(TOKENS(X)) < 2
        """
    )
    assert nested.prompt == flat.prompt
    assert nested["ITEMS"] == flat.prompt[len("Things to pack:\n") : flat.prompt.index("Done")]
    assert nested["ITEMS"].count("-") >= 2 and nested["X"] == flat["X"]


async def test_arguments_written_in_the_hole() -> None:
    result = await cogql.run(
        "\"Q: What is the capital of France? [ANSWER: one_of(['Paris', 'London', 'Berlin'])]\"",
        one_of=one_of,
    )
    assert result["ANSWER"] in ("Paris", "London", "Berlin")
    assert result.prompt == "Q: What is the capital of France? " + result["ANSWER"]


@pytest.mark.slow  # nested and flat tokenize apart; SmolLM2 answers alike
async def test_parameters_are_captured_by_name_from_the_calling_query() -> None:
    result = await cogql.run(
        """
        question = "Is water wet?"
        "Q:[ANSWER: with_question]"
        """,
        with_question=with_question,
    )
    direct = await cogql.run('"Q:(Is water wet?)[ANSWER]" where len(TOKENS(ANSWER)) < 3')
    assert result["ANSWER"] == direct["ANSWER"]
    assert result.prompt == "Q:" + direct["ANSWER"]


async def test_a_query_without_holes_returns_at_once() -> None:
    events: list[Any] = []
    result = await cogql.run("\"Say [X: static('yes')].\"", static=static, output=events.append)
    assert result["X"] == "YES" and result.prompt == "Say YES."
    assert not [e for e in events if isinstance(e, cogql.ModelCall)]


async def test_return_none_leaves_the_text_none() -> None:
    @cogql.query
    def nothing():
        """lmql
        "scratch"
        return None
        """

    result = await cogql.run('"[X: nothing]."', nothing=nothing)
    assert result.prompt == "None." and result["X"] is None


@pytest.mark.slow  # nested and flat tokenize apart; SmolLM2 answers alike
async def test_the_documented_form_defines_the_nested_query_inside_the_program() -> None:
    # LMQL's documentation: an @lmql.query function defined in the .lmql program itself
    result = await cogql.run(
        """
        @lmql.query
        def dateformat():
            '''lmql
            "(respond in DD/MM/YYYY)[ANSWER]" where len(TOKENS(ANSWER)) < 4
            return ANSWER.strip()
            '''

        "Q: When was Obama born? [ANSWER: dateformat]\\n"
        "Q: When was Bruno Mars born? [ANSWER: dateformat]\\n"
        """
    )
    first = await cogql.run(
        '"Q: When was Obama born? (respond in DD/MM/YYYY)[A]" where len(TOKENS(A)) < 4'
    )
    assert result.prompt.startswith(f"Q: When was Obama born? {first['A'].strip()}\n")
    assert result.prompt.count("Q: ") == 2 and "respond in" not in result.prompt


async def test_a_query_method_is_a_tactic_with_self_bound() -> None:
    class Assistant:
        suffix = "!"

        @cogql.query
        def shout(self):
            """lmql
            "scratch"
            return "HEY" + self.suffix
            """

        @cogql.query
        async def ask(self):
            """lmql
            "Hello [GREETING: self.shout]"
            """

    result = await Assistant().ask()
    assert result.prompt == "Hello HEY!" and result["GREETING"] == "HEY!"


async def test_the_nested_query_runs_on_the_parents_model(tiny_model: cogql.Model) -> None:
    tiny = await cogql.run(
        f'"{QUESTION}[ANSWER: chain_of_thought]"',
        chain_of_thought=chain_of_thought,
        model=tiny_model,
    )
    flat = await cogql.run(COT_FLAT, model=tiny_model)
    assert tiny["ANSWER"] == flat["ANSWER"].strip()


async def test_sample_runs_one_nested_query_per_result(random_model: cogql.Model) -> None:
    results = await cogql.run(
        f'sample(n=2, seed=7) "{QUESTION}[ANSWER: chain_of_thought]"',
        chain_of_thought=chain_of_thought,
        model=random_model,
    )
    assert isinstance(results, list) and len(results) == 2
    for r in results:
        assert r.prompt == QUESTION + r["ANSWER"]


async def test_beam_search_replays_nested_holes(random_model: cogql.Model) -> None:
    results = await cogql.run(
        "beam(n=2) \"Q: Capital? [ANSWER: one_of(['Paris', 'Rome'])]\"",
        one_of=one_of,
        model=random_model,
    )
    assert isinstance(results, list) and len(results) == 2
    assert {r["ANSWER"] for r in results} == {"Paris", "Rome"}
    assert {r.prompt for r in results} == {"Q: Capital? Paris", "Q: Capital? Rome"}


async def test_events_label_the_nested_text_with_the_hole() -> None:
    events: list[Any] = []
    result = await cogql.run(
        f'"{QUESTION}[ANSWER: chain_of_thought]"',
        chain_of_thought=chain_of_thought,
        output=events.append,
    )
    finished = [e for e in events if isinstance(e, cogql.VariableFinished)]
    assert [(e.name, e.value) for e in finished] == [("ANSWER", result["ANSWER"])]
    nested_text = "".join(
        e.text for e in events if isinstance(e, cogql.TextAppended) and e.variable == "ANSWER"
    )
    assert nested_text.startswith("A: Let's think step by step.\n")
    assert nested_text.endswith(result["ANSWER"])  # the value, after the frame was popped
    assert len([e for e in events if isinstance(e, cogql.ModelCall)]) == 2


async def test_an_unknown_tactic_is_an_unresolved_input() -> None:
    with pytest.raises(InputError, match="no_such_query"):
        await cogql.run('"Q: [A: no_such_query]"')


async def test_a_tactic_that_fails_to_evaluate_names_the_hole() -> None:
    with pytest.raises(NestedQueryError, match=r"\[A: helpers.missing\]: .*missing") as err:
        await cogql.run('"Q: x"\n"and [@str.upper A: helpers.missing]"', helpers=object())
    assert (err.value.lineno, err.value.offset) == (2, 6)  # the hole's [, 1-based


async def test_a_nested_distribution_clause_is_refused() -> None:
    @cogql.query
    def classify():
        """lmql
        "Label:[L]" distribution L in [" a", " b"]
        """

    with pytest.raises(NestedQueryError, match="distribution"):
        await cogql.run('"Text: [X: classify]"', classify=classify)


async def test_ignored_clauses_and_outer_constraints_are_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @cogql.query
    def fixed():
        """lmql
        argmax
            "scratch"
            return "ok"
        from "local:/nowhere"
        """

    with caplog.at_level(logging.WARNING, logger="cogql.runtime"):
        result = await cogql.run('"[X: fixed]" where len(X) < 99', fixed=fixed)
    assert result.prompt == "ok"  # the nested from clause was not used: no model to load
    assert "decoder and from clauses are ignored" in caplog.text
    assert "constrains X, which a nested query fills" in caplog.text


# --------------------------------------------------------------------------- plain calls


@cogql.query
def shout(word: str):
    """lmql
    "scratch"
    return word.upper()
    """


async def test_a_query_function_called_in_prompt_code_gives_its_value(
    random_model: cogql.Model,
) -> None:
    @cogql.query
    async def exclaim(word: str):
        """lmql
        return word + "!"
        """

    async def double(x: int) -> int:
        return 2 * x

    result = await cogql.run(
        """
        words = ["a", "bb"]
        loud = [shout(w) for w in words]          # a sync query function: its value
        also = await exclaim("hi")                # an async one, awaited as written
        n = sum(len(w) for w in words)            # generator expressions stay plain Python
        twice = await double(n)                   # other coroutine functions: plain Python
        "{loud} {also} {twice}:[X]" where len(TOKENS(X)) < 2
        """,
        shout=shout,
        exclaim=exclaim,
        double=double,
        model=random_model,
    )
    assert result.prompt.startswith("['A', 'BB'] hi! 6:")


async def test_a_query_called_in_prompt_code_runs_on_its_own_model(
    random_model: cogql.Model,
) -> None:
    @cogql.query(model=random_model)
    def on_tiny():
        """lmql
        "Q:[X]" where len(TOKENS(X)) < 3
        return X
        """

    value = await cogql.run('"Start"\nreturn on_tiny()', on_tiny=on_tiny)
    assert value == await on_tiny.run()


async def test_model_generate(random_model: cogql.Model) -> None:
    text = await random_model.generate("Once upon a time", max_tokens=2)
    assert text == await cogql.generate("Once upon a time", max_tokens=2, model=random_model)
