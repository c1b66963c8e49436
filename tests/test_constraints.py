"""Where constraints: compile_hole → HoleSpec, HoleSpec.finish, and the constraints' semantics
end to end on the embedded model and on a tiny random-weight model (whose text is noise, so the
constraints have to do all the work)."""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest

import cogql
from cogql.constraints.compile import ConstraintError, compile_hole
from cogql.constraints.holespec import HoleSpec, Stop, trim_at_stop
from cogql.language.errors import QueryCompileError
from cogql.tokenizer import Tokenizer


def spec(tok: Tokenizer, where: str, var: str = "X", **scope: Any) -> HoleSpec:
    return compile_hole(var, [ast.parse(where, mode="eval").body], scope, tok.encode)


# --------------------------------------------------------------------------- compile_hole


def test_unconstrained_hole(tokenizer: Tokenizer) -> None:
    s = compile_hole("X", [None], {}, tokenizer.encode)
    assert s == HoleSpec()
    assert s.grammar() is None


def test_stops_at_and_stops_before(tokenizer: Tokenizer) -> None:
    s = spec(tokenizer, 'STOPS_AT(X, ".") and STOPS_BEFORE(X, "\\n")')
    assert s.stops == [Stop(".", keep=True), Stop("\n", keep=False)]
    assert s.grammar() is None and s.max_tokens is None
    # lower-case aliases and a stop phrase from the query's scope
    assert spec(tokenizer, "stops_at(X, end)", end="###").stops == [Stop("###", keep=True)]


@pytest.mark.parametrize(
    ("where", "max_tokens", "min_tokens"),
    [
        ("len(TOKENS(X)) < 5", 4, 0),
        ("len(TOKENS(X)) <= 5", 5, 0),
        ("len(TOKENS(X)) == 3", 3, 3),
        ("len(TOKENS(X)) > 2", None, 3),
        ("len(TOKENS(X)) >= 2", None, 2),
        ("len(TOKENS(X)) > 2 and len(TOKENS(X)) < 6", 5, 3),
        ("len(TOKENS(X)) < 9 and len(TOKENS(X)) < 4", 3, 0),
        ("len(TOKENS(X)) < 1", 0, 0),
    ],
)
def test_token_length_limits(
    tokenizer: Tokenizer, where: str, max_tokens: int | None, min_tokens: int
) -> None:
    s = spec(tokenizer, where)
    assert (s.max_tokens, s.min_tokens) == (max_tokens, min_tokens)
    assert s.grammar() is None


def test_token_limit_from_scope(tokenizer: Tokenizer) -> None:
    assert spec(tokenizer, "len(TOKENS(X)) < limit + 1", limit=4).max_tokens == 4


def test_character_length(tokenizer: Tokenizer) -> None:
    s = spec(tokenizer, "len(X) < 5")
    assert s.regex == "/(?s:.{0,4})/"
    assert s.grammar() == "start: VALUE\nVALUE: /(?s:.{0,4})/"
    assert spec(tokenizer, "len(X) == 3").regex == "/(?s:.{3})/"


def test_in_options_become_token_options(tokenizer: Tokenizer) -> None:
    s = spec(tokenizer, 'X in [" yes", " no", " maybe so", " yes"]')
    assert s.token_options == [tokenizer.encode(o) for o in (" yes", " no", " maybe so")]
    assert s.regex is None
    grammar = s.grammar()
    assert grammar is not None and grammar.startswith("start: ")
    for option in s.token_options:
        assert "".join(f"<[{t}]>" for t in option) in grammar


def test_in_options_from_scope(tokenizer: Tokenizer) -> None:
    s = spec(tokenizer, "X in choices", choices=("a", "b"))
    assert s.token_options == [tokenizer.encode("a"), tokenizer.encode("b")]


def test_equality_is_a_single_option(tokenizer: Tokenizer) -> None:
    s = spec(tokenizer, 'X == " Hello there"')
    assert s.token_options == [tokenizer.encode(" Hello there")]


def test_int(tokenizer: Tokenizer) -> None:
    s = spec(tokenizer, "INT(X)")
    assert s.is_int and s.regex == "/ ?[0-9]+/"


def test_regex(tokenizer: Tokenizer) -> None:
    s = spec(tokenizer, 'REGEX(X, r"[0-9]{2}/[a-z]+")')
    assert s.regex == "/[0-9]{2}\\/[a-z]+/"  # '/' is escaped for the lark literal


def test_options_combined_with_a_language_become_one_regex(tokenizer: Tokenizer) -> None:
    s = spec(tokenizer, 'X in [" yes", " no"] and len(X) < 4')
    assert s.token_options is None
    assert s.regex == "/(?s:.{0,3})/ & /( yes| no)/"


def test_options_intersect(tokenizer: Tokenizer) -> None:
    s = spec(tokenizer, 'X in ["a", "b", "c"] and X in ["c", "b", "d"]')
    assert s.token_options == [tokenizer.encode("b"), tokenizer.encode("c")]


def test_combination_of_everything(tokenizer: Tokenizer) -> None:
    s = spec(tokenizer, 'INT(X) and len(TOKENS(X)) < 4 and STOPS_BEFORE(X, " ")')
    assert s.is_int and s.regex == "/ ?[0-9]+/"
    assert s.max_tokens == 3 and s.stops == [Stop(" ", keep=False)]


def test_constraints_on_other_variables_are_skipped(tokenizer: Tokenizer) -> None:
    s = spec(tokenizer, 'len(TOKENS(Y)) < 3 and STOPS_AT(X, ".") and Y in ["a"]')
    assert s == HoleSpec(stops=[Stop(".", keep=True)])


def test_global_and_inline_clauses_combine(tokenizer: Tokenizer) -> None:
    clauses = [ast.parse(w, mode="eval").body for w in ("len(TOKENS(X)) < 7", 'STOPS_AT(X, ",")')]
    s = compile_hole("X", [None, *clauses], {}, tokenizer.encode)
    assert s.max_tokens == 6 and s.stops == [Stop(",", keep=True)]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ('X != "a"', "operator NotEq is not supported"),
        ("len(TOKENS(X)) != 3", "operator NotEq is not supported"),
        ('not X in ["a"] and X is None', "operator Is is not supported"),
        ('X not in ["a"]', "operator NotIn is not supported"),
        ("0 < len(TOKENS(X)) < 3", "chained comparisons"),
        ('STOPS_AT(X, "")', "non-empty string stop phrase"),
        ('STOPS_AT("x", X)', "expects the variable as its first argument"),
        ('X in "abc"', "needs a list of strings"),
        ("len(TOKENS(X)) < undefined_limit", "name 'undefined_limit' is not defined"),
        ("FOO(X)", "unknown constraint function FOO()"),
    ],
)
def test_unsupported_constraints_are_errors(tokenizer: Tokenizer, where: str, message: str) -> None:
    with pytest.raises(ConstraintError, match=re.escape(message)):
        spec(tokenizer, where)


def test_constraint_error_is_a_compile_error_with_a_position(tokenizer: Tokenizer) -> None:
    node = ast.parse('STOPS_AT(X, ".") and X != "a"', mode="eval").body
    with pytest.raises(QueryCompileError) as err:
        compile_hole("X", [node], {}, tokenizer.encode, source='STOPS_AT(X, ".") and X != "a"')
    assert (err.value.lineno, err.value.offset) == (1, 22)


def test_not_equal_in_a_query_points_at_the_comparison() -> None:
    with pytest.raises(ConstraintError, match="NotEq") as err:
        cogql.run_sync('argmax\n    "Q: hi\\nA:[A]"\nwhere len(TOKENS(A)) < 3 and A != "x"')
    assert (err.value.lineno, err.value.offset) == (3, len("where len(TOKENS(A)) < 3 and ") + 1)


# --------------------------------------------------------------------------- HoleSpec.finish


def test_finish_without_constraints_keeps_the_raw_text() -> None:
    assert HoleSpec().finish("  raw text\n") == ("  raw text\n", "  raw text\n")


def test_stops_at_keeps_the_phrase() -> None:
    assert HoleSpec(stops=[Stop(".", keep=True)]).finish("abc. def") == ("abc.", "abc.")


def test_stops_before_drops_the_phrase() -> None:
    assert HoleSpec(stops=[Stop(" w", keep=False)]).finish("Hello world") == ("Hello", "Hello")


def test_stop_not_found_keeps_everything() -> None:
    assert HoleSpec(stops=[Stop("###", keep=True)]).finish("abc") == ("abc", "abc")


def test_earliest_stop_wins() -> None:
    stops = [Stop(",", keep=True), Stop(".", keep=False)]
    assert trim_at_stop("ab., cd", stops) == "ab"
    assert trim_at_stop("a,b.c", stops) == "a,"
    assert trim_at_stop("xyz", stops) == "xyz"


def test_stops_before_min_tokens_are_ignored() -> None:
    s = HoleSpec(stops=[Stop(",", keep=True)], min_tokens=5)
    # the first comma ended inside the inactive prefix (first 6 characters); the next one counts
    assert s.finish(" pear, pear, pear", stops_from=6) == (" pear, pear,", " pear, pear,")
    # an occurrence that straddles the boundary counts
    assert trim_at_stop("ab## cd", [Stop("##", keep=False)], start=3) == "ab"


def test_int_converts_and_cleans_the_prompt_text() -> None:
    s = HoleSpec(is_int=True)
    assert s.finish(" 42") == (42, "42")
    assert s.finish("007") == (7, "7")


def test_int_after_stop_trimming() -> None:
    s = HoleSpec(is_int=True, stops=[Stop(" ", keep=False)])
    assert s.finish("12 apples and 3") == (12, "12")


# --------------------------------------------------------------------------- embedded model

QUESTION = r"Q: Name three fruits, separated by commas.\nA:"  # as written in a query


def run(query: str, **kwargs: Any) -> cogql.LMQLResult:
    result = cogql.run_sync(query, **kwargs)
    assert isinstance(result, cogql.LMQLResult)
    return result


def generated_tokens(query: str, **kwargs: Any) -> list[int]:
    """Tokens each GENERATE produced, from the ModelCall events of one run."""
    calls: list[int] = []

    def on_event(event: cogql.QueryEvent) -> None:
        if isinstance(event, cogql.ModelCall) and event.kind == "GENERATE":
            calls.append(event.tokens)

    run(query, output=on_event, **kwargs)
    return calls


@pytest.mark.parametrize(("op", "n", "most", "least"), [("<", 4, 3, 0), ("<=", 2, 2, 0)])
def test_token_upper_bound(tokenizer: Tokenizer, op: str, n: int, most: int, least: int) -> None:
    r = run(f'argmax "{QUESTION}[A]" where len(TOKENS(A)) {op} {n}')
    assert least <= len(tokenizer.encode(r["A"])) <= most
    assert r.prompt == QUESTION.replace("\\n", "\n") + r["A"]


def test_token_exact_and_lower_bounds(tokenizer: Tokenizer) -> None:
    query = f'argmax "{QUESTION}[A]" where len(TOKENS(A)) == 3'
    assert generated_tokens(query) == [3]
    query = 'argmax "Say nothing.[A]" where len(TOKENS(A)) > 3 and len(TOKENS(A)) < 6'
    [count] = generated_tokens(query)
    assert 4 <= count <= 5


def test_character_length_bound() -> None:
    r = run(f'argmax "{QUESTION}[A]" where len(A) < 9')
    assert 0 < len(r["A"]) < 9


def test_in_options_keep_their_leading_space() -> None:
    options = [" yes", " no", " maybe so"]
    r = run('argmax "Q: Is water wet?\\nA:[A]" where A in OPTIONS', OPTIONS=options)
    assert r["A"] in options
    assert r.prompt == "Q: Is water wet?\nA:" + r["A"]


def test_options_without_space_are_glued_to_the_prompt() -> None:
    r = run('argmax "Sentiment:[S]" where S in ["positive", "negative"]')
    assert r["S"] in ("positive", "negative")
    assert r.prompt == "Sentiment:" + r["S"]


def test_equality_forces_the_text() -> None:
    r = run('argmax "Q: Say hi.\\nA:[A]" where A == " Goodbye, cruel world"')
    assert r["A"] == " Goodbye, cruel world"


def test_options_combined_with_length() -> None:
    r = run('argmax "Q: Is water wet?\\nA:[A]" where A in [" yes", " no", " maybe"] and len(A) < 4')
    assert r["A"] == " no"


def test_int_gives_an_int() -> None:
    r = run(
        'argmax "Q: How many legs does a cat have?\\nA:[N]" where INT(N) and len(TOKENS(N)) < 4'
    )
    assert isinstance(r["N"], int)
    assert r.prompt.endswith(":" + str(r["N"]))


def test_int_type_annotation() -> None:
    r = run('argmax "Q: What is 2+2?\\nA:[N: int]" where len(TOKENS(N)) < 4')
    assert isinstance(r["N"], int)


def test_int_value_is_usable_in_python() -> None:
    result = cogql.run_sync(
        'argmax\n    "Q: What is 2+2?\\nA:[N: int]" where len(TOKENS(N)) < 3\n    return N + 1'
    )
    assert isinstance(result, int)


@pytest.mark.parametrize("pattern", [r"[0-9]{2}/[0-9]{2}", r"(red|green|blue) [a-z]{1,4}"])
def test_regex_fullmatch(pattern: str) -> None:
    r = run(f'argmax "Date or colour: [D]" where REGEX(D, r"{pattern}")')
    assert re.fullmatch(pattern, r["D"])


def test_regex_type_annotation() -> None:
    r = run("argmax \"Code: [C: r'[A-Z]{3}-[0-9]']\"")
    assert re.fullmatch(r"[A-Z]{3}-[0-9]", r["C"])


LIST = "Fruits: apple, banana, cherry,"


def test_stops_at_keeps_the_phrase_end_to_end() -> None:
    r = run(f'argmax "{LIST}[A]" where STOPS_AT(A, ",") and len(TOKENS(A)) < 10')
    assert r["A"].endswith(",") and r["A"].count(",") == 1
    assert r.prompt == LIST + r["A"]


def test_stops_before_drops_the_phrase_end_to_end() -> None:
    r = run(f'argmax "{LIST}[A]" where STOPS_BEFORE(A, ",") and len(TOKENS(A)) < 10')
    assert r["A"] and "," not in r["A"]
    assert r.prompt == LIST + r["A"]


def test_stop_generates_nothing_after_the_phrase(tokenizer: Tokenizer) -> None:
    query = f'argmax "{LIST}[A]" where STOPS_AT(A, ",") and len(TOKENS(A)) < 10'
    [count] = generated_tokens(query)
    value = run(query)["A"]
    assert count == len(tokenizer.encode(value))


def test_stops_are_inactive_before_min_tokens() -> None:
    # LMQL: a stop phrase is ignored while a sibling `len(TOKENS(X)) > N` is still false
    r = run(
        f'argmax "{LIST}[A]" where STOPS_AT(A, ",") and len(TOKENS(A)) > 4 and len(TOKENS(A)) < 12'
    )
    assert r["A"].endswith(",")
    assert r["A"].count(",") >= 2


def test_global_where_applies_to_every_hole_with_the_name() -> None:
    r = run(
        'argmax\n    "A:[X]"\n    " B:[X]"\n    " C:[Y]"\nwhere X in [" one", " two"] and len(TOKENS(Y)) < 3'
    )
    assert r.prompt.startswith("A:")
    first = r.prompt[2 : r.prompt.index(" B:")]
    assert first in (" one", " two") and r["X"] in (" one", " two")


def test_inline_where_applies_only_to_its_string() -> None:
    # if the first string's constraint leaked into the second, no option would be left
    r = run('argmax\n    "A:[X]" where X in [" yes"]\n    " B:[X]" where X in [" no"]\n')
    assert r.prompt == "A: yes B: no"
    assert r["X"] == " no"  # variables keep the last value of a reused name


# --------------------------------------------------------------------------- random model


def tiny(query: str, model: cogql.Model) -> cogql.LMQLResult:
    return run(query, model=model)


def test_random_model_token_limit(tiny_model: cogql.Model) -> None:
    calls = generated_tokens('argmax "Hello[A]" where len(TOKENS(A)) < 6', model=tiny_model)
    assert calls == [5]  # a random model rarely says EOS: the limit is what ends the hole
    r = tiny('argmax "Hello[A]" where len(TOKENS(A)) < 6', tiny_model)
    # noise does not re-tokenize canonically, so compare against the decoded 5 tokens instead
    assert r["A"] and r.prompt == "Hello" + r["A"]


def test_random_model_exact_tokens(tiny_model: cogql.Model) -> None:
    calls = generated_tokens('argmax "Hello[A]" where len(TOKENS(A)) == 2', model=tiny_model)
    assert calls == [2]


def test_random_model_in_options(tiny_model: cogql.Model) -> None:
    options = [" alpha beta", " gamma", " delta epsilon zeta"]
    r = run('argmax "Pick:[A]" where A in OPTIONS', model=tiny_model, OPTIONS=options)
    assert r["A"] in options


def test_random_model_equality(tiny_model: cogql.Model) -> None:
    r = tiny('argmax "Say:[A]" where A == " exactly this, nothing else"', tiny_model)
    assert r["A"] == " exactly this, nothing else"


def test_random_model_int(tiny_model: cogql.Model) -> None:
    r = tiny('argmax "Number:[N]" where INT(N) and len(TOKENS(N)) < 5', tiny_model)
    assert isinstance(r["N"], int)
    assert r.prompt == "Number:" + str(r["N"])


@pytest.mark.parametrize("pattern", [r"[0-9]{2}/[0-9]{2}", r"[a-c]{2}-(x|yz)"])
def test_random_model_regex(tiny_model: cogql.Model, pattern: str) -> None:
    r = tiny(f'argmax "Code:[D]" where REGEX(D, r"{pattern}")', tiny_model)
    assert re.fullmatch(pattern, r["D"])


def test_random_model_character_length(tiny_model: cogql.Model) -> None:
    r = tiny('argmax "Hello[A]" where len(A) < 7', tiny_model)
    assert len(r["A"]) < 7


def test_random_model_stops_at(tiny_model: cogql.Model) -> None:
    r = tiny('argmax "Hello[A]" where STOPS_AT(A, " ") and len(TOKENS(A)) < 12', tiny_model)
    value = r["A"]
    # the phrase, if generated, is the value's end and occurs only there
    assert value.find(" ") in (-1, len(value) - 1)


def test_random_model_stops_before(tiny_model: cogql.Model) -> None:
    r = tiny('argmax "Hello[A]" where STOPS_BEFORE(A, "e") and len(TOKENS(A)) < 12', tiny_model)
    assert "e" not in r["A"]
    assert r.prompt == "Hello" + r["A"]


def test_random_model_combined(tiny_model: cogql.Model) -> None:
    r = tiny(
        'argmax "Hello[A]" where REGEX(A, r"[a-z ]+") and len(A) < 12 and len(TOKENS(A)) < 8',
        tiny_model,
    )
    assert re.fullmatch(r"[a-z ]+", r["A"]) and len(r["A"]) < 12
