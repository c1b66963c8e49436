"""LMQLResult: what a query returns when it has no `return` statement (LMQL's shape)."""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ..lmtp.cost import Cost


@dataclass
class LMQLResult:
    prompt: str
    variables: dict[str, Any] = field(default_factory=dict)
    distribution_variable: str | None = None
    distribution_values: list[str] | None = None
    # what the query run cost: predictions (Replicate), their ids and compute time, tokens
    cost: Cost | None = field(default=None, compare=False, repr=False)
    # total log-probability of the sequence: the generated tokens; beam-type decoders also
    # count the program text after each hole, as they rank by it (LMQL's scoring)
    logprob: float | None = field(default=None, compare=False)

    def __getitem__(self, key: str | int) -> Any:
        """`result["X"]` is a variable's value; `result[0]` is the result itself, as in LMQL
        0.7, whose argmax queries returned a one-element list before 0.7 (old code indexes it)."""
        if isinstance(key, str):
            return self.variables[key]
        if key == 0 and not isinstance(key, bool):
            warnings.warn(_INDEX_ZERO, DeprecationWarning, stacklevel=2)
            return self
        raise KeyError(key)

    def _repr_html_(self) -> str:
        """A notebook's view: the prompt, then a table of the variables (values escaped)."""
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(name)}</th>"
            f"<td style='text-align:left'><code>{html.escape(repr(value))}</code></td></tr>"
            for name, value in self.variables.items()
        )
        logprob = "" if self.logprob is None else f" · log-prob {self.logprob:.3f}"
        return (
            f"<div><b>LMQLResult</b>{logprob}<pre style='white-space:pre-wrap'>"
            f"{html.escape(self.prompt)}</pre><table>{rows}</table></div>"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "variables": {k: _plain(v) for k, v in self.variables.items()},
            "distribution_variable": self.distribution_variable,
            "distribution_values": self.distribution_values,
        }


_INDEX_ZERO = (
    "Deprecated result[0] access on a query result detected. Since 0.7, an argmax/sample query "
    "function with a single result returns a LMQLResult object instead of a list of a single "
    "element. Please use the results directly and not via result[0]. In the future, this will "
    "raise an error."
)


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def attach_cost(result: Any, cost: Cost) -> Any:
    """Give every LMQLResult of a query's return value the query's cost record."""
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, LMQLResult):
            item.cost = cost
    return result


# What running a query gives: an LMQLResult, a list of them for decoders with several results
# (`sample(n=2)`, beams), or whatever the query's own `return` statement returns (Any).
QueryResult: TypeAlias = LMQLResult | list[LMQLResult] | Any
