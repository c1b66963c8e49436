"""What goes over the websocket: query events, results and errors as JSON objects.

An event is its dataclass' fields plus `type` (the class name: TextAppended, TokenGenerated,
...). A result is its prompt, variables, `distribution` ([option, probability] pairs) and
log-prob. An error says what the terminal says, and where in the query it points, when it does.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, is_dataclass
from typing import Any

from ..errors import family
from ..runtime.result import LMQLResult


def event(item: Any) -> dict[str, Any]:
    data = asdict(item) if is_dataclass(item) and not isinstance(item, type) else {}
    return jsonable({"type": type(item).__name__, **data})


def result(value: Any) -> Any:
    """A query's result: one, or a list (sample(n=...), the beam decoders)."""
    if isinstance(value, list):
        return [result(v) for v in value]
    if not isinstance(value, LMQLResult):
        return {"returned": repr(value)}
    var = value.distribution_variable
    distribution = value.variables.get(f"P({var})") if var is not None else None
    variables = {
        k: v for k, v in value.variables.items() if not k.startswith(("P(", "log P("))
    }  # fmt: skip
    cost = value.cost
    return jsonable(
        {
            "prompt": value.prompt,
            "variables": variables,
            "distribution_variable": var,
            "distribution": distribution,
            "logprob": value.logprob,
            "predictions": len(cost.predictions) if cost is not None else None,
            "tokens_generated": cost.tokens_generated if cost is not None else None,
        }
    )


def error(e: BaseException) -> dict[str, Any]:
    """The error as `cogql run` prints it (`terminal`), its message alone, and its line and
    column (1-based) when it points into the query."""
    line, col = getattr(e, "lineno", None), getattr(e, "offset", None)
    located = isinstance(line, int) and isinstance(col, int) and hasattr(e, "source_text")
    message = getattr(e, "message", None) if located else None
    return {
        "type": "error",
        "kind": type(e).__name__,
        "family": family(e),
        "message": message or str(e),
        "terminal": str(e) if located else f"{type(e).__name__}: {e}",
        "line": line if located else None,
        "col": col if located else None,
    }


def jsonable(data: Any) -> Any:
    """`data` as JSON can carry it: what JSON has no form for becomes its str, and log-probs
    that are not finite become None."""
    return json.loads(json.dumps(_finite(data), default=str))


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data
