"""LMQL's module surface: `import cogql.compat as lmql` runs code written for `import lmql`.

`import cogql as lmql` works too for everything but the names cogql uses otherwise:
`cogql.stream(query, ...)` iterates a query's events, while LMQL's `lmql.stream("VAR")` is an
output writer that prints a variable as it is generated; `cogql.serve` is a module (the LMTP
server), while LMQL's `lmql.serve(model)` serves a model. Here both are LMQL's.
(`cogql.tokenizer` is the tokenizer module, and calling it is LMQL's `lmql.tokenizer(name)`.)
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

from . import (
    LLM,
    F,
    InferenceCertificate,
    LMQLQueryFunction,
    LMQLResult,
    ScoringResult,
    Tracer,
    algorithms,
    certificate,
    decorators,
    generate,
    generate_sync,
    get_default_model,
    get_default_scoring_model,
    headless,
    main,
    model,
    printing,
    query,
    query_from_string,
    run,
    run_file,
    run_in_loop,
    run_sync,
    score,
    score_sync,
    set_default_model,
    silent,
    traced,
)
from .runtime.lmql_tokenizer import tokenizer
from .runtime.query_attributes import getsource, is_query
from .runtime.writers import stream

__all__ = [
    "LLM",
    "F",
    "InferenceCertificate",
    "LMQLQueryFunction",
    "LMQLResult",
    "ScoringResult",
    "Tracer",
    "algorithms",
    "certificate",
    "decorators",
    "generate",
    "generate_sync",
    "get_default_model",
    "get_default_scoring_model",
    "headless",
    "inspect",
    "main",
    "model",
    "printing",
    "query",
    "query_from_string",
    "run",
    "run_file",
    "run_in_loop",
    "run_sync",
    "score",
    "score_sync",
    "serve",
    "set_default_model",
    "silent",
    "stream",
    "tokenizer",
    "traced",
    "version",
    "version_info",
]

LMQL_VERSION = "0.7.3"  # the LMQL release whose API this module implements

__version__ = LMQL_VERSION
version_info = version = SimpleNamespace(version=LMQL_VERSION, commit="cogql", build_on="")

# LMQL's `lmql.inspect` (not the standard library's)
inspect = SimpleNamespace(is_query=is_query, getsource=getsource)

# `import cogql.compat.algorithms as la`, as LMQL code writes `import lmql.algorithms as la`
sys.modules.setdefault(f"{__name__}.algorithms", algorithms)


def serve(*args: Any, **kwargs: Any) -> None:
    """LMQL's `lmql.serve(model_name, host="localhost", port=8080, cuda=False, ...)`: serve a
    model over LMTP until interrupted (see cogql.serve.api.serve)."""
    from .serve.api import serve as serve_model

    serve_model(*args, **kwargs)
