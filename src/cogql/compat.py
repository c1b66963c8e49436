"""LMQL's module surface: `import cogql.compat as lmql` runs code written for `import lmql`.

`import cogql as lmql` works too for everything but one name: `cogql.stream(query, ...)` iterates
a query's events, while LMQL's `lmql.stream("VAR")` is an output writer that prints a variable as
it is generated. Here `stream` is LMQL's writer.
"""

from __future__ import annotations

from . import (
    LLM,
    F,
    LMQLResult,
    ScoringResult,
    decorators,
    generate,
    generate_sync,
    headless,
    main,
    model,
    printing,
    query,
    run,
    run_sync,
    score,
    score_sync,
    silent,
)
from .runtime.writers import stream

__all__ = [
    "LLM",
    "F",
    "LMQLResult",
    "ScoringResult",
    "decorators",
    "generate",
    "generate_sync",
    "headless",
    "main",
    "model",
    "printing",
    "query",
    "run",
    "run_sync",
    "score",
    "score_sync",
    "silent",
    "stream",
]
