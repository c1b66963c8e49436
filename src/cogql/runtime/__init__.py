"""Running queries: offers the API layer query functions (`QueryFunction`, built from a string
or a decorated function), models (`Model`: in-process, LMTP server or Replicate), results
(`LMQLResult`, `QueryResult`), events, streaming and scoring. It reaches models only
through the LMTP client.

Names load on first use; importing the package imports none of its modules."""

import typing as _typing

__all__ = [
    "BoundQuery",
    "LMQLResult",
    "Model",
    "QueryEvent",
    "QueryFunction",
    "QueryResult",
    "QueryStream",
    "ScoringResult",
    "query_from_function",
    "query_from_string",
    "run_blocking",
]

if _typing.TYPE_CHECKING:
    from .events import QueryEvent
    from .model import Model
    from .query import (
        BoundQuery,
        QueryFunction,
        query_from_function,
        query_from_string,
        run_blocking,
    )
    from .result import LMQLResult, QueryResult
    from .scoring import ScoringResult
    from .streaming import QueryStream
else:
    from .._lazy import lazy_exports as _lazy_exports

    __getattr__ = _lazy_exports(
        __name__,
        {
            ".query": (
                "BoundQuery",
                "QueryFunction",
                "query_from_function",
                "query_from_string",
                "run_blocking",
            ),
            ".model": ("Model",),
            ".result": ("LMQLResult", "QueryResult"),
            ".events": ("QueryEvent",),
            ".streaming": ("QueryStream",),
            ".scoring": ("ScoringResult",),
        },
    )
