"""Evaluating an expression of the query's source (a where clause, a hole's type, a decoder
argument, the distribution's values) in the names the query sees at that moment.

The one place such an AST is compiled: each node once (a where clause is evaluated again at
every token of a client-side hole), under a pseudo file name that says which clause raised.
"""

from __future__ import annotations

import ast
import weakref
from types import CodeType
from typing import Any

_compiled: weakref.WeakKeyDictionary[ast.expr, dict[str, CodeType]] = weakref.WeakKeyDictionary()


def compiled_expression(node: ast.expr, filename: str) -> CodeType:
    """`node` compiled for `eval`; kept for as long as the node lives."""
    codes = _compiled.setdefault(node, {})
    code = codes.get(filename)
    if code is None:
        code = codes[filename] = compile(ast.Expression(node), filename, "eval")
    return code


def evaluate(
    node: ast.expr,
    names: dict[str, Any],
    filename: str = "<query>",
    local_names: dict[str, Any] | None = None,
) -> Any:
    """The value of `node` with `names` as its globals (and `local_names` as its locals)."""
    return eval(compiled_expression(node, filename), names, local_names)
