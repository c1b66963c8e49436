"""User mistakes get a specific message that points at the query's line and column: unknown
decoders (also on the prompt's line), bad decoder arguments, malformed holes, unterminated
strings, `{expr}` interpolations that raise or read a missing input, unknown hole types (before
any model call), where clauses that call unknown functions or name variables no hole fills,
constraints cogql rejects, and `max_len` (a warning and a truncated result, where LMQL fails an
assertion)."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

import cogql
from cogql.constraints.compile import ConstraintError
from cogql.language.compiler import compile_query
from cogql.language.errors import HoleTypeError, QueryCompileError, QuerySyntaxError
from cogql.runtime.interpolations import InterpolationError
from cogql.runtime.query import DecoderError, InputError, MissingInputError
from cogql.tokenizer import Tokenizer


def compile_error(source: str) -> QuerySyntaxError:
    with pytest.raises(QuerySyntaxError) as err:
        compile_query(source)
    return err.value


def run_error(source: str, kind: type[Exception] = QuerySyntaxError, **kw: Any) -> Any:
    with pytest.raises(kind) as err:
        cogql.run_sync(source, **kw)
    return err.value


def at(error: QuerySyntaxError) -> tuple[int, int]:
    """(line, column), both 1-based, as the message shows them."""
    assert error.offset is not None
    assert f"(line {error.lineno}, column {error.offset})" in str(error)
    return error.lineno, error.offset


# --------------------------------------------------------------------------- decoders


def test_unknown_decoder_name() -> None:
    e = compile_error('beam_foo\n    "Hello [X]"')
    assert "unknown decoder 'beam_foo'" in e.message
    assert at(e) == (1, 1)
    e = compile_error('  samlpe(n=2)\n      "Hello [X]"')  # a typo gets a suggestion
    assert "did you mean sample?" in e.message and at(e) == (1, 1)


def test_unknown_decoder_on_the_prompt_line() -> None:
    e = compile_error('argmx "Hello [X]"')
    assert "unknown decoder 'argmx'" in e.message and "did you mean argmax?" in e.message
    assert at(e) == (1, 1)
    e = compile_error('import re\nsampel(n=2) "Hello [X]" where len(TOKENS(X)) < 3')
    assert "unknown decoder 'sampel'" in e.message and "did you mean sample?" in e.message
    assert at(e) == (2, 1)
    e = compile_error('argmax\n    x = 1\n    foo "Hello [X]"')  # in the body: no decoder
    assert "decoder" not in e.message and at(e) == (3, 9)


def test_decoder_cogql_does_not_run() -> None:
    e = run_error('var\n    "Hello [X]"', DecoderError)
    assert "decoder 'var' is not supported" in str(e)
    assert isinstance(e, QuerySyntaxError) and at(e) == (1, 1)


def test_unknown_decoder_given_at_call_time() -> None:
    e = run_error('"Hello [X]"', DecoderError, decoder="foo")
    assert "decoder 'foo' is not supported" in str(e)
    assert not isinstance(e, QuerySyntaxError)  # nothing in the query to point at


@pytest.mark.parametrize(
    ("clause", "message", "column"),
    [
        ("argmax(n=2, bogus=0.5)", "Unknown decoder argument: bogus", 13),
        ("sample(n=1, temperature=-1)", "temperature", 13),
        ("argmax(temperature=0.5)", "Unknown decoder argument: temperature", 8),
    ],
)
def test_bad_decoder_argument(clause: str, message: str, column: int) -> None:
    e = run_error(f'{clause}\n    "Hello [X]"', DecoderError)
    assert message in str(e) and isinstance(e, QuerySyntaxError)
    assert at(e) == (1, column)


# --------------------------------------------------------------------------- prompt strings


@pytest.mark.parametrize(
    ("source", "message", "position"),
    [
        ('argmax\n    "Hello [1abc] there"', "malformed hole [1abc]: expected a variable", (2, 12)),
        ('"A: [X Y] b"', "per-variable decoders ([decoder VAR]) are not supported", (1, 5)),
        ('"one"\n"two [X: ] b"', "expected a type after ':'", (2, 6)),
        ('argmax\n    "ok"\n    "Hello [X there"', "unclosed '[' in prompt string", (3, 12)),
        ('"A {} b [X]"', "empty interpolation {}", (1, 4)),
        ('"A [X) b"', "mismatched ')'", (1, 4)),
    ],
)
def test_malformed_prompt_strings(source: str, message: str, position: tuple[int, int]) -> None:
    e = compile_error(source)
    assert message in e.message
    assert at(e) == position


@pytest.mark.parametrize(
    ("source", "position"),
    [
        ('argmax\n    "Hello [X]\nwhere len(X) < 3', (2, 5)),
        ('"Hello [X]" where STOPS_AT(X, "\\n)', (1, 31)),
        ('argmax\n    """Hello [X]\n    more\n', (2, 5)),
    ],
)
def test_unterminated_string(source: str, position: tuple[int, int]) -> None:
    e = compile_error(source)
    assert "unterminated" in e.message and "string" in e.message
    assert at(e) == position


# --------------------------------------------------------------------------- interpolations


def random_model() -> cogql.Model:
    return cogql.model("random", seed=1)


def test_an_interpolation_that_raises_names_its_position() -> None:
    e = run_error('argmax "Hello {1/0} [X]"', InterpolationError, model=random_model())
    assert e.message == "evaluating {1/0} raised ZeroDivisionError: division by zero"
    assert isinstance(e.__cause__, ZeroDivisionError)
    assert at(e) == (1, len('argmax "Hello {') + 1)


def test_the_failing_interpolation_among_several_is_named() -> None:
    source = 'argmax\n    "{x} and {x}"\n    "then {x} and {  1 / x }[X]"'
    e = run_error(source, InterpolationError, x=0, model=random_model())
    assert "evaluating {  1 / x } raised ZeroDivisionError" in e.message
    assert at(e) == (3, len('    "then {x} and {  ') + 1)


def test_an_error_inside_a_function_an_interpolation_calls() -> None:
    source = 'def half(n):\n    return {}[n]\nargmax\n    "A {half(3)} [X]"'
    e = run_error(source, InterpolationError, model=random_model())
    assert "evaluating {half(3)} raised KeyError: 3" in e.message
    assert at(e) == (4, len('    "A {') + 1)


def test_a_local_read_before_it_is_set() -> None:
    e = run_error('argmax\n    "A {y} [X]"\n    y = 1', InterpolationError, model=random_model())
    assert "evaluating {y} raised UnboundLocalError" in e.message and at(e) == (2, 9)


def test_a_missing_input_read_by_an_interpolation() -> None:
    e = run_error('argmax "Hello {undefined_name} [X]"', MissingInputError)
    assert "Failed to resolve variable 'undefined_name' in LMQL query." in e.message
    assert "{undefined_name} reads undefined_name: pass it as an input" in e.message
    assert isinstance(e, InputError) and at(e) == (1, len('argmax "Hello {') + 1)


def test_errors_outside_interpolations_are_left_as_they_are() -> None:
    with pytest.raises(ZeroDivisionError):
        cogql.run_sync('argmax\n    x = 1 / 0\n    "A {x} [X]"', model=random_model())


# --------------------------------------------------------------------------- where clauses


def test_where_calls_an_unknown_function() -> None:
    e = run_error('"Hello [X]" where STOP_AT(X, ".")', ConstraintError)
    assert "unknown function STOP_AT() in the where clause" in e.message
    assert "did you mean STOPS_AT?" in e.message
    assert at(e) == (1, 19)
    e = run_error(
        'argmax\n    "Hello [X]"\nwhere len(TOKENS(X)) < 3 and is_nice(X)', ConstraintError
    )
    assert "unknown function is_nice()" in e.message
    assert at(e) == (3, len("where len(TOKENS(X)) < 3 and ") + 1)


def test_where_names_a_variable_no_hole_fills() -> None:
    e = run_error('argmax\n    "A:[X]"\nwhere len(TOKENS(X)) < 3 and Y in ["a"]', QueryCompileError)
    assert "The where clause names Y, which no [Y] hole in the prompt fills" in e.message
    assert "Failed to resolve variable 'Y' in LMQL query." in e.message
    assert isinstance(e, TypeError)  # LMQL raises a TypeError
    assert at(e) == (3, len("where len(TOKENS(X)) < 3 and ") + 1)


@pytest.mark.parametrize(
    ("where", "message", "column"),
    [
        ('X != "a"', "operator NotEq is not supported in where clauses; write not (x == y)", 1),
        ('len(TOKENS(X)) < 3 and not STOPS_AT(X, ".")', "a stop phrase cannot be negated", 28),
        ('X in "abc"', "X in [...] needs a list of strings", 1),
        ('len(X) < "3"', "a length can only be compared with a number, got '3'", 1),
    ],
)
def test_rejected_constraints(where: str, message: str, column: int) -> None:
    e = run_error(f'argmax\n    "Hello [X]"\nwhere {where}', ConstraintError)
    assert message in e.message
    assert at(e) == (3, len("where ") + column)


def test_a_failing_user_function_names_the_expression() -> None:
    def boom(text: str) -> bool:
        raise ValueError("no good")

    e = run_error('"Pick:[X]" where X in ["a", "b"] and boom(X)', ConstraintError, boom=boom)
    assert "evaluating `boom(X)` with X = 'a' raised ValueError: no good" in e.message
    assert at(e) == (1, len('"Pick:[X]" where X in ["a", "b"] and ') + 1)


def test_unsupported_hole_type() -> None:
    e = run_error('argmax\n    "Hello [X: float]"', QueryCompileError)
    assert "Not a valid type expression or tactic annotation \"<class 'float'>\"" in e.message
    assert "[X: float] needs int, str, a regex string or a query function" in e.message
    assert isinstance(e, TypeError)  # LMQL raises a TypeError
    assert at(e) == (2, 12)


def test_a_builtin_that_is_no_hole_type_fails_at_compile_time() -> None:
    e = compile_error('argmax\n    "Hello [X: float]"')
    assert isinstance(e, HoleTypeError) and at(e) == (2, 12)
    compile_query('argmax\n    float = r"[0-9]+"\n    "Hello [X: float]"')  # redefined: a regex


def test_an_unknown_hole_type_is_named_before_any_model_call() -> None:
    model = random_model()
    e = run_error('argmax\n    "Hi [A]\\n"\n    "Hello [X: floaty]"', HoleTypeError, model=model)
    assert e.message.startswith("unknown type 'floaty' for hole X (known: int, str, ")
    assert at(e) == (3, len('    "Hello ') + 1)
    assert model._connection is None  # the model was not even loaded
    assert isinstance(e, InputError)  # what an unknown tactic name has always raised


def test_a_literal_that_is_no_hole_type_fails_at_compile_time() -> None:
    for literal in ("12", "1.5", "None", "b'[0-9]'"):
        e = compile_error(f'argmax\n    "Hi [A]"\n    "Hello [X: {literal}]"')
        assert isinstance(e, HoleTypeError) and at(e) == (3, len('    "Hello ') + 1)
        assert f"[X: {literal}] needs int, str" in e.message
    compile_query("argmax\n    \"Hello [X: r'[0-9]+']\"")  # a string literal is a regex


@pytest.mark.parametrize(("value", "shown"), [(12, "'12'"), (float, "\"<class 'float'>\"")])
def test_an_input_that_is_no_hole_type_fails_before_any_model_call(value: Any, shown: str) -> None:
    """Any model call would fail (nothing listens there): the type error comes first."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = cogql.model("random", endpoint=f"127.0.0.1:{s.getsockname()[1]}")
    query = 'argmax\n    "Hi [A]\\n"\n    "Hello [X: t]"'
    e = run_error(query, HoleTypeError, model=dead, t=value)
    assert f"Not a valid type expression or tactic annotation {shown}" in e.message
    assert at(e) == (3, len('    "Hello ') + 1)
    assert isinstance(e, TypeError)  # as LMQL raises it when it reaches the hole


def test_a_hole_type_given_as_input_is_still_a_type() -> None:
    result = cogql.run_sync(
        '"A:[X: pattern]" where len(TOKENS(X)) < 4', pattern="[a-z]+", model=random_model()
    )
    assert result["X"].isalpha() and result["X"].islower()


def test_the_error_points_at_the_hole_not_one_whose_name_it_begins() -> None:
    e = run_error('argmax\n    "Hi [XY] and [X: float]"', QueryCompileError)
    assert "[X: float] needs int" in e.message
    assert at(e) == (2, len('    "Hi [XY] and ') + 1)


# --------------------------------------------------------------------------- max_len


def test_max_len_stops_gracefully_with_a_warning(
    tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = "Q: Name a colour.\nA:"
    max_len = 1 + len(tokenizer.encode(prompt)) + 2  # BOS, the prompt, two tokens
    source = f'argmax(max_len={max_len})\n    "Q: Name a colour.\\nA:[X]"\nwhere len(TOKENS(X)) < 9'
    with caplog.at_level(logging.WARNING, logger="cogql.runtime"):
        result = cogql.run_sync(source)
    assert isinstance(result, cogql.LMQLResult)
    assert len(tokenizer.encode(result["X"])) == 2 and result.prompt == prompt + result["X"]
    assert f"max_len={max_len}" in caplog.text and "while generating X" in caplog.text
    column = len('    "Q: Name a colour.\\nA:') + 1  # the hole, as written in the query
    assert f"(line 2, column {column})" in caplog.text and "truncated" in caplog.text
