"""Clause splitting: which part of the source is decoder, prompt, from, where, distribution."""

from __future__ import annotations

import pytest

from cogql.language.clauses import Clauses, split_clauses
from cogql.language.errors import QuerySyntaxError


def parts(c: Clauses) -> dict[str, str | None]:
    names = ("prologue", "decoder", "prompt", "model", "where", "distribution")
    return {n: (c.text(getattr(c, n)).strip() if getattr(c, n) else None) for n in names}


def test_single_line_form() -> None:
    c = split_clauses('argmax "Q: [A]" from "gpt2" where len(TOKENS(A)) < 10')
    assert parts(c) == {
        "prologue": None,
        "decoder": "argmax",
        "prompt": '"Q: [A]"',
        "model": '"gpt2"',
        "where": "len(TOKENS(A)) < 10",
        "distribution": None,
    }


def test_all_clauses_on_their_own_lines() -> None:
    source = (
        "import re\n"
        "sample(n=2, temperature=0.7)\n"
        '    "Q: [A]"\n'
        '    "[B]"\n'
        'from lmql.model("local:x", dtype="float32")\n'
        'where STOPS_AT(A, "\\n")\n'
        "    and len(TOKENS(A)) < 5\n"
        'distribution B in [" yes", " no"]\n'
    )
    assert parts(split_clauses(source)) == {
        "prologue": "import re",
        "decoder": "sample(n=2, temperature=0.7)",
        "prompt": '"Q: [A]"\n    "[B]"',
        "model": 'lmql.model("local:x", dtype="float32")',
        "where": 'STOPS_AT(A, "\\n")\n    and len(TOKENS(A)) < 5',
        "distribution": 'B in [" yes", " no"]',
    }


def test_clause_keywords_are_case_insensitive() -> None:
    c = split_clauses('ARGMAX "[X]" FROM "m" WHERE len(X) < 3 DISTRIBUTION Y in ["a"]')
    p = parts(c)
    assert (p["decoder"], p["model"], p["where"], p["distribution"]) == (
        "ARGMAX",
        '"m"',
        "len(X) < 3",
        'Y in ["a"]',
    )


def test_minimal_form_is_all_prompt_with_an_inline_where() -> None:
    source = '"Hello [WHO]" where len(WHO) < 10'
    c = split_clauses(source)
    assert parts(c)["prompt"] == source
    assert c.decoder is None and c.where is None
    [(span, replacement)] = c.inline_keywords
    assert source[span.start : span.end] == "where"
    assert replacement.strip() == "and" and len(replacement) == len("where")


def test_inline_distribution_becomes_or() -> None:
    c = split_clauses('argmax\n    "A [X]" where X in ["a"]\n    "[Y]" distribution Y in ["b"]')
    assert [r.strip() for _, r in c.inline_keywords] == ["and", "or"]
    assert c.where is None and c.distribution is None


def test_where_after_python_code_is_global() -> None:
    c = split_clauses('x = 1\n"[X]"\nwhere len(X) < 3')
    assert parts(c)["where"] == "len(X) < 3"
    assert c.inline_keywords == []


def test_pure_prompt_without_clauses() -> None:
    source = '"Hello [WHO]"\n"Bye"'
    assert parts(split_clauses(source))["prompt"] == source


def test_decoder_name_used_as_a_variable_is_prompt_code() -> None:
    c = split_clauses('argmax\n    sample = 3\n    "{sample} [X]"')
    assert parts(c)["decoder"] == "argmax"
    assert parts(c)["prompt"].startswith("sample = 3")


def test_keywords_inside_strings_are_text() -> None:
    c = split_clauses('argmax\n    "words from where and distribution [X]"\n')
    assert parts(c)["prompt"] == '"words from where and distribution [X]"'
    assert c.model is None and c.where is None


def test_prologue_with_definitions() -> None:
    c = split_clauses('def f(x):\n    return x\nargmax\n    "{f(1)} [X]"\n')
    assert parts(c)["prologue"] == "def f(x):\n    return x"
    assert parts(c)["decoder"] == "argmax"


def test_clauses_out_of_order() -> None:
    with pytest.raises(QuerySyntaxError, match="clauses go in the order") as err:
        split_clauses('argmax\n    "[X]"\nwhere len(X) < 3\nfrom "m"')
    assert (err.value.lineno, err.value.offset) == (4, 1)


def test_unterminated_string_names_its_line() -> None:
    with pytest.raises(QuerySyntaxError, match="unterminated string") as err:
        split_clauses('argmax\n    """never closed [X]\n')
    assert err.value.lineno == 2
