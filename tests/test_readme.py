"""The README's queries, as a new user copies them: every one compiles, and none has a hole
that only a stop, EOS or max_len ends (the run's unbounded-hole warning, found statically by
`cogql.runtime.hole_limits`), so no example runs away on a model that never writes its stop.
The constraint table's examples that name their result are run on the embedded model (slow).

Queries are found in fenced blocks: a block without a language (or `lmql`) that is a query;
in `python` blocks, the string given to `cogql.run_sync`/`run`/`query`/`stream`, the docstring
of a `@cogql.query` function, and `cogql.F(text, constraints)`; and the example column of the
constraint table.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import cogql
from cogql.language.clauses import DECODER_NAMES
from cogql.language.compiler import CompiledQuery, compile_query
from cogql.runtime.hole_limits import unbounded_holes

README = Path(__file__).resolve().parent.parent / "README.md"
RUNNERS = {"run_sync", "run", "query", "stream", "query_from_string"}
TABLE_HEADER = "| constraint | meaning | example |"


@dataclass(frozen=True)
class ReadmeQuery:
    line: int  # where it is written in the README
    source: str
    result: str | None = None  # the table's `→ value`, where it names one

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line of the opening fence, language, body) of every fenced block."""
    found = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        found.append((text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)))
    return found


def _is_query(body: str) -> bool:
    first = body.lstrip().split(None, 1)[0] if body.strip() else ""
    return first.partition("(")[0] in DECODER_NAMES or first.startswith('"')


def _unquote(literal: str) -> str:
    for quote in ('"""', "'''"):
        if literal.startswith(quote) and literal.endswith(quote):
            return literal[3:-3]
    raise AssertionError(f"a query docstring in triple quotes, got {literal[:20]!r}")


def _called(node: ast.Call) -> str | None:
    """`run_sync` for `cogql.run_sync(...)` (or `lmql.`)."""
    func = node.func
    if not isinstance(func, ast.Attribute) or not isinstance(func.value, ast.Name):
        return None
    return func.attr if func.value.id in ("cogql", "lmql") else None


def _is_query_function(node: ast.AST) -> bool:
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return False
    return any(
        _called(d) == "query" if isinstance(d, ast.Call) else ast.unparse(d) == "cogql.query"
        for d in node.decorator_list
    )


def python_queries(line: int, code: str) -> list[ReadmeQuery]:
    tree = compile(
        code, f"<README.md:{line}>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    found = []
    for node in ast.walk(tree):
        at = line + getattr(node, "lineno", 0)
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = _called(node)
            if name in RUNNERS and isinstance(node.args[0].value, str):
                found.append(ReadmeQuery(at, node.args[0].value))
            elif name == "F":
                args = [ast.literal_eval(a) for a in node.args[:2]]
                found.append(ReadmeQuery(at, cogql.F(*args).compiled.source))
        elif _is_query_function(node):
            docstring = node.body[0]  # type: ignore[attr-defined]
            segment = ast.get_source_segment(code, docstring)
            assert segment is not None
            found.append(ReadmeQuery(at, _unquote(segment.strip())))
    return sorted(found, key=lambda q: q.line)


def table_queries(text: str) -> list[ReadmeQuery]:
    start = text.index(TABLE_HEADER)
    line = text.count("\n", 0, start) + 1
    found = []
    for k, row in enumerate(text[start:].split("\n\n", 1)[0].splitlines()[2:], start=2):
        example = re.search(r"\| `([^|]*?)`(?: → `(.*)`)? \|$", row)
        assert example is not None, f"README.md:{line + k}: no example in {row!r}"
        found.append(ReadmeQuery(line + k, example.group(1), example.group(2)))
    return found


def readme_queries(text: str) -> list[ReadmeQuery]:
    found = table_queries(text) if TABLE_HEADER in text else []
    for line, language, body in fenced_blocks(text):
        if language in ("", "lmql") and _is_query(body):
            found.append(ReadmeQuery(line + 1, body))
        elif language == "python":
            found += python_queries(line, body)
    return found


@cache
def encode() -> Any:
    return cogql.tokenizer("default").encode


def unbounded(query: ReadmeQuery) -> list[str]:
    compiled: CompiledQuery = compile_query(query.source)
    return [h.warning(2048) for h in unbounded_holes(compiled, encode())]


QUERIES = readme_queries(README.read_text(encoding="utf-8"))


def test_the_readme_has_its_queries() -> None:
    # the table (17 rows), the seed query, and the Python blocks' queries
    assert len([q for q in QUERIES if q.result is not None]) >= 6
    assert len(QUERIES) >= 35, [str(q) for q in QUERIES]


@pytest.mark.parametrize("query", QUERIES, ids=str)
def test_every_readme_query_compiles_and_every_hole_has_a_limit(query: ReadmeQuery) -> None:
    assert unbounded(query) == [], f"{query}: {query.source!r}"


def test_the_check_finds_an_unbounded_example() -> None:
    """The extraction and the check on a README with one runaway example in each place."""
    text = "\n".join(
        [
            TABLE_HEADER,
            "|---|---|---|",
            '| `STOPS_AT(X, "s")` | stop | `"Fruits:[X]" where STOPS_AT(X, ",")` → `\' pear,\'` |',
            "",
            "```python",
            "cogql.run_sync('\"Q: {q}\\\\nA:[A]\" where STOPS_AT(A, \"\\\\n\")', q='2+2?')",
            "@cogql.query",
            "def capital(country):",
            "    '''lmql",
            '    "The capital of {country} is[CITY] and[REST]" where len(TOKENS(CITY)) < 8',
            "    '''",
            "```",
            "",
            "```",
            'argmax "Say[Y]" where Y in [" yes", " no"]',
            "```",
        ]
    )
    found = readme_queries(text)
    assert [(q.line, q.result) for q in found] == [
        (3, "' pear,'"),
        (6, None),
        (8, None),
        (15, None),
    ]
    assert [len(unbounded(q)) for q in found] == [1, 1, 1, 0]
    assert unbounded(found[2]) == [
        "hole REST (line 1, column 39) has no token limit: only a stop, EOS or max_len=2048 "
        "ends it; add len(TOKENS(REST)) < N to its where clause"
    ]


@pytest.mark.slow  # the embedded model
@pytest.mark.parametrize("query", [q for q in QUERIES if q.result is not None], ids=str)
def test_the_constraint_table_gives_what_it_says(query: ReadmeQuery) -> None:
    result = cogql.run_sync(query.source, model="default")
    [name] = [n for n in result.variables if not n.startswith(("P(", "log P("))]
    assert repr(result.variables[name]) == query.result, query.source
