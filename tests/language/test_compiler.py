"""compile_query: clauses to a CompiledQuery, LMQL's prompt text semantics, and errors that point
at the user's line and column."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cogql
from cogql.language.compiler import CompiledQuery, compile_query
from cogql.language.errors import QueryCompileError, QuerySyntaxError
from cogql.language.qstrings import Hole, Interpolation, Text

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def src(node: ast.AST | None) -> str | None:
    return None if node is None else ast.unparse(node)


def decoder(q: CompiledQuery) -> tuple[str, dict[str, str]] | None:
    if q.decoder is None:
        return None
    return q.decoder.name, {k: ast.unparse(v) for k, v in q.decoder.args.items()}


# --------------------------------------------------------------------------- decoder clause


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ("argmax", ("argmax", {})),
        ("argmax(max_len=20)", ("argmax", {"max_len": "20"})),
        ("sample(n=2, temperature=0.7)", ("sample", {"n": "2", "temperature": "0.7"})),
        ("SAMPLE(n=k + 1)", ("sample", {"n": "k + 1"})),
    ],
)
def test_decoder_clause(clause: str, expected: tuple[str, dict[str, str]]) -> None:
    q = compile_query(f'{clause}\n    "Q: [A]"\n')
    assert decoder(q) == expected


def test_no_decoder_clause() -> None:
    assert compile_query('"Q: [A]"').decoder is None


def test_decoder_arguments_must_be_keywords() -> None:
    with pytest.raises(QuerySyntaxError, match="must be keywords") as err:
        compile_query('argmax(3)\n    "Q: [A]"')
    assert (err.value.lineno, err.value.offset) == (1, 8)  # points at the 3


# --------------------------------------------------------------------------- forms


def test_single_line_form() -> None:
    q = compile_query('argmax "Q: [A]" from "gpt2" where len(TOKENS(A)) < 10')
    assert decoder(q) == ("argmax", {})
    assert isinstance(q.model, ast.Constant) and q.model.value == "gpt2"
    assert src(q.where) == "len(TOKENS(A)) < 10"
    [stmt] = q.statements
    assert stmt.segments == [Text("Q: "), Hole("A")]
    assert stmt.where is None
    assert q.hole_names == {"A"}


def test_minimal_form_with_inline_where() -> None:
    q = compile_query('"Hello [WHO]" where len(WHO) < 10')
    assert q.decoder is None and q.model is None and q.where is None
    [stmt] = q.statements
    assert stmt.segments == [Text("Hello "), Hole("WHO")]
    assert src(stmt.where) == "len(WHO) < 10"


def test_inline_where_belongs_to_its_own_string_only() -> None:
    q = compile_query(
        'argmax\n    "A:[X]" where len(TOKENS(X)) < 2\n    " B:[X]"\n    " C:[Y]" where Y in ["a"] and len(Y) < 3\n'
    )
    assert [src(s.where) for s in q.statements] == [
        "len(TOKENS(X)) < 2",
        None,
        "Y in ['a'] and len(Y) < 3",
    ]
    assert q.where is None


def test_from_clause_forms() -> None:
    q = compile_query('argmax\n    "[X]"\nfrom "local:/some/folder"\n')
    assert isinstance(q.model, ast.Constant) and q.model.value == "local:/some/folder"
    q = compile_query('argmax\n    "[X]"\nfrom lmql.model("local:foo", dtype="float32")\n')
    assert src(q.model) == "lmql.model('local:foo', dtype='float32')"
    q = compile_query('argmax\n    "[X]"\nfrom cogql.model("local:bar")\n')
    assert src(q.model) == "cogql.model('local:bar')"
    # lmql / cogql are provided by the runtime, not free inputs
    assert q.free_variables == ()


def test_multi_line_where_clause() -> None:
    q = compile_query('argmax\n    "[X]"\nwhere STOPS_AT(X, ".")\n    and len(TOKENS(X)) < 5\n')
    assert src(q.where) == "STOPS_AT(X, '.') and len(TOKENS(X)) < 5"


def test_distribution_clause() -> None:
    q = compile_query(
        'argmax\n    "Review: ok\\nSentiment:[CLS]"\ndistribution CLS in [" pos", " neg"]'
    )
    assert q.distribution is not None
    assert q.distribution.variable == "CLS"
    assert src(q.distribution.values) == "[' pos', ' neg']"
    assert q.hole_names == {"CLS"}


def test_inline_distribution() -> None:
    q = compile_query('"Sentiment:[C]" distribution C in [" pos", " neg"]')
    assert q.distribution is not None and q.distribution.variable == "C"


def test_lmql_marker_is_stripped() -> None:
    q = compile_query('lmql\nargmax\n    "Q: [A]"\n')
    assert decoder(q) == ("argmax", {})
    assert q.statements[0].segments == [Text("Q: "), Hole("A")]


# --------------------------------------------------------------------------- prompt text


def test_sentiment_example_text_follows_lmql() -> None:
    q = compile_query((EXAMPLES / "sentiment.lmql").read_text())
    [stmt] = q.statements
    texts = [s.text for s in stmt.segments if isinstance(s, Text)]
    # the `\n` escape and the line break are both kept; the indentation is removed
    assert texts == [
        "Review: We had a great stay. Hiking in the mountains was fabulous and the food is "
        "really good.\n\nQ: What is the underlying sentiment of this review and why?\n\nA:",
        '\n\nQ: Summarizing the above analysis in a single word -- of the options "positive", '
        '"negative", and "neutral" -- how is the review best described?\n\nA:',
    ]
    assert [h.name for h in stmt.holes] == ["ANALYSIS", "CLASSIFICATION"]
    assert src(q.where) == "STOPS_AT(ANALYSIS, '\\n') and len(TOKENS(ANALYSIS)) < 200"
    assert q.distribution is not None and q.distribution.variable == "CLASSIFICATION"


def test_triple_quoted_string_is_dedented_with_the_prompt() -> None:
    q = compile_query('argmax\n    """First line\n      indented by two\n    last [X]"""\n')
    assert q.statements[0].segments == [Text("First line\n  indented by two\nlast "), Hole("X")]


def test_deeper_indented_query_dedents_by_common_indentation() -> None:
    q = compile_query('        argmax\n            """A\n            B [X]"""\n')
    assert q.statements[0].segments == [Text("A\nB "), Hole("X")]


def test_statements_and_interpolations() -> None:
    q = compile_query(
        "argmax\n"
        "    for i in range(3):\n"
        '        "Item {i}: [ITEM]\\n"\n'
        "    if x > 2:\n"
        "        return ITEM\n"
        "    y = 3\n"
        '    "{y * 2}[Z]"\n'
        'where STOPS_AT(Z, ".")\n'
    )
    first, second = q.statements
    assert first.segments == [
        Text("Item "),
        Interpolation("i"),
        Text(": "),
        Hole("ITEM"),
        Text("\n"),
    ]
    assert second.segments == [Interpolation("y * 2"), Hole("Z")]
    assert (first.lineno, second.lineno) == (3, 7)
    assert q.hole_names == {"ITEM", "Z"}
    assert q.free_variables == ("x",)


def test_free_variables_are_sorted_and_exclude_defined_names() -> None:
    q = compile_query(
        "import math\n"
        "argmax\n"
        "    k = 2\n"
        '    "{zeta} {alpha} {beta.x} {k} {math.pi} {len(gamma)} [X]"\n'
        "where len(TOKENS(X)) < limit and X in options\n"
    )
    assert q.free_variables == ("alpha", "beta", "gamma", "limit", "options", "zeta")


def test_decoder_args_can_use_inputs() -> None:
    assert compile_query('sample(n=count)\n    "[X]"').free_variables == ("count",)


# --------------------------------------------------------------------------- running programs


def test_python_control_flow_runs_between_prompt_strings() -> None:
    query = (
        "argmax\n"
        "    for i in range(3):\n"
        '        "{i},"\n'
        "    if n > 1:\n"
        '        "big"\n'
        "    else:\n"
        '        "small"\n'
        "    label = 'end' * 2\n"
        '    " {label}"\n'
    )
    assert cogql.run_sync(query, n=2).prompt == "0,1,2,big endend"
    assert cogql.run_sync(query, n=0).prompt == "0,1,2,small endend"


def test_return_ends_the_program() -> None:
    query = (
        'argmax\n    "a"\n    if flag:\n        return "early"\n    "b"\n    return context_free\n'
    )
    assert cogql.run_sync(query, flag=True, context_free=1) == "early"
    assert cogql.run_sync(query, flag=False, context_free=42) == 42


def test_prologue_definitions_are_usable() -> None:
    query = 'def shout(s):\n    return s.upper()\nargmax\n    "{shout(word)}!"\n'
    assert cogql.run_sync(query, word="hey").prompt == "HEY!"


def test_literal_brackets_and_braces_reach_the_prompt() -> None:
    assert cogql.run_sync('"[[x]] {{y}} {v}"', v="[z]").prompt == "[x] {y} [z]"


# --------------------------------------------------------------------------- errors


def error(source: str, kind: type[Exception] = QuerySyntaxError) -> QuerySyntaxError:
    with pytest.raises(kind) as err:
        compile_query(source)
    assert isinstance(err.value, QuerySyntaxError)
    return err.value


def test_unterminated_prompt_string() -> None:
    e = error('argmax\n    "Q: [A]\nfrom "gpt2"')
    assert "unterminated string" in e.message
    assert (e.lineno, e.offset) == (2, 5)


def test_unterminated_triple_quoted_string() -> None:
    e = error('argmax\n    """Q: [A]\n    more\n')
    assert "unterminated string" in e.message
    assert e.lineno == 2


def test_bad_where_expression() -> None:
    e = error('argmax\n    "Q: [A]"\nwhere A ==== 3')
    assert e.message.startswith("invalid where clause")
    assert (e.lineno, e.offset) == (3, 11)
    assert "where A ==== 3" in str(e)  # the offending line is shown with a caret


def test_where_expression_that_ends_early_points_at_its_end() -> None:
    e = error('argmax\n    "Q: [A]"\nwhere len(A) <\n')
    assert e.message.startswith("invalid where clause")
    assert "more was expected" in e.message
    assert (e.lineno, e.offset) == (3, len("where len(A) <") + 1)


def test_malformed_hole_points_at_the_hole() -> None:
    e = error('argmax\n    "Q: [1A]"\n')
    assert "malformed hole [1A]" in e.message and "expected a variable name" in e.message
    assert (e.lineno, e.offset) == (2, 9)


def test_malformed_hole_in_minimal_form() -> None:
    e = error('"ok"\n"Q: [A B]" where len(A) < 3')
    assert "per-variable decoders" in e.message
    assert (e.lineno, e.offset) == (2, 5)


def test_distribution_variable_must_be_last() -> None:
    e = error('argmax\n    "Q: [CLS] done"\ndistribution CLS in [" a", " b"]', QueryCompileError)
    assert "CLS must be the last hole" in e.message
    assert (e.lineno, e.offset) == (3, len("distribution ") + 1)


def test_distribution_variable_must_be_last_statement() -> None:
    e = error(
        'argmax\n    "Q: [CLS]"\n    "more"\ndistribution CLS in [" a", " b"]', QueryCompileError
    )
    assert "must be the last hole" in e.message


def test_distribution_variable_cannot_be_constrained() -> None:
    e = error(
        'argmax\n    "Q: [CLS]"\nwhere len(CLS) < 3\ndistribution CLS in [" a", " b"]',
        QueryCompileError,
    )
    assert "CLS cannot be used in where clause" in e.message
    assert (e.lineno, e.offset) == (3, len("where len(") + 1)


def test_malformed_distribution_clause() -> None:
    e = error('argmax\n    "Q: [CLS]"\ndistribution len(CLS)')
    assert "expected: distribution VAR in [...]" in e.message
    assert e.lineno == 3


def test_bad_python_in_the_prompt() -> None:
    e = error('argmax\n    "ok [X]"\n    if X\n        "more"\n')
    assert e.message.startswith("invalid prompt")
    assert e.lineno == 3


def test_bad_decoder_clause() -> None:
    e = error('argmax(n=)\n    "[X]"')
    assert e.message.startswith("invalid decoder clause")
    assert e.lineno == 1
