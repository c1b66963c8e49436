"""LMQL 0.7.3's query semantics, each checked against the LMQL peer while it was written:
`context` in query code, LMQL's scoping (inputs are locals, prologue names globals),
`result[0]`, LMQL's exception types and messages, a value forced by `==` that holds a
STOPS_BEFORE phrase, and the streaming-decorator call pattern."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

import cogql
import cogql.compat as lmql
from cogql.constraints.values import ConstraintError
from cogql.language.errors import QueryCompileError
from cogql.runtime.events import ModelCall, QueryEvent

# ---------------------------------------------------------------------------------- context


async def test_context_prompt_and_variables_in_query_code(random_model: cogql.Model) -> None:
    seen: dict[str, Any] = {}

    @lmql.query(model=random_model)
    async def q(name):
        """lmql
        argmax
            "Hi {name}:[X]"
            seen["prompt"] = context.prompt
            seen["vars"] = context.variables
            seen["X"] = context.get_var("X")
            def later():
                return context.prompt
            "!"
            seen["later"] = later()
            seen["calls"] = context.num_calls
        where
            len(TOKENS(X)) < 3
        """

    result = await q("Ann")
    x = result.variables["X"]
    assert seen["prompt"] == "Hi Ann:" + x
    assert seen["vars"] == {"X": x} and seen["X"] == x
    assert seen["later"] == "Hi Ann:" + x + "!"  # a function defined in the query reads it too
    assert seen["calls"] == 1


async def test_context_score_scores_continuations_of_the_prompt(random_model: cogql.Model) -> None:
    """`context.score(values)` uses the query's model, awaited or not (LMQL awaits calls)."""
    result = await cogql.run(
        """
        "The answer is"
        plain = context.score([" yes", " no"])
        awaited = await context.score([" yes", " no"])
        return plain, awaited
        """,
        model=random_model,
    )
    plain, awaited = result
    assert isinstance(plain, cogql.ScoringResult) and plain.prompt == "The answer is"
    assert plain.continuations == [" yes", " no"]
    assert list(plain.scores()) == list(awaited.scores())
    direct = await cogql.score("The answer is", [" yes", " no"], model=random_model)
    assert list(plain.scores()) == pytest.approx(list(direct.scores()), abs=1e-4)


async def test_a_function_with_its_own_context_parameter_keeps_it(
    random_model: cogql.Model,
) -> None:
    result = await cogql.run(
        """
        def f(value, context):
            return context
        return f(1, "mine")
        """,
        model=random_model,
    )
    assert result == "mine"


# ---------------------------------------------------------------------------------- scoping


async def test_prologue_names_are_globals_and_inputs_locals(random_model: cogql.Model) -> None:
    """LMQL's test_scoping: what the prologue defines is global, an input is local."""
    report: dict[str, Any] = {}

    @lmql.query(model=random_model)
    async def q(actual_input: str = "x"):
        """lmql
        a = 12
        def f(): return a + 1
        class A: pass
        argmax
            "Q: Hi {actual_input} {a}{f()}"
            for name in ["A", "a", "f"]:
                report[name] = (locals().get(name), globals().get(name) is not None)
            report["input"] = ("actual_input" in locals(), "actual_input" in globals())
            report["locals"] = sorted(locals())
        """

    result = await q()
    assert result.prompt == "Q: Hi x 1213"
    assert report["A"] == report["a"] == report["f"] == (None, True)
    assert report["input"] == (True, False)
    assert "__cogql__" not in report["locals"]


async def test_helper_functions_see_names_as_lmql_scopes_them(random_model: cogql.Model) -> None:
    """A helper defined in the prompt section reads inputs through its closure; one defined in
    the prologue reads prologue globals but not inputs (they are parameters of the program)."""
    result = await cogql.run(
        """
        base = 10
        def from_prologue():
            return base
        def reads_input():
            return x
        argmax
            def from_body():
                return x + base
            try:
                reads_input()
                prologue_sees_input = True
            except NameError:
                prologue_sees_input = False
            return from_prologue(), from_body(), prologue_sees_input
        """,
        x=5,
        model=random_model,
    )
    assert result == (10, 15, False)


async def test_the_prologue_runs_once_per_query_function(random_model: cogql.Model) -> None:
    """LMQL runs the prologue once, as module code; its globals live on between calls."""
    runs: list[int] = []

    @lmql.query(model=random_model)
    async def q():
        """lmql
        runs.append(1)
        history = []
        argmax
            history.append(len(history))
            return list(history)
        """

    assert await q() == [0]
    assert await q() == [0, 1]
    assert runs == [1]


async def test_a_parameterless_query_function_takes_free_variables_by_keyword(
    random_model: cogql.Model,
) -> None:
    """LMQL's `def q():` whose query reads `s` is called as `q(s=...)`."""

    @lmql.query(model=random_model)
    async def q():
        """lmql
        argmax
            return s * 2
        """

    assert await q(s=21) == 42
    with pytest.raises(TypeError, match="unexpected keyword argument 't'"):
        await q(s=1, t=2)


# ---------------------------------------------------------------------------------- result[0]


async def test_result_zero_is_the_result_with_a_deprecation_warning(
    random_model: cogql.Model,
) -> None:
    result = await cogql.run('"Hi[X]" where len(TOKENS(X)) < 2', model=random_model)
    with pytest.warns(DeprecationWarning, match=r"Deprecated result\[0\] access"):
        assert result[0] is result
    assert result["X"] == result.variables["X"]
    with pytest.raises(KeyError):
        result[1]


# ---------------------------------------------------------------------------------- errors


async def test_unresolved_inputs_are_lmqls_type_error(random_model: cogql.Model) -> None:
    with pytest.raises(TypeError, match=r"Failed to resolve variable 's' in LMQL query\."):
        await cogql.run("argmax\n    return s", model=random_model)
    with pytest.raises(TypeError, match=r"Failed to resolve variables in LMQL query: 'a', 'b'"):
        await cogql.run("argmax\n    return b, a", model=random_model)


async def test_unresolved_where_names_are_type_errors_with_a_position(
    random_model: cogql.Model,
) -> None:
    """LMQL's test_var_errors: holes named only in the where clause."""

    @lmql.query(model=random_model)
    async def positional_only(s: str):
        """lmql
        argmax
            return s
        where
            STOPS_AT(ANSWER, "test") and STOPS_AT(OTHER, "test")
        """

    with pytest.raises(TypeError) as info:
        await positional_only("test")
    e = info.value
    assert "Failed to resolve variables in LMQL query: 'ANSWER', 'OTHER'" in str(e)
    assert isinstance(e, QueryCompileError) and (e.lineno, e.offset) == (4, 14)


async def test_an_unknown_where_function_is_a_type_error(random_model: cogql.Model) -> None:
    with pytest.raises(TypeError, match="Failed to resolve variable 'FOO' in LMQL query"):
        await cogql.run('"x [X]" where FOO(X)', model=random_model)


async def test_unsupported_where_forms_are_assertion_errors(random_model: cogql.Model) -> None:
    with pytest.raises(AssertionError) as info:
        await cogql.run('"x [X]" where 1 < len(TOKENS(X)) < 3', model=random_model)
    assert isinstance(info.value, ConstraintError)


async def test_a_bad_hole_type_is_a_type_error(random_model: cogql.Model) -> None:
    with pytest.raises(TypeError, match="Not a valid type expression or tactic annotation '12'"):
        await cogql.run('"x [X: t]" where len(TOKENS(X)) < 3', t=12, model=random_model)


async def test_a_synchronous_call_inside_a_loop_has_lmqls_message() -> None:
    with pytest.raises(RuntimeError, match="LMQL queries cannot be called synchronously"):
        cogql.run_sync('"Hi"')


# ---------------------------------------------------------------------------------- forced values


@pytest.mark.parametrize(
    ("where", "value"),
    [
        # LMQL's test_stop_overlapping_before, with one and with several STOPS_BEFORE phrases
        ("""X == 'abc",' and STOPS_BEFORE(X, '"')""", "abc"),
        (
            """STOPS_BEFORE(X, ',') and STOPS_BEFORE(X, '"') and STOPS_BEFORE(X, ']') """
            """and len(TOKENS(X)) < 10 and X == 'abc",'""",
            "abc",
        ),
        ("""X == 'abc",' and STOPS_AT(X, '"')""", 'abc"'),
        # a phrase that only an earlier token of the value holds does not cut it (as in LMQL)
        ("""X == 'abc",' and STOPS_AT(X, 'c')""", 'abc",'),
    ],
)
async def test_a_forced_value_is_cut_at_its_stop_phrase(
    random_model: cogql.Model, where: str, value: str
) -> None:
    result = await cogql.run(f"""argmax\n    'x: "[X] and' where {where}""", model=random_model)
    assert result.variables["X"] == value
    assert result.prompt == f'x: "{value} and'


# ---------------------------------------------------------------------------------- streaming


async def test_streaming_decorators_follow_lmqls_call_pattern(random_model: cogql.Model) -> None:
    """LMQL's test_streaming_decorator: '' twice, the raw text after every token, then the
    whole text once more (a STOPS_BEFORE phrase is still in it)."""
    partials: list[str] = []
    calls: list[ModelCall] = []

    @lmql.decorators.streaming
    def watch(value: str, context: Any) -> None:
        partials.append(value)

    def on_event(event: QueryEvent) -> None:
        if isinstance(event, ModelCall):
            calls.append(event)

    result = await cogql.run(
        '"Say:[@watch X]" where STOPS_BEFORE(X, "e") and len(TOKENS(X)) < 8',
        watch=watch,
        model=random_model,
        output=on_event,
    )
    (call,) = calls
    assert partials[:2] == ["", ""]
    assert len(partials) == call.tokens + 3
    assert all(b.startswith(a) for a, b in itertools.pairwise(partials[2:-1]))
    assert partials[-1] == partials[-2]
    assert partials[-1].startswith(result.variables["X"])


async def test_f_strings_in_query_code_are_pythons_own() -> None:
    """An f-string in an expression (an assert message, an assignment) is evaluated by Python,
    as in LMQL 0.7.3; only a plain string standing as a statement is a prompt (cogql also takes
    an f-string standing as a statement as one, which LMQL evaluates and drops)."""
    model = cogql.model("random", seed=4)
    query = """
        argmax
            n = 7
            label = f"n={n:03d}|{n!r}|{{n}}"
            "Count {n}."
            f"Then {n * 2}. [X]" where len(TOKENS(X)) < 2
            try:
                assert False, f"at {context.prompt[:6]!r} with {n}"
            except AssertionError as e:
                message = str(e)
            return label, message, context.prompt.startswith("Count 7.Then 14. ")
        """
    label, message, prompted = await cogql.run(query, model=model)
    assert label == "n=007|7|{n}"
    assert message == "at 'Count ' with 7"
    assert prompted


async def test_names_bound_by_except_and_match_are_not_inputs() -> None:
    """`except E as e`, `case {"k": v, **rest}` and `case [h, *t]` define names in query code,
    as assignments do, so they are no inputs to resolve (LMQL 0.7.3 runs such code)."""
    query = """
        argmax
            try:
                int("x")
            except ValueError as err:
                kind = type(err).__name__
            match {"k": 1, "j": 2}:
                case {"k": v, **rest}:
                    pass
            match [1, 2, 3]:
                case [h, *t]:
                    pass
            return kind, v, rest, h, t
        """
    assert await cogql.run(query, model=cogql.model("random", seed=1)) == (
        "ValueError",
        1,
        {"j": 2},
        1,
        [2, 3],
    )


async def test_lmql_in_query_code_is_the_compat_surface(random_model: cogql.Model) -> None:
    """Query code's `lmql` is LMQL's whole API (cogql.compat), `lmql.tokenizer` included, even
    when the query was defined where `lmql` is not imported."""
    result = await cogql.run(
        """
        argmax
            return lmql.tokenizer is cogql.compat.tokenizer, lmql.F is cogql.compat.F
        """,
        model=random_model,
    )
    assert result == (True, True)
