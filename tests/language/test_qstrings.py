"""Prompt strings: literal text, [HOLES], {interpolations}, {:role} tags and their escapes."""

from __future__ import annotations

import re

import pytest

from cogql.language.qstrings import (
    Hole,
    Interpolation,
    QStringError,
    Tag,
    Text,
    parse_hole,
    parse_qstring,
)


def test_plain_text_is_one_segment() -> None:
    assert parse_qstring("Just text, no holes.") == [Text("Just text, no holes.")]
    assert parse_qstring("") == []


def test_holes_split_the_text_in_order() -> None:
    assert parse_qstring("Q: [QUESTION]\nA: [ANSWER]!") == [
        Text("Q: "),
        Hole("QUESTION", index=0),
        Text("\nA: "),
        Hole("ANSWER", index=1),
        Text("!"),
    ]


def test_adjacent_holes() -> None:
    assert parse_qstring("[A][B]") == [Hole("A", index=0), Hole("B", index=1)]


def test_whitespace_inside_brackets_and_dotted_names() -> None:
    assert parse_qstring("[ X ]") == [Hole("X")]
    assert parse_qstring("[obj.field]") == [Hole("obj.field")]


def test_double_brackets_are_literal() -> None:
    assert parse_qstring("a [[b]] c") == [Text("a [b] c")]
    assert parse_qstring("list[[0]]") == [Text("list[0]")]


def test_double_braces_are_literal() -> None:
    assert parse_qstring("{{x}} and {{}}") == [Text("{x} and {}")]


def test_triple_brackets_wrap_a_hole_in_literal_brackets() -> None:
    # LMQL: "[[[X]]]" is a literal '[', the hole X, then a literal ']'
    assert parse_qstring("[[[X]]]") == [Text("["), Hole("X"), Text("]")]


def test_lone_closing_brackets_are_literal() -> None:
    assert parse_qstring("a ] b") == [Text("a ] b")]
    assert parse_qstring("x } y") == [Text("x } y")]


def test_interpolations_keep_their_expression() -> None:
    assert parse_qstring("a {x} b {len(xs) * 3} c") == [
        Text("a "),
        Interpolation("x"),
        Text(" b "),
        Interpolation("len(xs) * 3"),
        Text(" c"),
    ]


def test_interpolation_with_nested_braces_and_quotes() -> None:
    assert parse_qstring("{ {'a': 1}['a'] }|{'}'}") == [
        Interpolation(" {'a': 1}['a'] "),
        Text("|"),
        Interpolation("'}'"),
    ]


def test_interpolation_not_scanned_without_interpolate() -> None:
    assert parse_qstring("a {x} [B]", interpolate=False) == [Text("a {x} "), Hole("B")]


def test_role_tags() -> None:
    assert parse_qstring("{:system}Be brief.{:user}Hi{:assistant}[X]") == [
        Tag("system"),
        Text("Be brief."),
        Tag("user"),
        Text("Hi"),
        Tag("assistant"),
        Hole("X"),
    ]


def test_typed_hole() -> None:
    assert parse_qstring("Age: [AGE: int]") == [Text("Age: "), Hole("AGE", type_expr="int")]


def test_type_expression_may_hold_brackets_and_calls() -> None:
    [hole] = parse_qstring("[D: r'[0-9]{2}']")
    assert hole == Hole("D", type_expr="r'[0-9]{2}'")
    [hole] = parse_qstring("[X: f(1, [2], {'a': 3})]")
    assert hole.type_expr == "f(1, [2], {'a': 3})"


def test_decorated_holes() -> None:
    assert parse_qstring("[@dec X]") == [Hole("X", decorators=("dec",))]
    assert parse_qstring("[@f @mod.g(a=1, b=[2]) NAME: int]") == [
        Hole("NAME", type_expr="int", decorators=("f", "mod.g(a=1, b=[2])"))
    ]


def test_empty_holes_are_dropped_and_do_not_take_an_index() -> None:
    assert parse_qstring("A[]B") == [Text("AB")]
    assert parse_qstring("[ ][X]") == [Hole("X", index=0)]
    assert parse_hole("   ", 0) is None


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("[1X]", "expected a variable name"),
        ("[X Y]", "per-variable decoders"),
        ("[X!]", "unexpected '!' after the name"),
        ("[X:]", "expected a type after ':'"),
        ("[X", "unclosed '['"),
        ("{x", "unclosed '{'"),
        ("[X)]", "mismatched ')'"),
        ("a {} b", "empty interpolation"),
    ],
)
def test_malformed_prompt_strings(source: str, message: str) -> None:
    with pytest.raises(QStringError, match=re.escape(message)):
        parse_qstring(source)


def test_malformed_hole_error_shows_the_hole() -> None:
    with pytest.raises(QStringError) as err:
        parse_qstring("Answer: [1ANSWER] done")
    assert "[1ANSWER]" in str(err.value)
